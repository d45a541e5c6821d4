package secmem

import (
	"crypto/rand"
	"os"
	"testing"

	"github.com/tokend/tokend/internal/memscan"
)

// spill copies s into a stack array in each of n nested frames, as hashing
// leaves its state and output in stack frames.
//
//go:noinline
func spill(s []byte, n int) byte {
	var a [64]byte
	copy(a[:], s)
	if n == 0 {
		return a[0]
	}
	return spill(s, n-1) ^ a[len(s)-1]
}

// stackCopies runs spill on a goroutine of its own (through Do if wrap) and
// returns where this process's memory holds the secret afterwards, outside
// the buffer that holds it. The goroutine stays parked until the scan is
// done, so its stack is scanned as it was left.
func stackCopies(t *testing.T, secret *Buffer, wrap bool) []memscan.Hit {
	t.Helper()
	done, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	go func() {
		if wrap {
			Do(func() { spill(secret.Bytes(), 20) })
		} else {
			spill(secret.Bytes(), 20)
		}
		close(done)
		<-release
	}()
	<-done
	hits, _, err := memscan.Scan(os.Getpid(), map[string][]byte{"secret": secret.Bytes()}, memscan.Of(secret.mem))
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// Do leaves no copy of what passed through the stack; without Do the same
// code does (so the scan can tell).
func TestDoErasesTheStack(t *testing.T) {
	secret, err := New(32)
	if err != nil {
		t.Fatal(err)
	}
	defer secret.Wipe()
	rand.Read(secret.Bytes())
	if hits := stackCopies(t, secret, true); len(hits) > 0 {
		t.Errorf("RuntimeSecret=%v: %d copies left after Do, first: %s", RuntimeSecret, len(hits), hits[0])
	}
	if hits := stackCopies(t, secret, false); len(hits) == 0 {
		t.Error("without Do the scan found no copy: it cannot tell whether Do erased anything")
	}
}
