package fusefs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tokend/tokend/mounttab"
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

	// ForceOpenHandles answers OPEN and OPENDIR even where the kernel can
	// do without them: the mode chosen for kernels that lack no_open or
	// no_opendir support, forced (tests).
	ForceOpenHandles bool

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

	// AgentPID is the process whose threads and descendants are never
	// held at a gate (the fetch command reads the directory too). 0 means
	// this process, which should be a child subreaper (see
	// internal/reaper) so that double-forked children stay under it.
	AgentPID int

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
	gates  gates
	dir    string

	dirMtime atomic.Int64 // unix nanoseconds of the last change of names

	// openHandles is set by Init, before any request but INIT is served:
	// OPEN and OPENDIR are answered rather than refused with ENOSYS.
	openHandles bool
	opened      atomic.Uint64 // OPEN and OPENDIR answered (tests)

	gone     chan struct{} // closed when the kernel ends the mount
	goneOnce sync.Once

	mu      sync.Mutex        // guards the fields below
	drafts  map[uint64]*draft // inode -> write in progress
	created map[uint64]bool   // inodes made by CREATE, whose handle (the inode number) is open
}

const rootIno = fuse.FUSE_ROOT_ID

// maxWrite is the largest READ or WRITE the kernel sends (see Mount).
const maxWrite = 64 << 10

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
		gone:          make(chan struct{}),
		drafts:        make(map[uint64]*draft),
		created:       make(map[uint64]bool),
	}
	fs.dirMtime.Store(time.Now().UnixNano())
	timeout, err := RequestTimeout()
	if err != nil {
		fs.log.Warn("cannot read the kernel's FUSE request timeout; fetch.wait is not clamped", "err", err)
	}
	fs.notes = newNotifier(fs.log, fs.forgetDraft, &fs.gates)
	fs.gates.init(fs.log, WaitLimit(timeout), fs.notes.signal)

	mo := &fuse.MountOptions{
		FsName: "tokend",
		Name:   "tokend",
		Debug:  opt.Debug,
		// No xattrs: the kernel answers EOPNOTSUPP without asking.
		DisableXAttrs: true,
		// Root mounts without fusermount3; users go through it.
		DirectMount: true,
		// Every request go-fuse reads takes a buffer of MaxWrite plus a
		// few KiB, held while it is served and pooled after. 64 KiB reads
		// or writes a file of the default size limit in one request
		// (a larger limit takes a few); go-fuse's default, 128 KiB, would
		// double what a burst of requests leaves behind.
		MaxWrite: maxWrite,
		// MaxInflightRequestBytes stays go-fuse's default, no limit: a
		// request that waits (a lookup parked until a fresh token comes)
		// holds its buffer and goroutine but not a reader, and go-fuse
		// starts another reader whenever none is left, so parked
		// requests, the fetcher's own and an INTERRUPT for a parked one
		// are all read at once. A limit would have to leave room for
		// them all (16 parked plus normal traffic: 64 requests, 4.4 MiB),
		// and would bound only a burst's peak, which goes back anyway.
		// go-fuse keeps at most GOMAXPROCS (at least 2, at most 16)
		// readers idle; the agent pins GOMAXPROCS to 2
		// (agent.PinProcs). MaxBackground, the kernel's limit on
		// read-ahead and other asynchronous requests, stays the
		// kernel's 12: lookups and listings are synchronous and never
		// count against it.
	}
	if opt.AllowRoot {
		// The kernel knows only allow_other (fusermount3 refuses
		// allow_root; libfuse emulates it in userspace). Most reads never
		// reach us, so the kernel itself must keep other users out:
		// default_permissions makes it check the 0700/0600 modes against
		// every caller, which admits the owner and root only.
		mo.Options = append(mo.Options, "allow_other", "default_permissions")
	}
	if os.Geteuid() != 0 {
		if err := canUserMount(); err != nil {
			return nil, fmt.Errorf("could not mount %s: %w", dir, err)
		}
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
	// Listen only once mounted: before, the kernel has nothing cached, and
	// a failed mount must leave no listener behind.
	st.OnChange(fs.onChange)
	fs.notes.start(server)
	return fs, nil
}

// noOpen is what the kernel must offer for OPEN and OPENDIR to be refused
// with ENOSYS: a kernel without no_open or no_opendir support (upstream 5.1
// for opendir; EL 8's 4.18 has it only where backported) hands that ENOSYS
// to open(2) or opendir(3), and HTCondor would silently offer no IDTOKENS.
const noOpen = fuse.CAP_NO_OPEN_SUPPORT | fuse.CAP_NO_OPENDIR_SUPPORT

