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
package store

import (
	"errors"
	"fmt"
	"slices"
	"strings"
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

// Attr describes a visible file.
type Attr struct {
	Ino   uint64
	Size  int
	Mtime time.Time
}

// ChangeKind says what happened to a name.
type ChangeKind int

const (
	Added    ChangeKind = iota // the name became visible
	Modified                   // a visible file's content changed (same inode)
	Removed                    // the name is no longer visible
	Replaced                   // the name now has a new inode (Put): like a rename over it
)

// Change is one event given to listeners.
type Change struct {
	Kind ChangeKind
	Name string
	Ino  uint64
	Old  uint64 // Replaced: the inode the name had
}

// Info is the metadata of one token, visible or hidden. It never holds the
// token itself.
type Info struct {
	Name   string       // file name
	ID     uint64       // stable for the token's life in the store
	Token  token.Token  // claims
	Reason token.Reason // token.Valid while visible
	Hidden bool
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

// maxHidden bounds the hidden tokens remembered per file.
const maxHidden = 8

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

// CheckName reports whether name may be a token file name.
func (s *Store) CheckName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return ErrBadName
	case strings.ContainsAny(name, "/\x00"):
		return ErrBadName
	case len(name) > s.limits.MaxNameLen:
		return ErrNameTooLong
	}
	return nil
}

// Lookup returns the attributes of a visible file.
func (s *Store) Lookup(name string) (Attr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byName[name]
	if f == nil || !f.visible() {
		return Attr{}, false
	}
	return f.attr(), true
}

// Stat returns the name and attributes of a visible file by inode.
func (s *Store) Stat(ino uint64) (string, Attr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byIno[ino]
	if f == nil || !f.visible() {
		return "", Attr{}, false
	}
	return f.name, f.attr(), true
}

// Entry is one visible file in a listing.
type Entry struct {
	Name string
	Attr Attr
}

