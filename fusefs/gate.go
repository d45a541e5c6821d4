package fusefs

import (
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tokend/tokend/store"
)

// Gate holds the first looks at a pool's session token after a key change
// made it unusable (the package doc, "The gate"): from the first LOOKUP of
// one of its names or READDIR at offset 0 by a user process, every such
// request waits until the gate opens, which it does at the first of:
//   - one of its names is added to or replaced in the store (the fresh token
//     is there; the waiters answer from the store, whatever the kernel has
//     been told so far);
//   - Open (the fetch ended without a token: failed, refused, timed out);
//   - first arrival + wait;
//   - OpenGates (a wipe, SIGTERM) or Unmount.
//
// A waiter whose request is interrupted (Ctrl-C) answers EINTR at once.
type Gate struct {
	set   *gates
	names []string
	wait  time.Duration

	// Guarded by set.mu:
	armed   bool      // the hide's invalidations have been sent
	first   time.Time // first arrival; zero before
	waiters int       // requests that waited on it (for the log)

	once    sync.Once
	opened  chan struct{} // closed when the gate opens
	arrived chan struct{} // closed at the first arrival
}

// CloseGate closes a gate on names (a pool's session token file names) for
// up to wait from the first arrival, clamped below the kernel's FUSE
// request timeout where it has one (WaitLimit). It returns at once; the
// gate takes effect once the notifier has sent every invalidation queued
// before the call (the hide's), so call it after the store change that hid
// the token. A gate still closed on one of names opens: the newer key
// change supersedes it; a token of names the store shows already leaves
// it open. From now on names are never cached by the kernel as missing.
// Call it once per key generation per pool (retries must not), before the
// fetch starts, and Open it when the fetch ends.
func (fs *FS) CloseGate(names []string, wait time.Duration) *Gate {
	s := &fs.gates
	g := &Gate{set: s, names: slices.Clone(names), wait: min(wait, s.limit),
		opened: make(chan struct{}), arrived: make(chan struct{})}
	if wait > s.limit {
		fs.log.Warn("fetch.wait is above half the kernel's FUSE request timeout: a tool waits less",
			"wait", wait, "limit", s.limit)
	}
	s.mu.Lock()
	for _, n := range names {
		s.known[n] = true
	}
	var older []*Gate
	for _, o := range s.closed {
		if slices.ContainsFunc(o.names, func(n string) bool { return slices.Contains(names, n) }) {
			older = append(older, o)
		}
	}
	shut := s.shut || g.wait <= 0
	if !shut {
		s.closed = append(s.closed, g)
	}
	s.mu.Unlock()
	for _, o := range older {
		o.open("superseded by a newer key change")
	}
	if shut {
		g.open("")
		return g
	}
	// A token of names already shown (the fetch was quicker) leaves
	// nothing to wait for. Looked at once g is in closed, so that a
	// store change from now on opens it too.
	for _, n := range names {
		if _, ok := fs.store.Lookup(n); ok {
			g.open("")
			return g
		}
	}
	fs.notes.arm(g)
	return g
}

// Open opens the gate: every waiter answers now, from the store. Call it
// when the fetch ends, whatever its outcome (after a success the store
// change has opened it already). Idempotent; safe on a nil Gate.
func (g *Gate) Open() {
	if g != nil {
		g.open("the fetch ended")
	}
}

// Waiting is closed at the first arrival: a tool is waiting for the fresh
// token, so its fetch is urgent.
func (g *Gate) Waiting() <-chan struct{} { return g.arrived }

// OpenGates opens every gate, and every later one at once: a wipe and
// SIGTERM call it first, so that no request stays parked; Unmount does it
// itself.
func (fs *FS) OpenGates() {
	s := &fs.gates
	s.mu.Lock()
	s.shut = true
	gs := slices.Clone(s.closed)
	s.mu.Unlock()
	for _, g := range gs {
		g.open("the agent is wiping or stopping")
	}
}

// open opens g once, saying why in the log when someone waited.
func (g *Gate) open(why string) {
	g.once.Do(func() {
		s := g.set
		s.mu.Lock()
		s.closed = slices.DeleteFunc(s.closed, func(o *Gate) bool { return o == g })
		waiters, first := g.waiters, g.first
		close(g.opened)
		s.mu.Unlock()
		if waiters > 0 {
			s.log.Info("gate opened", "names", g.names, "why", why,
				"waited", time.Since(first).Round(time.Millisecond), "requests", waiters)
		}
	})
}

// gates is the FS's set of closed gates and the state the notifier and the
// waiters share. Its lock is a leaf: nothing is called while it is held
// but closing channels (Gate.open takes it, and may be called from
// store.OnChange listeners, with FS.mu held).
type gates struct {
	log   *slog.Logger
	limit time.Duration // the longest wait (WaitLimit)
	wake  func()        // tells the notifier to retry what it deferred

	mu      sync.Mutex
	idle    sync.Cond       // broadcast when parked drops to 0
	closed  []*Gate         // not yet open, armed or not
	known   map[string]bool // names ever gated: never cached as missing
	parked  int             // requests waiting now
	sending int             // notifier rounds sending entry invalidations
	shut    bool            // OpenGates was called: no gate closes again
}

