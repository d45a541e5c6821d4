package memscan

import (
	"crypto/rand"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func mmap(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// A needle is found once wherever it lies, across a chunk boundary too.
func TestScanRangeFindsEveryCopyOnce(t *testing.T) {
	needle := mmap(t, 4096)[:40]
	rand.Read(needle)
	region := mmap(t, 2*chunkSize+8192)
	at := []int{0, chunkSize - 17, chunkSize + 100, len(region) - len(needle)}
	for _, i := range at {
		copy(region[i:], needle)
	}
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	buf := mmap(t, chunkSize+len(needle))
	r := Of(region)
	hits, err := scanRange(mem, buf, r, Mapping{}, map[string][]byte{"n": needle}, len(needle))
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, h := range hits {
		got = append(got, int(h.Addr-r.Start))
	}
	if !slices.Equal(got, at) {
		t.Errorf("hits at offsets %v, want %v", got, at)
	}
}

// Scan of this process finds a copy on the heap, not the skipped original;
// the mappings it reads include locked ones.
func TestScanSelf(t *testing.T) {
	orig := mmap(t, 4096)
	if err := unix.Mlock(orig); err != nil {
		t.Skipf("cannot mlock (RLIMIT_MEMLOCK): %v", err)
	}
	needle := orig[:32]
	rand.Read(needle)
	heap := make([]byte, 64)
	copy(heap[7:], needle)
	hits, _, err := Scan(os.Getpid(), map[string][]byte{"n": needle}, Of(orig))
	if err != nil {
		t.Fatal(err)
	}
	if len(hits) != 1 || hits[0].Addr != uint64(uintptrOf(heap))+7 || hits[0].Mapping.Locked {
		t.Errorf("hits %v, want one at the heap copy %p+7", hits, heap)
	}
	clear(heap)
	hits, _, _ = Scan(os.Getpid(), map[string][]byte{"n": needle})
	if len(hits) != 1 || !hits[0].Mapping.Locked {
		t.Errorf("hits %v, want only the locked original", hits)
	}
}

func TestWithout(t *testing.T) {
	got := without(Range{10, 100}, []Range{{0, 20}, {50, 60}, {90, 200}})
	if want := []Range{{20, 50}, {60, 90}}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
