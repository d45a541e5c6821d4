package store

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

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
// An existing file is replaced by a new inode (see the package doc).
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

// Replace sets the content of file ino (the filesystem's write path),
// keeping its name and inode: the one change made in place (see the package
// doc). The file may be one that is not shown: its writer is still writing.
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
// rejected: in place, as no reader has seen that content yet.
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
