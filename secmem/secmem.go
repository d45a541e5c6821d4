// Package secmem holds secrets in memory that is locked against swapping,
// left out of core dumps, not inherited by child processes, and zeroed when
// it is released.
//
// Wiping is best effort: bytes that other code copies out of a Buffer (for
// example into a Go string) live on the garbage-collected heap and cannot be
// zeroed from here. Callers keep such copies short-lived.
//
// # Locked memory is scarce
//
// RLIMIT_MEMLOCK may be as low as 64 KiB (EL 8 and 9 user sessions), and
// the kernel locks whole pages. So small secrets (up to half a page: a token,
// a file of a few tokens, a key) share pages: each page is cut into 64
// granules (64 bytes on 4 KiB pages) and a secret takes the first run of
// free granules that fits. One empty page is kept for the next secret; other
// empty pages are unlocked and unmapped. Larger secrets get mappings of their
// own. With 4 KiB pages, 64 KiB holds 16 pages: the agent's budget, for
// tokens of up to 1 KiB, is about 13 KiB of store content, as much again of
// copies while a check runs, 8 KiB of remembered tokens (store), a few
// drafts and fetches: about 42 KiB.
//
// Past the limit, when a new page cannot be locked:
//  1. New asks the reclaim hook (SetReclaim) to free a less important
//     secret, and tries again while the hook frees something. The agent
//     registers its store's remembered tokens, so live tokens come before
//     remembered ones.
//  2. Then it uses an unlocked page, still left out of dumps and forks and
//     zeroed when freed, and says so once (SetWarn, LockFailed; `tokend
//     status` shows "memory: NOT locked").
//  3. NewLocked never does: it returns ErrNotLocked.
package secmem

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Buffer is a region of anonymous memory holding one secret: granules of a
// shared page, or a mapping of its own. Use after Wipe is a bug and panics.
type Buffer struct {
	mem  []byte // what this buffer may use (whole granules or pages); nil after Wipe
	n    int    // bytes in use
	page *page  // the shared page, or nil for a mapping of its own
	bits uint64 // page: the granules taken
	lock bool   // own mapping: mlock succeeded
}

// page is one shared page.
type page struct {
	mem    []byte
	used   uint64 // bitmap of granules in use
	locked bool
}

var (
	pageSize = os.Getpagesize()
	granule  = pageSize / 64 // a page's bitmap has 64 bits
	maxSmall = pageSize / 2  // larger secrets get their own mapping

	// warnOnce reports the first failure to lock memory.
	warnOnce   sync.Once
	lockFailed atomic.Bool
	warn       = func(error) {}

	reclaim atomic.Pointer[func() bool]

	// replaced in tests
	mlock   = unix.Mlock
	munlock = unix.Munlock

	// live counts buffers made and not yet wiped.
	live atomic.Int64

	mu            sync.Mutex // guards pages and the byte counts; never held while calling out
	pages         []*page
	lockedBytes   int64
	unlockedBytes int64
)

// Live returns the number of buffers made and not yet wiped. Tests use it to
// find leaks: a buffer never wiped is a secret never zeroed.
func Live() int { return int(live.Load()) }

// SetWarn sets the function told once when memory cannot be locked (for
// example RLIMIT_MEMLOCK is too low). Call it before the first New.
func SetWarn(f func(error)) { warn = f }

// LockFailed reports whether any buffer could not be locked in memory.
func LockFailed() bool { return lockFailed.Load() }

// New returns a zeroed buffer of n bytes, in locked memory if any is left
// (see the package doc).
func New(n int) (*Buffer, error) { return alloc(n, false) }

// From returns a buffer holding a copy of p.
func From(p []byte) (*Buffer, error) {
	b, err := New(len(p))
	if err != nil {
		return nil, err
	}
	copy(b.mem, p)
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
	switch {
	case b.page != nil:
		mu.Lock()
		b.page.used &^= b.bits
		if b.page.used == 0 {
			releaseEmptyLocked(b.page)
		}
		mu.Unlock()
	case len(b.mem) > 0:
		mu.Lock()
		unmapLocked(b.mem, b.lock)
		mu.Unlock()
	}
	live.Add(-1)
	b.mem, b.n, b.page = nil, 0, nil
}

