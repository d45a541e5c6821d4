package secmem

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/testenv"
)

// fresh starts a test with no page mapped and no warning given, and checks
// at its end that it wiped every buffer it made. Tests using it do not run
// in parallel: the pages are the package's.
func fresh(t *testing.T) {
	t.Helper()
	reset := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range pages {
			if p.used != 0 {
				t.Fatalf("a page still holds secrets (bitmap %064b)", p.used)
			}
			unmapLocked(p.mem, p.locked)
		}
		pages = nil
		if lockedBytes != 0 || unlockedBytes != 0 {
			t.Fatalf("counted %d locked, %d unlocked bytes with nothing mapped", lockedBytes, unlockedBytes)
		}
		lockFailed.Store(false)
		warnOnce = sync.Once{}
	}
	reset()
	before := Live()
	t.Cleanup(func() {
		if n := Live() - before; n != 0 {
			t.Errorf("%d buffers left unwiped", n)
		}
		reset()
		SetReclaim(nil)
		SetWarn(func(error) {})
		mlock, munlock = unix.Mlock, unix.Munlock
	})
}

// budget fakes RLIMIT_MEMLOCK for mlock and munlock: root ignores the real
// limit (CAP_IPC_LOCK).
type budget struct {
	mu          sync.Mutex
	limit, used int
	failEvery   int // > 0: every failEvery-th mlock fails whatever the budget
	calls       int
}

func fakeLimit(limit int) *budget {
	b := &budget{limit: limit}
	mlock = func(m []byte) error {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.calls++
		if b.failEvery > 0 && b.calls%b.failEvery == 0 || b.used+len(m) > b.limit {
			return unix.ENOMEM
		}
		b.used += len(m)
		return nil
	}
	munlock = func(m []byte) error {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.used -= len(m)
		if b.used < 0 {
			panic("munlock of memory never locked")
		}
		return nil
	}
	return b
}

func (b *budget) inUse() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

func wipeAll(bufs []*Buffer) {
	for _, b := range bufs {
		b.Wipe()
	}
}

// TestSlabCapacity: 64 KiB of locked memory holds exactly 16 pages of
// secrets; past it the reclaim hook is asked first, then New falls back to
// unlocked memory with one warning, and NewLocked refuses.
func TestSlabCapacity(t *testing.T) {
	fresh(t)
	if pageSize != 4096 {
		t.Skip("capacity figures assume 4 KiB pages")
	}
	lim := fakeLimit(64 << 10)
	var warned int
	SetWarn(func(error) { warned++ })
	reclaims := 0
	SetReclaim(func() bool { reclaims++; return false })

	// 400 bytes take 7 granules of 64: 9 per page, 144 in 16 pages.
	var bufs []*Buffer
	defer func() { wipeAll(bufs) }()
	for i := range 144 {
		b, err := NewLocked(400)
		if err != nil {
			t.Fatalf("secret %d of 144 did not fit in 64 KiB: %v", i+1, err)
		}
		bufs = append(bufs, b)
	}
	if st := ReadStats(); st.Locked != 64<<10 || st.Unlocked != 0 || lim.inUse() != 64<<10 {
		t.Fatalf("after 144 secrets: %+v, fake mlock has %d bytes; want exactly 16 locked pages", st, lim.inUse())
	}
	if reclaims != 0 || LockFailed() {
		t.Fatalf("reclaim called %d times, LockFailed=%v before the limit", reclaims, LockFailed())
	}
	if _, err := NewLocked(400); !errors.Is(err, ErrNotLocked) {
		t.Fatalf("NewLocked past the limit: %v, want ErrNotLocked", err)
	}
	if reclaims != 1 {
		t.Fatalf("reclaim called %d times before refusing, want 1", reclaims)
	}
	if LockFailed() || warned != 0 {
		t.Fatal("a refused NewLocked must not count as unlocked memory")
	}
	// A small secret still fits in the last granule of each page.
	small, err := NewLocked(64)
	if err != nil {
		t.Fatalf("64 bytes did not fit in a free granule: %v", err)
	}
	bufs = append(bufs, small)
	b, err := New(400)
	if err != nil {
		t.Fatalf("New past the limit: %v", err)
	}
	bufs = append(bufs, b)
	if !LockFailed() || warned != 1 || reclaims != 2 {
		t.Fatalf("New past the limit: LockFailed=%v, warned %d, reclaims %d; want true, 1, 2", LockFailed(), warned, reclaims)
	}
	if st := ReadStats(); st.Unlocked != 4096 || st.Locked != 64<<10 {
		t.Fatalf("stats %+v: want one unlocked page", st)
	}
	// Wiping everything gives the locked memory back but one spare page.
	wipeAll(bufs)
	bufs = nil
	if st := ReadStats(); st.Locked != 4096 || st.Unlocked != 0 || lim.inUse() != 4096 {
		t.Fatalf("after wiping all: %+v, fake mlock %d; want one spare locked page", st, lim.inUse())
	}
}

