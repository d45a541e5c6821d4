package store

import (
	"slices"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// maxHidden bounds the hidden tokens remembered per file.
const maxHidden = 8

// Hide hides the shown token id for reason r, at key epoch epoch (the
// token's pool's key generation; 0 when it has none). A token hidden for a
// reversible reason (r.Reversible()) is remembered while the bound and
// locked memory allow; any other is zeroed. It reports whether the token
// was still shown. What is left of its file becomes a new inode
// and the old one is gone (see the package doc). A file left with no token
// is no longer shown; it keeps its inode, which only its writer, if it has
// one, may still use.
func (s *Store) Hide(id uint64, r token.Reason, epoch uint64) bool {
	s.mu.Lock()
	f, i := s.tokenLocked(id)
	if f == nil {
		s.mu.Unlock()
		return false
	}
	old := f.ino
	s.hideLocked(f, i, r)
	changes := []Change{{Kind: Removed, Name: f.name, Ino: old}}
	if f.visible() {
		s.renumberLocked(f)
		changes = append(changes, Change{Kind: Added, Name: f.name, Ino: f.ino})
	}
	s.mu.Unlock()
	s.notify(changes)
	return true
}

// tokenLocked finds the shown token id: its file and position.
func (s *Store) tokenLocked(id uint64) (*file, int) {
	for _, f := range s.byName {
		for i, t := range f.tokens {
			if t.id == id {
				return f, i
			}
		}
	}
	return nil, 0
}

// renumberLocked gives f a new inode number and forgets the old one.
func (s *Store) renumberLocked(f *file) {
	delete(s.byIno, f.ino)
	s.lastIno++
	f.ino = s.lastIno
	s.byIno[f.ino] = f
}

// hideLocked cuts token i out of f's content into a new, smaller buffer,
// zeroing the old one.
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
		copy(nb, b[:from])
		copy(nb[from:], b[to:])
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