func alloc(n int, mustLock bool) (*Buffer, error) {
	switch {
	case n < 0:
		return nil, errors.New("secmem: negative size")
	case n == 0:
		live.Add(1)
		return &Buffer{mem: []byte{}}, nil
	case n > maxSmall:
		return allocLarge(n, mustLock)
	}
	k := (n + granule - 1) / granule
	var fresh []byte // a page mapped here, not yet in pages
	defer func() {
		if fresh != nil {
			_ = unix.Munmap(fresh)
		}
	}()
	var lockErr error
	for {
		mu.Lock()
		b := takeLocked(n, k, true)
		mu.Unlock()
		if b != nil {
			return b, nil
		}
		if fresh == nil {
			var err error
			if fresh, err = mapPages(pageSize); err != nil {
				return nil, err
			}
		}
		if lockErr = mlock(fresh); lockErr == nil {
			mu.Lock()
			b := addPageLocked(fresh, true, n, k)
			mu.Unlock()
			fresh = nil
			return b, nil
		}
		if !reclaimOne() {
			break
		}
	}
	if mustLock {
		return nil, ErrNotLocked
	}
	notLocked(lockErr)
	mu.Lock()
	defer mu.Unlock()
	if b := takeLocked(n, k, false); b != nil {
		return b, nil
	}
	b := addPageLocked(fresh, false, n, k)
	fresh = nil
	return b, nil
}

// takeLocked takes k granules from a page that has them, locked pages
// only if locked is set, any page otherwise.
func takeLocked(n, k int, locked bool) *Buffer {
	for _, p := range pages {
		if locked && !p.locked {
			continue
		}
		if first, ok := freeRun(p.used, k); ok {
			return takeFrom(p, n, first, k)
		}
	}
	return nil
}

func addPageLocked(mem []byte, locked bool, n, k int) *Buffer {
	p := &page{mem: mem, locked: locked}
	pages = append(pages, p)
	count(len(mem), locked)
	return takeFrom(p, n, 0, k)
}

func takeFrom(p *page, n, first, k int) *Buffer {
	mask := run(first, k)
	p.used |= mask
	live.Add(1)
	return &Buffer{mem: p.mem[first*granule : (first+k)*granule : (first+k)*granule], n: n, page: p, bits: mask}
}

// run is the bitmap of k granules from first.
func run(first, k int) uint64 {
	if k == 64 {
		return ^uint64(0)
	}
	return (uint64(1)<<k - 1) << first
}

// freeRun finds the first run of k free granules in used.
func freeRun(used uint64, k int) (int, bool) {
	for first := 0; first+k <= 64; {
		m := run(first, k)
		if used&m == 0 {
			return first, true
		}
		// Skip past the highest used granule in the window.
		first = 64 - bits.LeadingZeros64(used&m)
	}
	return 0, false
}

// releaseEmptyLocked keeps one empty locked page for the next secret and
// unmaps the others: an unlocked page always goes, so that later secrets
// find locked memory first.
func releaseEmptyLocked(p *page) {
	if p.locked && !slices.ContainsFunc(pages, func(o *page) bool { return o != p && o.locked && o.used == 0 }) {
		return
	}
	pages = slices.DeleteFunc(pages, func(o *page) bool { return o == p })
	unmapLocked(p.mem, p.locked)
}

// dropSpareLocked unmaps the spare empty page, if any: a large secret that
// cannot be locked may fit in the locked memory it held. It reports whether
// there was one.
func dropSpareLocked() bool {
	i := slices.IndexFunc(pages, func(p *page) bool { return p.used == 0 })
	if i < 0 {
		return false
	}
	p := pages[i]
	pages = slices.Delete(pages, i, i+1)
	unmapLocked(p.mem, p.locked)
	return true
}

func unmapLocked(mem []byte, locked bool) {
	if locked {
		_ = munlock(mem)
	}
	_ = unix.Munmap(mem)
	count(-len(mem), locked)
}

func count(n int, locked bool) {
	if locked {
		lockedBytes += int64(n)
	} else {
		unlockedBytes += int64(n)
	}
}

// allocLarge gives a secret larger than half a page a mapping of its own.
func allocLarge(n int, mustLock bool) (*Buffer, error) {
	size := (n + pageSize - 1) / pageSize * pageSize
	mem, err := mapPages(size)
	if err != nil {
		return nil, err
	}
	b := &Buffer{mem: mem[:size:size], n: n}
	for {
		if err = mlock(mem); err == nil {
			b.lock = true
			break
		}
		mu.Lock()
		spare := dropSpareLocked()
		mu.Unlock()
		if !spare && !reclaimOne() {
			break
		}
	}
	if !b.lock {
		if mustLock {
			_ = unix.Munmap(mem)
			return nil, ErrNotLocked
		}
		notLocked(err)
	}
	mu.Lock()
	count(size, b.lock)
	mu.Unlock()
	live.Add(1)
	return b, nil
}

// mapPages maps size bytes, kept out of core dumps and of forked children
// (fusermount3, fetch commands).
func mapPages(size int) ([]byte, error) {
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("secmem: could not map %d bytes: %w", size, err)
	}
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	_ = unix.Madvise(mem, unix.MADV_WIPEONFORK)
	return mem, nil
}

func reclaimOne() bool {
	f := reclaim.Load()
	return f != nil && (*f)()
}

func notLocked(err error) {
	lockFailed.Store(true)
	warnOnce.Do(func() {
		warn(fmt.Errorf("secret memory is not locked and may be swapped out (raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK= in the unit): %w", err))
	})
}