// TestReclaimBeforeFallback: when the limit is reached, what the hook frees
// is used, and the new secret is locked.
func TestReclaimBeforeFallback(t *testing.T) {
	fresh(t)
	fakeLimit(2 * pageSize)
	var held []*Buffer
	var hmu sync.Mutex
	SetReclaim(func() bool {
		hmu.Lock()
		defer hmu.Unlock()
		if len(held) == 0 {
			return false
		}
		held[0].Wipe()
		held = held[1:]
		return true
	})
	for range 2 * 64 / 8 { // two pages of 8-granule secrets
		b, err := NewLocked(8 * granule)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, b)
	}
	live := []*Buffer{}
	defer func() { wipeAll(live); wipeAll(held) }()
	for i := range 3 {
		b, err := New(8 * granule)
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, b)
		if LockFailed() {
			t.Fatalf("secret %d fell back to unlocked memory although the hook had secrets to free", i)
		}
	}
	if len(held) != 16-3 {
		t.Fatalf("the hook freed %d secrets for 3, want 3", 16-len(held))
	}
	// A large secret: the hook frees pages only by emptying them.
	big, err := New(2 * pageSize)
	if err != nil {
		t.Fatal(err)
	}
	live = append(live, big)
	if !LockFailed() {
		t.Fatal("a large secret over the limit must fall back (the hook cannot free two pages while small ones remain)")
	}
	if len(held) != 0 {
		t.Fatalf("the hook was not drained before the fallback: %d left", len(held))
	}
}

// TestGranulesIsolatedAndZeroed: neighbours in a page never see each other's
// bytes, and wiping zeroes the granules.
func TestGranulesIsolatedAndZeroed(t *testing.T) {
	fresh(t)
	sizes := []int{1, 63, 64, 65, 200, 1000, maxSmall, maxSmall + 1, 3 * pageSize}
	var bufs []*Buffer
	for i, n := range sizes {
		b, err := New(n)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Bytes()) != n || cap(b.Bytes()) != n || b.Len() != n {
			t.Fatalf("New(%d): len %d cap %d", n, len(b.Bytes()), cap(b.Bytes()))
		}
		if !bytes.Equal(b.Bytes(), make([]byte, n)) {
			t.Fatalf("New(%d) is not zeroed", n)
		}
		for j := range b.Bytes() {
			b.Bytes()[j] = byte(i + 1)
		}
		bufs = append(bufs, b)
	}
	for i, b := range bufs {
		if !bytes.Equal(b.Bytes(), bytes.Repeat([]byte{byte(i + 1)}, sizes[i])) {
			t.Fatalf("buffer %d (%d bytes) was overwritten by a neighbour", i, sizes[i])
		}
	}
	// Keep a view of the first small buffer's granule, and of a neighbour
	// that stays, to look at the memory after the wipe.
	view := bufs[4].mem
	bufs[4].Wipe()
	if !bytes.Equal(view, make([]byte, len(view))) {
		t.Fatal("Wipe left bytes in the granules")
	}
	if !bytes.Equal(bufs[5].Bytes(), bytes.Repeat([]byte{6}, sizes[5])) {
		t.Fatal("Wipe touched a neighbour")
	}
	// A new secret reuses the granules, zeroed.
	b, err := New(200)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), make([]byte, 200)) {
		t.Fatal("reused granules are not zeroed")
	}
	bufs[4] = b
	wipeAll(bufs)
}