// List returns the visible files sorted by name.
func (s *Store) List() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Entry, 0, len(s.byName))
	for _, f := range s.byName {
		if f.visible() {
			out = append(out, Entry{f.name, f.attr()})
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ReadAt copies content of a visible file at off into dest.
func (s *Store) ReadAt(ino uint64, dest []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byIno[ino]
	if f == nil || !f.visible() || off < 0 {
		return 0, ErrNotFound
	}
	b := f.bytes()
	if off >= int64(len(b)) {
		return 0, nil
	}
	return secmem.Copy(dest, b[off:]), nil
}

// Content returns a copy of a file's content in a secmem buffer, which the
// caller must Wipe. It works on files that are not shown too (a writer may
// still be writing one whose tokens were all hidden).
func (s *Store) Content(ino uint64) (*secmem.Buffer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byIno[ino]
	if f == nil {
		return nil, ErrNotFound
	}
	return secmem.From(f.bytes())
}

// Has reports whether a file of that name exists, shown or not.
func (s *Store) Has(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byName[name] != nil
}

// Exists returns the name of the file with inode ino, shown or not.
func (s *Store) Exists(ino uint64) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byIno[ino]
	if f == nil {
		return "", false
	}
	return f.name, true
}

// Create makes an empty file. It fails with ErrExists if a visible file has
// that name; an invisible one (all tokens hidden) is replaced.
func (s *Store) Create(name string) (Attr, error) {
	if err := s.CheckName(name); err != nil {
		return Attr{}, err
	}
	s.mu.Lock()
	if old := s.byName[name]; old != nil && old.visible() {
		s.mu.Unlock()
		return Attr{}, ErrExists
	}
	f, err := s.newFileLocked(name)
	if err != nil {
		s.mu.Unlock()
		return Attr{}, err
	}
	f.mtime = s.now()
	s.lastChange++
	f.changed = s.lastChange
	a := f.attr()
	s.mu.Unlock()
	s.notify([]Change{{Kind: Added, Name: name, Ino: a.Ino}})
	return a, nil
}

// newFileLocked adds an empty file, replacing an invisible one of that name
// and evicting the oldest invisible files when at the file limit.
func (s *Store) newFileLocked(name string) (*file, error) {
	if s.closed {
		return nil, ErrClosed
	}
	var hidden []Info
	if old := s.byName[name]; old != nil {
		hidden = old.hidden // still worth showing in `tokend list --all`
		s.dropLocked(old)
	}
	for len(s.byName) >= s.limits.MaxFiles {
		victim := s.oldestInvisibleLocked()
		if victim == nil {
			return nil, ErrTooMany
		}
		s.dropLocked(victim)
	}
	s.lastIno++
	f := &file{name: name, ino: s.lastIno, hidden: hidden}
	s.byName[name] = f
	s.byIno[f.ino] = f
	return f, nil
}

func (s *Store) oldestInvisibleLocked() *file {
	var victim *file
	for _, f := range s.byName {
		if !f.visible() && (victim == nil || f.changed < victim.changed) {
			victim = f
		}
	}
	return victim
}

func (s *Store) dropLocked(f *file) {
	f.wipe()
	delete(s.byName, f.name)
	delete(s.byIno, f.ino)
}

// Put sets the content of name, creating the file if needed. The content
// must be a well-formed token file (token.ParseFile) within the size limit;
// otherwise nothing changes. The content is copied; the caller may wipe its
// own copy. check, if not nil, is asked about every token before it is shown
// (the quick local checks); a token it rejects is hidden at once.
//
// An existing file is replaced by a new one (a new inode), as a careful
// writer replaces a file by renaming over it: a reader half way through the
// old file keeps reading the old file, never a mix of the two.
func (s *Store) Put(name string, content []byte, check func(*token.Token) token.Reason) (Attr, error) {
	if err := s.CheckName(name); err != nil {
		return Attr{}, err
	}
	parsed, err := s.parse(content, check)
	if err != nil {
		return Attr{}, err
	}
	s.mu.Lock()
	var old uint64
	if f := s.byName[name]; f != nil && f.visible() {
		old = f.ino
	}
	f, err := s.newFileLocked(name)
	if err != nil {
		s.mu.Unlock()
		parsed.wipe()
		return Attr{}, err
	}
	s.setLocked(f, parsed)
	a, vis := f.attr(), f.visible()
	s.mu.Unlock()
	switch {
	case vis && old != 0:
		s.notify([]Change{{Kind: Replaced, Name: name, Ino: a.Ino, Old: old}})
	case vis:
		s.notify([]Change{{Kind: Added, Name: name, Ino: a.Ino}})
	case old != 0:
		s.notify([]Change{{Kind: Removed, Name: name, Ino: old}})
	}
	return a, nil
}

// Touch marks file ino as changed (a write that is not complete yet) without
// changing its content: its mtime moves on, so that a reader half way
// through it sees it was modified.
func (s *Store) Touch(ino uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.byIno[ino]; f != nil {
		s.touchLocked(f)
	}
}

// touchLocked records a change to f.
func (s *Store) touchLocked(f *file) {
	f.mtime = s.later(f.mtime)
	s.lastChange++
	f.changed = s.lastChange
}

// later is the mtime of a change to a file whose mtime was prev: now, but
// at least a second after prev. HTCondor compares whole seconds when it
// checks that a file was not modified during reading; every change must
// show at that resolution.
func (s *Store) later(prev time.Time) time.Time {
	now := s.now()
	if next := prev.Add(time.Second); !prev.IsZero() && now.Before(next) {
		return next
	}
	return now
}

// Replace sets the content of file ino (the filesystem's write path),
// keeping its name and inode. The file may be one that is not shown: its
// writer is still writing.
func (s *Store) Replace(ino uint64, content []byte, check func(*token.Token) token.Reason) (Attr, error) {
	parsed, err := s.parse(content, check)
	if err != nil {
		return Attr{}, err
	}
	s.mu.Lock()
	f := s.byIno[ino]
	if f == nil {
		s.mu.Unlock()
		parsed.wipe()
		return Attr{}, ErrNotFound
	}
	was := f.visible()
	s.setLocked(f, parsed)
	a, vis, name := f.attr(), f.visible(), f.name
	s.mu.Unlock()
	switch {
	case vis && was:
		s.notify([]Change{{Kind: Modified, Name: name, Ino: ino}})
	case vis:
		s.notify([]Change{{Kind: Added, Name: name, Ino: ino}})
	case was:
		s.notify([]Change{{Kind: Removed, Name: name, Ino: ino}})
	}
	return a, nil
}

// parsed is content checked outside the lock, ready to be installed.
type parsed struct {
	content *secmem.Buffer
	tokens  []tokenLine
	reasons []token.Reason // per token, from the quick check
}

func (p *parsed) wipe() { p.content.Wipe() }

func (s *Store) parse(content []byte, check func(*token.Token) token.Reason) (*parsed, error) {
	if len(content) > s.limits.MaxFileSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooBig, len(content), s.limits.MaxFileSize)
	}
	if slices.Contains(content, 0) {
		return nil, fmt.Errorf("%w: contains a NUL byte", token.ErrMalformed)
	}
	lines, err := token.ParseFile(content)
	if err != nil {
		return nil, err
	}
	p := &parsed{}
	for _, l := range lines {
		if l.Kind != token.TokenLine {
			continue
		}
		r := token.Valid
		if check != nil {
			r = check(l.Token)
		}
		p.tokens = append(p.tokens, tokenLine{start: l.Start, end: l.End, tok: l.Token})
		p.reasons = append(p.reasons, r)
	}
	if len(content) > 0 {
		if p.content, err = secmem.From(content); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// setLocked installs parsed content into f, then hides what the quick check
// rejected.
func (s *Store) setLocked(f *file, p *parsed) {
	f.wipe()
	f.emptied = false
	f.content = p.content
	f.tokens = p.tokens
	for i := range f.tokens {
		s.lastID++
		f.tokens[i].id = s.lastID
	}
	s.touchLocked(f)
	for i := len(f.tokens) - 1; i >= 0; i-- {
		if r := p.reasons[i]; r != token.Valid {
			s.hideLocked(f, i, r)
		}
	}
}

// hideLocked cuts token i out of f's content, zeroing its bytes.
func (s *Store) hideLocked(f *file, i int, r token.Reason) {
	t := f.tokens[i]
	s.remember(f, t, r)
	b := f.bytes()
	// The whole line goes, terminator included.
	from := t.start
	for from > 0 && b[from-1] != '\n' {
		from--
	}
	to := t.end
	for to < len(b) && b[to] != '\n' {
		to++
	}
	if to < len(b) {
		to++
	}
	cut := to - from
	var next *secmem.Buffer
	if n := len(b) - cut; n > 0 {
		var err error
		if next, err = secmem.New(n); err != nil {
			// No memory for a smaller copy: hide the whole file rather
			// than keep showing the token.
			for _, other := range f.tokens {
				s.remember(f, other, r)
			}
			f.wipe()
			f.emptied = true
			s.touchLocked(f)
			return
		}
		nb := next.Bytes()
		secmem.Copy(nb, b[:from])
		secmem.Copy(nb[from:], b[to:])
	}
	f.content.Wipe()
	f.content = next
	f.tokens = slices.Delete(f.tokens, i, i+1)
	f.emptied = len(f.tokens) == 0
	for j := i; j < len(f.tokens); j++ {
		f.tokens[j].start -= cut
		f.tokens[j].end -= cut
	}
	s.touchLocked(f)
}

// remember keeps why a token was hidden, for `tokend list --all`: once per
// token (a writer's second write brings the same token again), the most
// recent maxHidden.
func (s *Store) remember(f *file, t tokenLine, r token.Reason) {
	if !slices.ContainsFunc(f.hidden, func(in Info) bool { return in.Token == *t.tok && in.Reason == r }) {
		f.hidden = append(f.hidden, Info{Name: f.name, ID: t.id, Token: *t.tok, Reason: r, Hidden: true})
	}
	if len(f.hidden) > maxHidden {
		f.hidden = slices.Delete(f.hidden, 0, len(f.hidden)-maxHidden)
	}
}

// Hide hides the token with the given id for reason r. It reports whether
// the token was still shown.
func (s *Store) Hide(id uint64, r token.Reason) bool {
	s.mu.Lock()
	for _, f := range s.byName {
		for i, t := range f.tokens {
			if t.id != id {
				continue
			}
			s.hideLocked(f, i, r)
			name, ino, vis := f.name, f.ino, f.visible()
			s.mu.Unlock()
			if vis {
				s.notify([]Change{{Kind: Modified, Name: name, Ino: ino}})
			} else {
				s.notify([]Change{{Kind: Removed, Name: name, Ino: ino}})
			}
			return true
		}
	}
	s.mu.Unlock()
	return false
}

// Remove deletes a visible file and zeroes its content.
func (s *Store) Remove(name string) error {
	s.mu.Lock()
	f := s.byName[name]
	if f == nil || !f.visible() {
		s.mu.Unlock()
		return ErrNotFound
	}
	s.dropLocked(f)
	s.mu.Unlock()
	s.notify([]Change{{Kind: Removed, Name: name, Ino: f.ino}})
	return nil
}

// Rename moves a visible file to a new name, replacing a file there unless
// noReplace is set.
func (s *Store) Rename(from, to string, noReplace bool) error {
	if err := s.CheckName(to); err != nil {
		return err
	}
	s.mu.Lock()
	f := s.byName[from]
	if f == nil || !f.visible() {
		s.mu.Unlock()
		return ErrNotFound
	}
	if from == to {
		s.mu.Unlock()
		return nil
	}
	var changes []Change
	if old := s.byName[to]; old != nil {
		if noReplace && old.visible() {
			s.mu.Unlock()
			return ErrExists
		}
		if old.visible() {
			changes = append(changes, Change{Kind: Removed, Name: to, Ino: old.ino})
		}
		s.dropLocked(old)
	}
	delete(s.byName, from)
	f.name = to
	for i := range f.hidden {
		f.hidden[i].Name = to
	}
	s.byName[to] = f
	changes = append(changes, Change{Kind: Removed, Name: from, Ino: f.ino}, Change{Kind: Added, Name: to, Ino: f.ino})
	s.mu.Unlock()
	s.notify(changes)
	return nil
}

// Infos returns the metadata of every token, shown and hidden, sorted by
// file name then position.
func (s *Store) Infos() []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Info
	for _, f := range s.byName {
		for _, t := range f.tokens {
			out = append(out, Info{Name: f.name, ID: t.id, Token: *t.tok})
		}
		out = append(out, f.hidden...)
	}
	slices.SortStableFunc(out, func(a, b Info) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return int(a.ID - b.ID)
	})
	return out
}

