package store

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// Attr describes a file.
type Attr struct {
	Ino     uint64
	Size    int
	Mtime   time.Time
	Pending bool // made by Create, not committed yet: no name can find it
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

// Creating reports whether a pending file (made by Create, not committed
// yet) has that name: a lookup that misses now may hit at its commit.
func (s *Store) Creating(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == 0 {
		return false
	}
	for _, f := range s.byIno {
		if f.pending && f.name == name {
			return true
		}
	}
	return false
}

// Stat returns the name and attributes of a visible or pending file by
// inode (a pending file's creator stats it through its descriptor).
func (s *Store) Stat(ino uint64) (string, Attr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byIno[ino]
	if f == nil || !f.visible() && !f.pending {
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

// ReadAt copies content of a visible or pending file at off into dest.
func (s *Store) ReadAt(ino uint64, dest []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byIno[ino]
	if f == nil || !f.visible() && !f.pending || off < 0 {
		return 0, ErrNotFound
	}
	b := f.bytes()
	if off >= int64(len(b)) {
		return 0, nil
	}
	return copy(dest, b[off:]), nil
}

// Content returns a copy of a file's content in a secmem buffer, which the
// caller must Wipe. It works on files that are not shown too (a writer may
// still be writing one whose tokens were all hidden, or a pending one).
func (s *Store) Content(ino uint64) (*secmem.Buffer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byIno[ino]
	if f == nil {
		return nil, ErrNotFound
	}
	return secmem.From(f.bytes())
}

// Has reports whether a committed file of that name exists, shown or not.
func (s *Store) Has(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byName[name] != nil
}

// Exists returns the name of the file with inode ino, shown, hidden or
// pending.
func (s *Store) Exists(ino uint64) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byIno[ino]
	if f == nil {
		return "", false
	}
	return f.name, true
}

// Missing returns those of inos that no file has, shown or not: one look
// under the lock for many inodes.
func (s *Store) Missing(inos []uint64) []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []uint64
	for _, ino := range inos {
		if s.byIno[ino] == nil {
			out = append(out, ino)
		}
	}
	return out
}

// Info is the metadata of one token, visible or hidden. It never holds the
// token itself.
type Info struct {
	Name   string       // file name
	ID     uint64       // stable for the token's life in the store
	Token  token.Token  // claims
	Reason token.Reason // shown: token.Valid or token.UnknownKey (Mark); hidden: why
	Hidden bool
	// Remembered: hidden, its bytes kept in locked memory; it may come
	// back (Restore).
	Remembered bool
}

// Infos returns the metadata of every token, shown, remembered and zeroed,
// sorted by file name then id.
func (s *Store) Infos() []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Info
	for _, f := range s.byName {
		s.pruneLocked(f)
		for _, l := range f.lines {
			out = append(out, Info{Name: f.name, ID: l.id, Token: *l.tok, Reason: l.reason, Hidden: !l.shown(), Remembered: !l.shown()})
		}
		for _, h := range f.hidden {
			// Once per token and reason: a writer's second write (the
			// newline after the token) brings a remembered token again.
			if !slices.ContainsFunc(f.lines, func(l tokenLine) bool { return !l.shown() && *l.tok == h.Token && l.reason == h.Reason }) {
				out = append(out, h)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b Info) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
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
		for _, l := range f.lines {
			if !l.shown() {
				continue
			}
			raw, err := secmem.From(b[l.off+l.tokOff : l.off+l.tokOff+l.tokLen])
			if err != nil {
				for _, c := range out {
					c.Raw.Wipe()
				}
				return nil, err
			}
			out = append(out, Candidate{Name: f.name, ID: l.id, Token: *l.tok, Raw: raw})
		}
	}
	return out, nil
}
