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
type notifier struct {
	log     *slog.Logger
	removed func(ino uint64) // told of every removal, outside any lock

	mu      sync.Mutex // guards queue and stopped
	queue   []note
	stopped bool
	wake    chan struct{} // capacity 1: "look at the queue"
	done    chan struct{} // closed when run returns
}

// note is one invalidation: a store change, or "drop the pages of ino".
type note struct {
	change store.Change
	pages  bool // only invalidate ino's attributes and pages
}

func newNotifier(log *slog.Logger, removed func(ino uint64)) *notifier {
	return &notifier{log: log, removed: removed, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (n *notifier) push(c store.Change) { n.add(note{change: c}) }

func (n *notifier) invalidate(ino uint64) {
	n.add(note{change: store.Change{Ino: ino}, pages: true})
}

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

func (n *notifier) send(srv *fuse.Server, batch []note) {
	dirChanged := false
	for _, x := range batch {
		c := x.change
		switch {
		case x.pages || c.Kind == store.Modified:
			n.check(srv.InodeNotify(c.Ino, 0, 0), "content", c)
		case c.Kind == store.Added:
			// Drops a cached "no such name".
			n.check(srv.EntryNotify(rootIno, c.Name), "entry", c)
			dirChanged = true
		case c.Kind == store.Removed:
			n.check(srv.DeleteNotify(rootIno, c.Ino, c.Name), "delete", c)
			// An open descriptor must not keep reading cached pages.
			n.check(srv.InodeNotify(c.Ino, 0, 0), "content", c)
			n.removed(c.Ino)
			dirChanged = true
		case c.Kind == store.Replaced:
			// As after a rename over the name: the next lookup finds the
			// new inode, while a reader half way through the old one
			// finishes it (its cached pages hold a token still good).
			// Its pages go a moment later.
			n.check(srv.DeleteNotify(rootIno, c.Old, c.Name), "delete", c)
			n.removed(c.Old)
			time.AfterFunc(oldPagesGrace, func() { n.invalidate(c.Old) })
			dirChanged = true
		}
	}
	if dirChanged {
		// The listing cache lives in the directory's pages.
		n.check(srv.InodeNotify(rootIno, 0, 0), "directory", store.Change{Ino: rootIno})
	}
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
