package store

import (
	"slices"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// maxHidden bounds the hidden tokens remembered per file.
const maxHidden = 8

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