// TestConcurrentWithFailingLock: buffers made and wiped from many goroutines
// while every second page fails to lock and a hook frees secrets; run with
// -race, it must neither deadlock nor leak.
func TestConcurrentWithFailingLock(t *testing.T) {
	fresh(t)
	lim := fakeLimit(8 * pageSize)
	lim.failEvery = 2
	var hmu sync.Mutex
	var spare []*Buffer
	SetReclaim(func() bool {
		hmu.Lock()
		defer hmu.Unlock()
		if len(spare) == 0 {
			return false
		}
		spare[len(spare)-1].Wipe()
		spare = spare[:len(spare)-1]
		return true
	})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			var mine []*Buffer
			for i := range 300 {
				n := (g*131 + i*37) % (2 * pageSize)
				b, err := New(n)
				if err != nil {
					t.Error(err)
					return
				}
				for j := range b.Bytes() {
					b.Bytes()[j] = byte(g)
				}
				switch i % 3 {
				case 0:
					hmu.Lock()
					spare = append(spare, b)
					hmu.Unlock()
				case 1:
					mine = append(mine, b)
				default:
					b.Wipe()
				}
				if len(mine) > 5 {
					if !bytes.Equal(mine[0].Bytes(), bytes.Repeat([]byte{byte(g)}, mine[0].Len())) {
						t.Error("a buffer was overwritten")
					}
					mine[0].Wipe()
					mine = mine[1:]
				}
			}
			wipeAll(mine)
		})
	}
	wg.Wait()
	wipeAll(spare)
}

// TestRealLimit runs the capacity check against the kernel's own
// RLIMIT_MEMLOCK of 64 KiB, as an ordinary user (root is exempt).
func TestRealLimit(t *testing.T) {
	if testenv.MemlockChild() {
		realLimitChild()
		return
	}
	if pageSize != 4096 {
		t.Skip("capacity figures assume 4 KiB pages")
	}
	if out := testenv.RunUnderMemlock(t, "TestRealLimit", 64<<10); !strings.Contains(out, "locked=144 ") {
		t.Fatalf("child output %q: want 144 secrets of 400 bytes locked", out)
	}
}

// realLimitChild fills the real limit with 400-byte secrets and prints how
// many were locked; it exits non-zero on any surprise.
func realLimitChild() {
	fail := func(msg string) {
		os.Stderr.WriteString("child: " + msg + "\n")
		os.Exit(3)
	}
	var bufs []*Buffer
	for !LockFailed() {
		b, err := NewLocked(400)
		if errors.Is(err, ErrNotLocked) {
			break
		}
		if err != nil {
			fail(err.Error())
		}
		bufs = append(bufs, b)
		if len(bufs) > 1000 {
			fail("no limit: is RLIMIT_MEMLOCK set?")
		}
	}
	n := len(bufs)
	if st := ReadStats(); st.Limit != 64<<10 || st.Locked != 64<<10 {
		fail("stats " + strconv.FormatInt(st.Locked, 10) + " locked, limit " + strconv.FormatInt(st.Limit, 10))
	}
	b, err := New(400)
	if err != nil || !LockFailed() {
		fail("New past the real limit did not fall back to unlocked memory")
	}
	b.Wipe()
	wipeAll(bufs)
	os.Stdout.WriteString("locked=" + strconv.Itoa(n) + " \n")
}