// Init is called by go-fuse once the kernel's INIT is handled and before
// any other request is served: it picks how OPEN and OPENDIR are answered
// from what the kernel offers.
func (fs *FS) Init(s *fuse.Server) {
	offered := s.KernelSettings().Flags64()&noOpen == noOpen
	fs.openHandles = fs.opt.ForceOpenHandles || !offered
	if !offered {
		fs.log.Info("this kernel lacks FUSE no_open/no_opendir support: answering OPEN and OPENDIR (each open costs a round trip to the agent)")
	}
}

// OpenHandles reports whether the filesystem answers OPEN and OPENDIR (the
// kernel lacks no_open/no_opendir support, or ForceOpenHandles) rather than
// letting the kernel open files and the directory itself.
func (fs *FS) OpenHandles() bool { return fs.openHandles }

// canUserMount checks what an ordinary user's mount needs, to say what is
// missing rather than pass on fusermount3's exit status.
func canUserMount() error {
	if _, err := exec.LookPath("fusermount3"); err != nil {
		if _, err := exec.LookPath("/bin/fusermount3"); err != nil { // go-fuse looks there too
			return errors.New("fusermount3 is missing or not executable: install fuse3 (apt-get install fuse3)")
		}
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("cannot open /dev/fuse (%w): an administrator makes it usable by users (chmod 666 /dev/fuse, the default once fuse3 is installed)", err)
	}
	return f.Close()
}

// Dir returns the mount point.
func (fs *FS) Dir() string { return fs.dir }

// Gone is closed when the kernel has ended the mount: after Unmount, or
// when someone else unmounted it (fusermount3 -u, umount). A lazy unmount of
// a busy mount ends it only when its last user leaves.
func (fs *FS) Gone() <-chan struct{} { return fs.gone }

// OnUnmount is called by go-fuse once the kernel has ended the mount.
func (fs *FS) OnUnmount() { fs.goneOnce.Do(func() { close(fs.gone) }) }

// Unmount detaches the mount, stops the notifier and drops every draft. The
// store is left alone: wipe it first. A busy mount (a shell's working
// directory inside it) is detached lazily and served until its last user
// leaves or this process exits. A mount someone else ended needs nothing
// more, unless its connection was aborted, which leaves a dead mount point.
func (fs *FS) Unmount() error {
	// Writers' drafts may hold tokens: they go first. Then the kernel is
	// told of every change already made (a wipe): a busy mount lingers
	// after a lazy unmount, and must not keep cached tokens. Held
	// requests answer before, or the invalidations would wait for them.
	fs.DropDrafts()
	fs.OpenGates()
	var err error
	select {
	case <-fs.gone:
		if mounttab.Mounted(fs.dir) {
			err = mounttab.Detach(fs.dir)
		}
	default:
		fs.gates.drain()
		fs.notes.flush(fs.server)
		if err = fs.server.Unmount(); err == nil {
			fs.server.Wait()
		} else {
			err = mounttab.Detach(fs.dir)
		}
	}
	fs.notes.stop(true)
	return err
}

// DropDrafts zeroes and drops every writer's draft, committed or not: a
// wipe must leave no token in them. (The store's removals drop drafts too,
// but later, from the notifier, and not those of files it did not show.) A
// writer that goes on writing starts a new draft.
func (fs *FS) DropDrafts() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for ino, d := range fs.drafts {
		d.drop()
		delete(fs.drafts, ino)
	}
}

func (fs *FS) String() string { return "tokend" }

// allowed reports whether the caller may use the filesystem at all.
func (fs *FS) allowed(c *fuse.Caller) bool {
	return c.Uid == fs.opt.UID || (fs.opt.AllowRoot && c.Uid == 0)
}

// forgetDraft drops the draft and the create handle of a file the store no
// longer has (removed or replaced by the agent: `tokend rm`, a wipe, a
// refresh, a hide). A file that is only no longer shown keeps its writer's.
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
	delete(fs.created, ino)
}

// onChange runs in whichever goroutine changed the store, possibly with
// fs.mu held: it takes only leaf locks, opens gates and queues.
func (fs *FS) onChange(c store.Change) {
	if c.Kind != store.Modified {
		fs.dirMtime.Store(time.Now().UnixNano())
	}
	fs.gates.changed(c)
	fs.notes.push(c)
}
