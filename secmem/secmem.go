// Package secmem holds secrets in memory that is locked against swapping,
// left out of core dumps, not inherited by child processes, and zeroed when
// it is released.
//
// Wiping is best effort: bytes that other code copies out of a Buffer (for
// example into a Go string) live on the garbage-collected heap and cannot be
// zeroed from here. Callers keep such copies short-lived.
package secmem

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Buffer is a page-aligned region of anonymous memory holding one secret.
// Use after Wipe is a bug and panics.
type Buffer struct {
	mem  []byte // the whole mapping
	n    int    // bytes in use
	lock bool   // mlock succeeded
}

var (
	pageSize = os.Getpagesize()

	// warnOnce reports the first failure to lock memory.
	warnOnce   sync.Once
	lockFailed atomic.Bool
	warn       = func(error) {}

	mlock = unix.Mlock // replaced in tests

	// live counts buffers made and not yet wiped.
	live atomic.Int64
)

// Live returns the number of buffers made and not yet wiped. Tests use it to
// find leaks: a buffer never wiped is a secret never zeroed.
func Live() int { return int(live.Load()) }

// SetWarn sets the function told once when memory cannot be locked (for
// example RLIMIT_MEMLOCK is too low). Call it before the first New.
func SetWarn(f func(error)) { warn = f }

// LockFailed reports whether any buffer could not be locked in memory.
func LockFailed() bool { return lockFailed.Load() }

// New returns a zeroed buffer of n bytes.
func New(n int) (*Buffer, error) {
	if n < 0 {
		return nil, errors.New("secmem: negative size")
	}
	size := (n + pageSize - 1) / pageSize * pageSize
	if size == 0 {
		size = pageSize
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("secmem: could not map %d bytes: %w", size, err)
	}
	// Neither in core dumps nor in a forked child (fusermount3, fetch commands).
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	_ = unix.Madvise(mem, unix.MADV_WIPEONFORK)
	b := &Buffer{mem: mem, n: n}
	live.Add(1)
	if err := mlock(mem); err != nil {
		lockFailed.Store(true)
		warnOnce.Do(func() {
			warn(fmt.Errorf("secret memory is not locked and may be swapped out (raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK= in the unit): %w", err))
		})
	} else {
		b.lock = true
	}
	return b, nil
}

// From returns a buffer holding a copy of p.
func From(p []byte) (*Buffer, error) {
	b, err := New(len(p))
	if err != nil {
		return nil, err
	}
	Copy(b.mem, p)
	return b, nil
}

// Bytes returns the secret. The slice is valid until Wipe.
func (b *Buffer) Bytes() []byte {
	if b.mem == nil {
		panic("secmem: use of a wiped buffer")
	}
	return b.mem[:b.n:b.n]
}

// Len returns the number of bytes held.
func (b *Buffer) Len() int { return b.n }

// Wipe zeroes the buffer and releases its memory. Wiping twice, or a nil
// buffer, is harmless.
func (b *Buffer) Wipe() {
	if b == nil || b.mem == nil {
		return
	}
	clear(b.mem)
	if b.lock {
		_ = unix.Munlock(b.mem)
	}
	_ = unix.Munmap(b.mem)
	live.Add(-1)
	b.mem = nil
	b.n = 0
}
