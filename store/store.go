// Package store keeps the token files of one token directory in memory.
//
// A file is a name with content: lines that are blank, comments or tokens,
// exactly as HTCondor reads them. Content lives in secmem buffers and is
// zeroed when it is replaced, removed or wiped. A token that fails
// validation is hidden: its line is cut out of the file's content, and only
// its claims are kept in view, so that `tokend list --all` can say why it is
// gone. A file whose tokens are all hidden is not visible.
//
// The store knows nothing of FUSE, sockets or key files. Whoever shows its
// content registers a listener with OnChange and is told, after the store's
// lock is released, which names appeared, changed or disappeared.
//
// # Reversible hiding
//
// What a hidden token's bytes become depends on why it was hidden
// (token.Reason.Reversible):
//   - rotated-key and not-yet-valid tokens may become good again (the key
//     reaches this host later, a rollback, time passing). Their lines are
//     remembered: kept in locked memory (secmem.NewLocked), out of the
//     directory, until Restore puts them back with the same bytes at the
//     same place, under the file's current name. Remembered tokens follow
//     their file through a rename.
//   - every other reason zeroes the bytes at once.
//
// A file's remembered tokens belong to its last commit: new content for the
// name (Put, the first Replace of a file made by Create, a writer's Replace,
// a rename over it, Remove) zeroes them first, so a token never comes back
// into content it was not part of. A Create, or a write that is refused or
// never completed, commits nothing and zeroes nothing: a failed
// `condor_token_fetch -token NAME` does not destroy the token it meant to
// replace. Remove (`tokend rm NAME`) accepts a name that has only hidden
// tokens.
//
// The bound: at most MaxRemembered (16) tokens and MaxRememberedBytes
// (8 KiB of lines) are remembered, store-wide; past either, the oldest
// hidden is zeroed first, with a log line. A remembered token is zeroed
// after two key changes in which it did not verify (Missed), and when it
// expires (Forget). Live tokens come before remembered ones for locked
// memory: the agent registers ReclaimOne with secmem.SetReclaim, so that
// when no locked memory is left the oldest remembered token is zeroed to
// make room, and a token that cannot be remembered in locked memory is
// zeroed, never kept in unlocked memory.
//
// # Files being created
//
// A file made by Create is pending until its first commit (Replace): it has
// an inode, which its creator writes, stats and truncates through, but no
// name yet. Lookup and List do not see it and no change is reported. The
// first commit gives it its name, replacing whatever file had it; Abandon
// drops it when the write is refused or abandoned, leaving nothing behind.
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
//   - Put (fetch, refresh, a legacy import) and Restore report Replaced: a
//     reader half way through the old inode may finish it from the kernel's
//     cache (its tokens are still good).
//   - Hide (expiry, key rotation, revocation) reports Removed for the old
//     inode, then Added for the new one if tokens are left: the hidden token
//     must not be read again, so the old inode's pages go at once and its
//     readers get ENOENT.
//
// A writer half way through such a file loses it (ENOENT), as after a
// rename over it. The one edit in place is Replace, a writer's own commit
// through the mount, to the inode that writer holds; fusefs/doc.go
// ("Writes") says what a reader racing it may see.
//
// # Locking
//
// Store.mu guards the files; rmu, taken after it, guards the list of
// remembered lines and their bytes. ReclaimOne takes rmu alone, so it may
// run inside any secmem allocation, even one made with mu held; nothing
// holding rmu allocates.
package store

import (
	"errors"
	"log/slog"
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

	log atomic.Pointer[slog.Logger]

	mu         sync.Mutex       // guards everything below but what rmu guards
	byName     map[string]*file // every committed file, visible or not
	byIno      map[uint64]*file // every file, pending ones too
	pending    int              // files made by Create and not committed yet
	lastIno    uint64           // inode numbers are never reused
	lastID     uint64           // token ids are never reused
	lastChange uint64           // orders changes (file.changed)
	lastHide   uint64           // orders remembered lines (rec.seq)
	closed     bool             // after Close nothing is accepted

	rmu      sync.Mutex // guards rem, remBytes and every rec's buf and pinned
	rem      []*rec     // remembered lines, oldest hidden first
	remBytes int
}

// file is one name. Its content holds only shown lines.
type file struct {
	name    string
	ino     uint64
	mtime   time.Time
	changed uint64         // order of the last change among all files (mtime can run ahead of the clock)
	content *secmem.Buffer // nil when empty
	lines   []tokenLine    // the token lines of the last commit, shown or remembered, in order
	hidden  []Info         // tokens zeroed, newest last
	emptied bool           // hiding took its last shown token: the file is not shown
	pending bool           // made by Create, not committed yet: it has no name in byName
}

// tokenLine is one token line of a file's last commit: shown (rec == nil)
// or remembered. A line is cut whole, terminator included.
type tokenLine struct {
	id             uint64
	tok            *token.Token
	off, size      int          // the line in content; remembered: where it goes back
	tokOff, tokLen int          // the token within the line
	reason         token.Reason // shown: Valid or UnknownKey (Mark); remembered: why hidden
	rec            *rec         // non-nil: hidden, its bytes remembered
	epoch          uint64       // remembered: the key epoch of the hide or the last miss
	misses         int
}

func (l *tokenLine) shown() bool { return l.rec == nil }

// rec holds a remembered line's bytes in locked memory.
type rec struct {
	buf    *secmem.Buffer // the whole line; nil once zeroed (rmu)
	pinned bool           // WithRemembered is reading it: not to be reclaimed (rmu)
	seq    uint64         // hide order
	tok    *token.Token   // for the log line when it is dropped
	reason token.Reason
}

func (f *file) bytes() []byte {
	if f.content == nil {
		return nil
	}
	return f.content.Bytes()
}

// visible: a committed file is shown unless hiding took its last token.
func (f *file) visible() bool { return !f.emptied && !f.pending }

// anyShown reports whether a token line of f is shown.
func (f *file) anyShown() bool {
	for i := range f.lines {
		if f.lines[i].shown() {
			return true
		}
	}
	return false
}

// anyRemembered reports whether a token line of f is hidden and remembered.
func (f *file) anyRemembered() bool {
	for i := range f.lines {
		if f.lines[i].rec != nil {
			return true
		}
	}
	return false
}

func (f *file) attr() Attr {
	return Attr{Ino: f.ino, Size: len(f.bytes()), Mtime: f.mtime, Pending: f.pending}
}

// wipe zeroes the content; remembered lines must be forgotten first
// (forgetAllLocked).
func (f *file) wipe() {
	f.content.Wipe()
	f.content = nil
	f.lines = nil
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

// SetLogger sets where the store says which remembered tokens it zeroed to
// keep its bound. The default discards.
func (s *Store) SetLogger(l *slog.Logger) { s.log.Store(l) }

func (s *Store) logger() *slog.Logger {
	if l := s.log.Load(); l != nil {
		return l
	}
	return slog.New(slog.DiscardHandler)
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
