package fusefs

import (
	"log/slog"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tokend/tokend/store"
)

// notifier pushes cache invalidations to the kernel from its own goroutine,
// so that no Notify* call runs under a lock or inside a request handler.
//
// Inode invalidations (attributes, pages, the directory's listing) take no
// directory lock and go at once. Entry invalidations (NotifyEntry,
// NotifyDelete) take the directory's lock exclusively, which a request held
// at a gate holds shared: while one is held they wait in pending, in
// order, and go once none is (gates.unpark wakes the notifier).
type notifier struct {
	log     *slog.Logger
	removed func(ino uint64) // told of every removal, outside any lock
	gates   *gates

	mu      sync.Mutex // guards queue and stopped
	queue   []note
	stopped bool
	wake    chan struct{} // capacity 1: "look at the queue"
	done    chan struct{} // closed when run returns

	sendMu  sync.Mutex // one sender at a time (run, flush); guards pending
	pending []note     // entry invalidations and gate arms held back
}

// note is one invalidation: a store change, "drop the pages of ino", or
// "arm this gate" once everything queued before it has been sent.
type note struct {
	change store.Change
	pages  bool  // only invalidate ino's attributes and pages
	entry  bool  // only the entry part is left (held back once)
	arm    *Gate // a gate to arm
}

func newNotifier(log *slog.Logger, removed func(ino uint64), g *gates) *notifier {
	return &notifier{log: log, removed: removed, gates: g, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (n *notifier) push(c store.Change) { n.add(note{change: c}) }

func (n *notifier) invalidate(ino uint64) {
	n.add(note{change: store.Change{Ino: ino}, pages: true})
}

func (n *notifier) arm(g *Gate) { n.add(note{arm: g}) }

func (n *notifier) add(x note) {
	n.mu.Lock()
	if !n.stopped {
		n.queue = append(n.queue, x)
	}
	n.mu.Unlock()
	n.signal()
}

// oldPagesGrace is how long a replaced file's cached pages stay for
// readers that were half way through it.
const oldPagesGrace = time.Second

func (n *notifier) start(srv *fuse.Server) { go n.run(srv) }

// flush sends what is queued now, in the caller's goroutine: before an
// unmount, so that the kernel drops the pages of wiped tokens even if the
// mount lingers (a lazy unmount of a busy mount).
func (n *notifier) flush(srv *fuse.Server) {
	n.mu.Lock()
	batch := n.queue
	n.queue = nil
	n.mu.Unlock()
	n.send(srv, batch)
}

// send sends what was held back and then batch, holding back again the
// entry invalidations that cannot go yet.
func (n *notifier) send(srv *fuse.Server, batch []note) {
	n.sendMu.Lock()
	defer n.sendMu.Unlock()
	n.pending = n.sendBatch(srv, append(n.pending, batch...))
}

// stop ends the goroutine started by start and waits for it. Changes after
// this are dropped: nothing is mounted to push them to.
func (n *notifier) stop(started bool) {
	n.mu.Lock()
	n.stopped = true
	n.queue = nil
	n.mu.Unlock()
	n.signal()
	if started {
		<-n.done
	}
	n.sendMu.Lock()
	n.pending = nil
	n.sendMu.Unlock()
}

func (n *notifier) signal() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *notifier) run(srv *fuse.Server) {
	defer close(n.done)
	for range n.wake {
		n.mu.Lock()
		batch, stopped := n.queue, n.stopped
		n.queue = nil
		n.mu.Unlock()
		if stopped {
			return
		}
		n.send(srv, batch)
	}
}

// sendBatch sends batch's inode invalidations, then its entry
// invalidations and gate arms in order, unless a request is held at a gate:
// then those are returned, to be sent later.
func (n *notifier) sendBatch(srv *fuse.Server, batch []note) []note {
	dirChanged := false
	var entries []note // entry parts and arms, in order
	for _, x := range batch {
		c := x.change
		switch {
		case x.arm != nil || x.entry:
			entries = append(entries, x)
		case x.pages || c.Kind == store.Modified:
			n.check(srv.InodeNotify(c.Ino, 0, 0), "content", c)
		case c.Kind == store.Added:
			// Drops a cached "no such name".
			entries = append(entries, note{change: c, entry: true})
			dirChanged = true
		case c.Kind == store.Removed:
			// An open descriptor must not keep reading cached pages.
			n.check(srv.InodeNotify(c.Ino, 0, 0), "content", c)
			n.removed(c.Ino)
			entries = append(entries, note{change: c, entry: true})
			dirChanged = true
		case c.Kind == store.Replaced:
			// As after a rename over the name: the next lookup finds the
			// new inode, while a reader half way through the old one
			// finishes it (its cached pages hold a token still good).
			// Its pages go a moment later.
			n.removed(c.Old)
			time.AfterFunc(oldPagesGrace, func() { n.invalidate(c.Old) })
			entries = append(entries, note{change: c, entry: true})
			dirChanged = true
		}
	}
	var held []note
	began := false
	for i, x := range entries {
		if x.arm != nil {
			n.gates.arm(x.arm)
			continue
		}
		if !began {
			if began = n.gates.beginEntries(); !began {
				held = entries[i:]
				break
			}
		}
		c := x.change
		if c.Kind == store.Added {
			n.check(srv.EntryNotify(rootIno, c.Name), "entry", c)
		} else {
			ino := c.Ino
			if c.Kind == store.Replaced {
				ino = c.Old
			}
			n.check(srv.DeleteNotify(rootIno, ino, c.Name), "delete", c)
		}
		dirChanged = true
	}
	if began {
		n.gates.endEntries()
	}
	if dirChanged {
		// The listing cache lives in the directory's pages.
		n.check(srv.InodeNotify(rootIno, 0, 0), "directory", store.Change{Ino: rootIno})
	}
	return held
}

// check logs failures that matter. ENOENT means the kernel had nothing cached
// for that name or inode, which is what we wanted.
func (n *notifier) check(st fuse.Status, what string, c store.Change) {
	if st == fuse.OK || st == fuse.ENOENT {
		return
	}
	n.log.Warn("kernel cache invalidation failed; a stale entry may be shown until the cache expires",
		"what", what, "name", c.Name, "ino", c.Ino, "status", st.String())
}