// Candidate is a shown token handed out for validation. Raw is a copy the
// caller must Wipe.
type Candidate struct {
	Name  string
	ID    uint64
	Token token.Token
	Raw   *secmem.Buffer
}

// Candidates returns a copy of every shown token for checking outside the
// lock. Results are applied with Hide by ID, so a token replaced meanwhile is
// simply not found.
func (s *Store) Candidates() ([]Candidate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Candidate
	for _, f := range s.byName {
		b := f.bytes()
		for _, t := range f.tokens {
			raw, err := secmem.From(b[t.start:t.end])
			if err != nil {
				for _, c := range out {
					c.Raw.Wipe()
				}
				return nil, err
			}
			out = append(out, Candidate{Name: f.name, ID: t.id, Token: *t.tok, Raw: raw})
		}
	}
	return out, nil
}

// Close wipes the store and makes it refuse new files: the end of a session.
func (s *Store) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.Wipe()
}

// Wipe zeroes and drops every file.
func (s *Store) Wipe() {
	s.mu.Lock()
	var changes []Change
	for _, f := range s.byName {
		if f.visible() {
			changes = append(changes, Change{Kind: Removed, Name: f.name, Ino: f.ino})
		}
		s.dropLocked(f)
	}
	s.mu.Unlock()
	s.notify(changes)
}

// Len returns the number of visible files.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.byName {
		if f.visible() {
			n++
		}
	}
	return n
}
