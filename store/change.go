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

// Create makes an empty file, pending until its first commit (see the
// package doc, "Files being created"): only its inode can be used, and no
// change is reported. It fails with ErrExists if a visible file has that
// name; an invisible one stays as it is until the commit.
func (s *Store) Create(name string) (Attr, error) {
	if err := s.CheckName(name); err != nil {
		return Attr{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.byName[name]; old != nil && old.visible() {
		return Attr{}, ErrExists
	}
	if err := s.roomLocked(); err != nil {
		return Attr{}, err
	}
	s.lastIno++
	f := &file{name: name, ino: s.lastIno, pending: true, mtime: s.now()}
	s.byIno[f.ino] = f
	s.pending++
	s.lastChange++
	f.changed = s.lastChange
	return f.attr(), nil
}

// roomLocked makes room for one more file, evicting the oldest invisible
// files when at the file limit. Pending files count but are not evicted:
// their writers are still writing.
func (s *Store) roomLocked() error {
	if s.closed {
		return ErrClosed
	}
	for len(s.byName)+s.pending >= s.limits.MaxFiles {
		victim := s.oldestInvisibleLocked()
		if victim == nil {
			return ErrTooMany
		}
		s.dropLocked(victim)
	}
	return nil
}

// newFileLocked adds an empty file for new content of name, replacing any
// file of that name (its remembered tokens are zeroed, why they were hidden
// is kept) and making room.
func (s *Store) newFileLocked(name string) (*file, error) {
	if s.closed {
		return nil, ErrClosed
	}
	hidden := s.takeNameLocked(name)
	if err := s.roomLocked(); err != nil {
		return nil, err
	}
	s.lastIno++
	f := &file{name: name, ino: s.lastIno, hidden: hidden}
	s.byName[name] = f
	s.byIno[f.ino] = f
	return f, nil
}

// takeNameLocked drops the committed file of name, if any, for new
// content, and returns why its tokens were hidden: still worth showing in
// `tokend list --all`.
func (s *Store) takeNameLocked(name string) []Info {
	old := s.byName[name]
	if old == nil {
		return nil
	}
	s.forgetAllLocked(old)
	hidden := old.hidden
	s.dropLocked(old)
	return hidden
}

// oldestInvisibleLocked is the file to evict for room: the least recently
// changed of those not shown. A file that still holds remembered tokens is
// never evicted: making room for a new name (a create that may yet be
// refused) must not zero a token that may come back.
func (s *Store) oldestInvisibleLocked() *file {
	var victim *file
	for _, f := range s.byName {
		if !f.visible() && !f.anyRemembered() && (victim == nil || f.changed < victim.changed) {
			victim = f
		}
	}
	return victim
}

func (s *Store) dropLocked(f *file) {
	s.forgetAllLocked(f)
	f.wipe()
	if f.pending {
		s.pending--
	} else {
		delete(s.byName, f.name)
	}
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
// The first Replace of a pending file gives it its name, replacing the file
// that had it (Replaced, or Added).
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
	if f.pending {
		return s.commitLocked(f, parsed)
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

// commitLocked gives pending file f its name and first content, and
// unlocks.
func (s *Store) commitLocked(f *file, p *parsed) (Attr, error) {
	var old uint64
	if o := s.byName[f.name]; o != nil && o.visible() {
		old = o.ino
	}
	f.hidden = s.takeNameLocked(f.name)
	f.pending = false
	s.pending--
	s.byName[f.name] = f
	s.setLocked(f, p)
	a, vis := f.attr(), f.visible()
	s.mu.Unlock()
	switch {
	case vis && old != 0:
		s.notify([]Change{{Kind: Replaced, Name: f.name, Ino: a.Ino, Old: old}})
	case vis:
		s.notify([]Change{{Kind: Added, Name: f.name, Ino: a.Ino}})
	case old != 0:
		s.notify([]Change{{Kind: Removed, Name: f.name, Ino: old}})
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
	lines   []tokenLine
	reasons []token.Reason // per token line, from the quick check
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
		// The whole line, terminator included: what hiding cuts out.
		from, to := l.Start, l.End
		for from > 0 && content[from-1] != '\n' {
			from--
		}
		for to < len(content) && content[to] != '\n' {
			to++
		}
		if to < len(content) {
			to++
		}
		p.lines = append(p.lines, tokenLine{tok: l.Token, off: from, size: to - from, tokOff: l.Start - from, tokLen: l.End - l.Start})
		p.reasons = append(p.reasons, r)
	}
	if len(content) > 0 {
		if p.content, err = secmem.From(content); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// setLocked installs parsed content into f, new content for its name: the
// file's remembered tokens are zeroed first. Then it hides what the quick
// check rejected, in place, as no reader has seen that content yet: a
// not-yet-valid token is remembered (key epoch 0), others are zeroed.
func (s *Store) setLocked(f *file, p *parsed) {
	s.forgetAllLocked(f)
	f.wipe()
	f.emptied = false
	f.content = p.content
	f.lines = p.lines
	for i := range f.lines {
		s.lastID++
		f.lines[i].id = s.lastID
	}
	s.touchLocked(f)
	for i := len(f.lines) - 1; i >= 0; i-- {
		switch r := p.reasons[i]; {
		case r.Hides():
			if !s.hideLocked(f, i, r, 0) {
				return // the whole file is hidden
			}
		case r != token.Valid:
			f.lines[i].reason = r
		}
	}
}

// Remove deletes a file and zeroes its content and remembered tokens. The
// file may be one that is not shown (every token hidden): `tokend rm NAME`
// forgets a name whose tokens are only remembered.
func (s *Store) Remove(name string) error {
	s.mu.Lock()
	f := s.byName[name]
	if f == nil {
		s.mu.Unlock()
		return ErrNotFound
	}
	vis := f.visible()
	s.dropLocked(f)
	s.mu.Unlock()
	if vis {
		s.notify([]Change{{Kind: Removed, Name: name, Ino: f.ino}})
	}
	return nil
}

// Rename moves a visible file, with its remembered tokens, to a new name,
// replacing a file there unless noReplace is set: new content for that
// name, so the replaced file's remembered tokens are zeroed.
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
	var hidden []Info
	if old := s.byName[to]; old != nil {
		if noReplace && old.visible() {
			s.mu.Unlock()
			return ErrExists
		}
		if old.visible() {
			changes = append(changes, Change{Kind: Removed, Name: to, Ino: old.ino})
		}
		hidden = s.takeNameLocked(to)
	}
	delete(s.byName, from)
	f.name = to
	for i := range f.hidden {
		f.hidden[i].Name = to
	}
	// Why the replaced file's tokens were hidden stays listed under the name.
	f.hidden = append(hidden, f.hidden...)
	f.hidden = f.hidden[max(0, len(f.hidden)-maxHidden):]
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

// Wipe zeroes and drops every file, remembered tokens and pending files
// included. A pending file is reported Removed too, under the name it was
// created with, so that its writer's draft goes with it.
func (s *Store) Wipe() {
	s.mu.Lock()
	var changes []Change
	for _, f := range s.byIno {
		if f.visible() || f.pending {
			changes = append(changes, Change{Kind: Removed, Name: f.name, Ino: f.ino})
		}
		s.dropLocked(f)
	}
	s.mu.Unlock()
	s.notify(changes)
}
