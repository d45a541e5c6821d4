package fusefs

import (
	"sync"
	"time"
)

// Gate holds the first looks at a pool's session token after a key change
// made it unusable (see "The gate" in the package doc): from the first
// LOOKUP of one of its names or READDIR at offset 0 by a user process, every
// such request waits until the gate opens, which it does at the first of:
//   - one of its names is added to or replaced in the store (the fresh token
//     is there; the waiter answers from the store, whatever the kernel has
//     been told so far);
//   - Open (the fetch ended without a token: failed, refused, timed out);
//   - first arrival + wait;
//   - OpenGates (a wipe, SIGTERM) or Unmount.
//
// Each waiter also answers EINTR at once when its request is interrupted
// (Ctrl-C).
type Gate struct {
	fs    *FS
	names []string
	wait  time.Duration

	once    sync.Once
	opened  chan struct{} // closed by Open
	arrived chan struct{} // closed at the first arrival
}

// CloseGate closes a gate on names (the pool's session token file names)
// for up to wait from the first arrival, clamped below the kernel's FUSE
// request timeout where it has one. It returns at once; the gate takes
// effect once the notifier has sent every invalidation queued before the
// call (the hide's), so call it after the store change that hid the token.
// A gate still closed on one of names is opened: the newer key change
// supersedes it. Call it once per key generation per pool; retries must not.
func (fs *FS) CloseGate(names []string, wait time.Duration) *Gate {
	g := &Gate{fs: fs, names: append([]string(nil), names...), wait: wait,
		opened: make(chan struct{}), arrived: make(chan struct{})}
	return g // stub: the gate never holds anything yet
}

// Open opens the gate: every waiter answers now, from the store. Call it
// when the fetch ends, whatever its outcome (after a success the store
// change has opened it already). Idempotent; safe on a nil Gate.
func (g *Gate) Open() {
	if g == nil {
		return
	}
	g.once.Do(func() { close(g.opened) })
}

// Waiting is closed at the first arrival: a tool is waiting for the fresh
// token, so its fetch is urgent.
func (g *Gate) Waiting() <-chan struct{} { return g.arrived }

// OpenGates opens every gate: a wipe and SIGTERM call it first, so that no
// request stays parked; Unmount does it itself.
func (fs *FS) OpenGates() {}
