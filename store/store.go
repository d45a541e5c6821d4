// Package store keeps the token files of one token directory in memory.
//
// A file is a name with content: lines that are blank, comments or tokens,
// exactly as HTCondor reads them. Content lives in secmem buffers and is
// zeroed when it is replaced, removed or wiped. A token that fails
// validation is hidden: its line is cut out of the file's content (and the
// bytes zeroed) and only its claims are kept, so that `tokend list --all` can
// say why it is gone. A file whose tokens are all hidden is not visible.
//
// The store knows nothing of FUSE, sockets or key files. Whoever shows its
// content registers a listener with OnChange and is told, after the store's
// lock is released, which names appeared, changed or disappeared.
//
// # A reader never sees half of a file
//
// The kernel caches pages and attributes per inode, and a reader that has a
// file open goes on reading the inode it opened (HTCondor's read_secure_file:
// open, fstat, read st_size bytes, fstat again and compare the mtime). Were
// an inode edited in place, the reader could take the start of one version
// from cached pages and the rest of another from the store, and neither the
// size nor a whole-second mtime need show it. So no change the agent makes
// edits an inode: each gives the name a new inode, as a rename over the file
// would, and drops the old one. A reader gets the old content whole, the new
// content whole, or an error (ENOENT), never a mix.
//   - Put (fetch, refresh, a legacy import) reports Replaced: a reader half
//     way through the old inode may finish it from the kernel's cache (its
//     tokens are still good).
//   - Hide (expiry, key rotation, revocation) reports Removed for the old
//     inode, then Added for the new one if tokens are left: the hidden token
//     must not be read again, so the old inode's pages go at once and its
//     readers get ENOENT.
//
// A writer half way through such a file loses it (ENOENT), as after a
// rename over it. The one edit in place is Replace, a writer's own commit
// through the mount, to the inode that writer holds; fusefs/doc.go
// ("Writes") says what a reader racing it may see.
package store

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// Errors returned by the store. The filesystem maps them to errnos.
var (
	ErrNotFound    = errors.New("no such token file")
	ErrExists      = errors.New("token file exists")
	ErrTooMany     = errors.New("too many token files")
	ErrTooBig      = errors.New("token file too big")
	ErrBadName     = errors.New("invalid token file name")
	ErrNameTooLong = errors.New("token file name too long")
	ErrClosed      = errors.New("token store is closed")
)

// Limits bound what the store accepts.
type Limits struct {
	MaxFiles    int // files, visible or not
	MaxFileSize int // bytes per file
	MaxNameLen  int // bytes per name
}

// DefaultLimits are used for zero fields of the Limits given to New.
var DefaultLimits = Limits{MaxFiles: 64, MaxFileSize: 64 << 10, MaxNameLen: 255}

// ChangeKind says what happened to a name.
type ChangeKind int

const (
	Added    ChangeKind = iota // the name became visible, as inode Ino
	Modified                   // inode Ino's content changed in place: only a writer's commit (Replace)
	Removed                    // the name no longer shows inode Ino; an Added may follow with a new one (Hide)
	Replaced                   // the name now has a new inode (Put): like a rename over it
)

// Change is one event given to listeners.
type Change struct {
	Kind ChangeKind
	Name string
	Ino  uint64
	Old  uint64 // Replaced: the inode the name had
}

// Store is safe for concurrent use.
type Store struct {
	limits    Limits
	now       func() time.Time
	listeners atomic.Pointer[[]func(Change)] // copied on write: read without a lock

	mu         sync.Mutex       // guards everything below
	byName     map[string]*file // every file, visible or not
	byIno      map[uint64]*file
	lastIno    uint64 // inode numbers are never reused
	lastID     uint64 // token ids are never reused
	lastChange uint64 // orders changes (file.changed)
	closed     bool   // after Close nothing is accepted
}

// file is one name. Its content holds only shown lines.
type file struct {
	name    string
	ino     uint64
	mtime   time.Time
	changed uint64         // order of the last change among all files (mtime can run ahead of the clock)
	content *secmem.Buffer // nil when empty
	tokens  []tokenLine    // the token lines in content, in order
	hidden  []Info         // tokens cut out of this name, newest last
	emptied bool           // hiding took its last token: the file is not shown
}

type tokenLine struct {
	id         uint64
	start, end int // the token's bytes in content
	tok        *token.Token
}

func (f *file) bytes() []byte {
	if f.content == nil {
		return nil
	}
	return f.content.Bytes()
}

// visible: a file is shown unless hiding took its last token.
func (f *file) visible() bool { return !f.emptied }

func (f *file) attr() Attr { return Attr{Ino: f.ino, Size: len(f.bytes()), Mtime: f.mtime} }

func (f *file) wipe() {
	f.content.Wipe()
	f.content = nil
	f.tokens = nil
}

// New returns an empty store.
func New(l Limits) *Store {
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultLimits.MaxFiles
	}
	if l.MaxFileSize <= 0 {
		l.MaxFileSize = DefaultLimits.MaxFileSize
	}
	if l.MaxNameLen <= 0 {
		l.MaxNameLen = DefaultLimits.MaxNameLen
	}
	return &Store{
		limits: l,
		now:    time.Now,
		byName: make(map[string]*file),
		byIno:  make(map[uint64]*file),
		// Inode 1 is the directory.
		lastIno: 1,
	}
}

// Limits returns the limits in force.
func (s *Store) Limits() Limits { return s.limits }

// OnChange registers f to be called after every change, outside the store's
// lock, in the goroutine that made the change.
func (s *Store) OnChange(f func(Change)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var fs []func(Change)
	if old := s.listeners.Load(); old != nil {
		fs = append(fs, *old...)
	}
	fs = append(fs, f)
	s.listeners.Store(&fs)
}

func (s *Store) notify(changes []Change) {
	fs := s.listeners.Load()
	if fs == nil {
		return
	}
	for _, c := range changes {
		for _, f := range *fs {
			f(c)
		}
	}
}
