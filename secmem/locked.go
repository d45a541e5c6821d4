package secmem

import (
	"errors"

	"golang.org/x/sys/unix"
)

// ErrNotLocked is returned by NewLocked and FromLocked when no locked memory
// is left (RLIMIT_MEMLOCK), even after the reclaim hook freed what it could.
var ErrNotLocked = errors.New("secmem: no locked memory left (RLIMIT_MEMLOCK)")

// NewLocked is New for secrets that may only live in locked memory (the
// agent's remembered tokens): it never falls back to unlocked memory.
func NewLocked(n int) (*Buffer, error) {
	return alloc(n, true)
}

// FromLocked is From for secrets that may only live in locked memory.
func FromLocked(p []byte) (*Buffer, error) {
	b, err := NewLocked(len(p))
	if err != nil {
		return nil, err
	}
	Copy(b.Bytes(), p)
	return b, nil
}

// SetReclaim sets the function New calls when locked memory runs out, before
// it falls back to unlocked memory: it frees one less important secret and
// reports whether it did (the agent zeroes its oldest remembered token). It
// is called with no lock of this package held. Call it before the first New.
func SetReclaim(f func() bool) {
	if f == nil {
		reclaim.Store(nil)
		return
	}
	reclaim.Store(&f)
}

// Stats describes the secret memory in use.
type Stats struct {
	Buffers  int   // buffers made and not yet wiped
	Locked   int64 // bytes mapped and locked
	Unlocked int64 // bytes mapped that could not be locked
	Limit    int64 // RLIMIT_MEMLOCK (soft); -1 when unlimited
}

// ReadStats returns the current Stats.
func ReadStats() Stats {
	mu.Lock()
	st := Stats{Buffers: Live(), Locked: lockedBytes, Unlocked: unlockedBytes, Limit: -1}
	mu.Unlock()
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err == nil && rl.Cur != unix.RLIM_INFINITY {
		st.Limit = int64(rl.Cur)
	}
	return st
}