func (s *gates) init(log *slog.Logger, limit time.Duration, wake func()) {
	s.log, s.limit, s.wake = log, limit, wake
	s.idle.L = &s.mu
	s.known = make(map[string]bool)
}

// noNegative reports whether a miss of name must not be cached: gated
// names are looked up again by every tool, so that the fresh token is
// found the moment it is in the store, whatever the notifier has sent.
func (s *gates) noNegative(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.known[name]
}

// changed opens the gates on a name the store now shows again.
func (s *gates) changed(c store.Change) {
	if c.Kind != store.Added && c.Kind != store.Replaced {
		return
	}
	s.mu.Lock()
	var gs []*Gate
	for _, g := range s.closed {
		if slices.Contains(g.names, c.Name) {
			gs = append(gs, g)
		}
	}
	s.mu.Unlock()
	for _, g := range gs {
		g.open("the fresh token is in the store")
	}
}

// arm makes g hold requests: everything queued before CloseGate was sent.
func (s *gates) arm(g *Gate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Contains(s.closed, g) {
		g.armed = true
	}
}

// beginEntries is called by the notifier before it sends entry
// invalidations, which take the directory's lock exclusively: it refuses
// while a request is parked (the request holds that lock shared), and
// while it has agreed, no request parks (endEntries ends that).
func (s *gates) beginEntries() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.parked > 0 {
		return false
	}
	s.sending++
	return true
}

func (s *gates) endEntries() {
	s.mu.Lock()
	s.sending--
	s.mu.Unlock()
}

// drain waits until no request is parked (after OpenGates: none parks
// again).
func (s *gates) drain() {
	s.mu.Lock()
	for s.parked > 0 {
		s.idle.Wait()
	}
	s.mu.Unlock()
}

// matching returns the armed gates a request would wait on: those on name,
// or every one for a listing (all).
// covers reports whether an armed gate covers name (all: a listing),
// without building the list matching returns.
func (s *gates) covers(name string, all bool) bool {
	return slices.ContainsFunc(s.closed, func(g *Gate) bool {
		return g.armed && (all || slices.Contains(g.names, name))
	})
}

func (s *gates) matching(name string, all bool) []*Gate {
	var gs []*Gate
	for _, g := range s.closed {
		if g.armed && (all || slices.Contains(g.names, name)) {
			gs = append(gs, g)
		}
	}
	return gs
}

// hold parks a LOOKUP of name (all false) or a READDIR at offset 0 (all
// true) while an armed gate covers it and the caller is a user process that
// may wait (mayWait). It answers OK when the request may go on, EINTR when
// it was interrupted while waiting; waited says whether it was held, so
// that a caller looks at the store again only then.
func (fs *FS) hold(cancel <-chan struct{}, c *fuse.Caller, name string, all bool) (waited bool, st fuse.Status) {
	s := &fs.gates
	s.mu.Lock()
	gated := s.covers(name, all)
	s.mu.Unlock()
	if !gated || !fs.mayWait(c) {
		return false, fuse.OK
	}

	now := time.Now()
	type wait struct {
		g        *Gate
		deadline time.Time
	}
	var waits []wait
	var expired []*Gate
	s.mu.Lock()
	if s.sending == 0 { // else the notifier may be blocked on our lock
		for _, g := range s.matching(name, all) {
			if g.first.IsZero() {
				g.first = now
				close(g.arrived)
			}
			deadline := g.first.Add(g.wait)
			if !now.Before(deadline) {
				expired = append(expired, g)
				continue
			}
			g.waiters++
			waits = append(waits, wait{g, deadline})
		}
	}
	if len(waits) > 0 {
		s.parked++
	}
	s.mu.Unlock()
	for _, g := range expired {
		g.open("no fresh token within fetch.wait")
	}
	if len(waits) == 0 {
		return false, fuse.OK
	}
	defer s.unpark()
	for _, w := range waits {
		if !w.g.await(cancel, w.deadline) {
			return true, fuse.EINTR
		}
	}
	return true, fuse.OK
}

// await waits, on its own timer, until g opens or deadline; it reports
// false when the request was interrupted first.
func (g *Gate) await(cancel <-chan struct{}, deadline time.Time) bool {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-g.opened:
		return true
	case <-t.C:
		g.open("no fresh token within fetch.wait")
		return true
	case <-cancel:
		return false
	}
}

func (s *gates) unpark() {
	s.mu.Lock()
	s.parked--
	last := s.parked == 0
	if last {
		s.idle.Broadcast()
	}
	s.mu.Unlock()
	if last {
		s.wake()
	}
}
