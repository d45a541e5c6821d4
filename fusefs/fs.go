package fusefs

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tokend/tokend/store"
	"github.com/tokend/tokend/token"
)

// Options configures a mount. Every field has a usable zero value except
// UID and GID.
type Options struct {
	UID, GID uint32 // owner of the mount and of every file

	// AllowRoot admits uid 0 besides the owner (HTCondor's per-user
	// flocking). It needs user_allow_other in /etc/fuse.conf for non-root
	// mounts.
	AllowRoot bool

	// Audit answers OPEN (instead of ENOSYS) to log which process opened
	// which file; it costs a round trip per open.
	Audit bool

	// Check is the quick local check (structure is always checked; this adds
	// time and issuer) applied to tokens written through the mount.
	Check func(*token.Token) token.Reason

	// CacheTTL is how long the kernel may cache entries and attributes.
	// Changes are pushed explicitly, so this only bounds the damage of a lost
	// notification. Default 1h.
	CacheTTL time.Duration

	// DraftTimeout drops an incomplete write after this long without writes.
	// Default 10s.
	DraftTimeout time.Duration

	Logger *slog.Logger
	Debug  bool // log every FUSE request (go-fuse debug output; no content)
}

// FS is a mounted token directory.
type FS struct {
	fuse.RawFileSystem // ENOSYS for everything not implemented

	store  *store.Store
	opt    Options
	log    *slog.Logger
	server *fuse.Server
	notes  *notifier
	dir    string

	dirMtime atomic.Int64 // unix nanoseconds of the last change of names

	mu      sync.Mutex        // guards the fields below
	drafts  map[uint64]*draft // inode -> write in progress
	created map[uint64]uint64 // file handle from CREATE -> inode
	lastFh  uint64
}

const rootIno = fuse.FUSE_ROOT_ID

// Mount mounts st at dir. The mount is ready (the kernel has sent INIT) when
// Mount returns.
func Mount(dir string, st *store.Store, opt Options) (*FS, error) {
	if opt.CacheTTL <= 0 {
		opt.CacheTTL = time.Hour
	}
	if opt.DraftTimeout <= 0 {
		opt.DraftTimeout = 10 * time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	fs := &FS{
		RawFileSystem: fuse.NewDefaultRawFileSystem(),
		store:         st,
		opt:           opt,
		log:           opt.Logger.With("component", "fusefs"),
		dir:           dir,
		drafts:        make(map[uint64]*draft),
		created:       make(map[uint64]uint64),
	}
	fs.dirMtime.Store(time.Now().UnixNano())
	fs.notes = newNotifier(fs.log, fs.forgetDraft)
	st.OnChange(fs.onChange)

	mo := &fuse.MountOptions{
		FsName: "tokend",
		Name:   "tokend",
		Debug:  opt.Debug,
		// No xattrs: the kernel answers EOPNOTSUPP without asking.
		DisableXAttrs: true,
		// Root mounts without fusermount3; users go through it.
		DirectMount: true,
	}
	if opt.AllowRoot {
		// The kernel knows only allow_other (fusermount3 refuses
		// allow_root; libfuse emulates it in userspace). Most reads never
		// reach us, so the kernel itself must keep other users out:
		// default_permissions makes it check the 0700/0600 modes against
		// every caller, which admits the owner and root only.
		mo.Options = append(mo.Options, "allow_other", "default_permissions")
	}
	server, err := fuse.NewServer(fs, dir, mo)
	if err != nil {
		return nil, fmt.Errorf("could not mount %s: %w", dir, err)
	}
	fs.server = server
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		_ = server.Unmount()
		return nil, fmt.Errorf("mount %s did not come up: %w", dir, err)
	}
	fs.notes.start(server)
	return fs, nil
}

// Dir returns the mount point.
func (fs *FS) Dir() string { return fs.dir }

// Unmount detaches the mount, stops the notifier and drops every draft. The
// store is left alone: wipe it first. A busy mount (a shell's working
// directory inside it) is detached lazily and served until its last user
// leaves or this process exits.
func (fs *FS) Unmount() error {
	err := fs.server.Unmount()
	if err == nil {
		fs.server.Wait()
	} else {
		err = detach(fs.dir)
	}
	fs.notes.stop(true)
	fs.mu.Lock()
	for ino, d := range fs.drafts {
		d.drop()
		delete(fs.drafts, ino)
	}
	fs.mu.Unlock()
	return err
}

func (fs *FS) String() string { return "tokend" }

// allowed reports whether the caller may use the filesystem at all.
func (fs *FS) allowed(c *fuse.Caller) bool {
	return c.Uid == fs.opt.UID || (fs.opt.AllowRoot && c.Uid == 0)
}

// forgetDraft drops the draft of a file the store no longer has (removed by
// the agent: `tokend rm`, a wipe). A file that is only hidden keeps its
// writer's draft.
func (fs *FS) forgetDraft(ino uint64) {
	if _, ok := fs.store.Exists(ino); ok {
		return
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if d := fs.drafts[ino]; d != nil {
		d.drop()
		delete(fs.drafts, ino)
	}
}

// onChange runs in whichever goroutine changed the store, possibly with
// fs.mu held: it takes no lock and only queues.
func (fs *FS) onChange(c store.Change) {
	if c.Kind != store.Modified {
		fs.dirMtime.Store(time.Now().UnixNano())
	}
	fs.notes.push(c)
}
