package store

import (
	"slices"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// maxHidden bounds the zeroed tokens remembered per file (their claims
// only, for `tokend list --all`).
const maxHidden = 8

// Hide hides the shown token id for reason r, at key epoch epoch (the
// token's pool's key generation; 0 when it has none). A token hidden for a
// reversible reason (r.Reversible()) is remembered while the bound and
// locked memory allow; any other is zeroed. It reports whether the token
// was still shown. What is left of its file becomes a new inode and the old
// one is gone (see the package doc). A file left with no token shown is no
// longer shown; it keeps its inode, which only its writer, if it has one,
// may still use.
func (s *Store) Hide(id uint64, r token.Reason, epoch uint64) bool {
	s.mu.Lock()
	f, i := s.lineLocked(id, true)
	if f == nil {
		s.mu.Unlock()
		return false
	}
	old := f.ino
	s.hideLocked(f, i, r, epoch)
	changes := []Change{{Kind: Removed, Name: f.name, Ino: old}}
	if f.visible() {
		s.renumberLocked(f)
		changes = append(changes, Change{Kind: Added, Name: f.name, Ino: f.ino})
	}
	s.mu.Unlock()
	s.notify(changes)
	return true
}

// lineLocked finds token id among the committed files: a shown one if
// shown is set, else a remembered one whose bytes are still kept.
func (s *Store) lineLocked(id uint64, shown bool) (*file, int) {
	for _, f := range s.byName {
		if !shown {
			s.pruneLocked(f)
		}
		for i := range f.lines {
			if f.lines[i].id == id && f.lines[i].shown() == shown {
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

// hideLocked cuts shown line i out of f's content, remembering its bytes
// if r is reversible and memory allows, zeroing them otherwise. It reports
// false when there was no memory for the smaller content, and the whole
// file was hidden instead.
func (s *Store) hideLocked(f *file, i int, r token.Reason, epoch uint64) bool {
	l := &f.lines[i]
	var kept *secmem.Buffer
	if r.Reversible() {
		// A token that cannot be kept in locked memory is zeroed: it is
		// never kept where it could be swapped out.
		kept, _ = secmem.FromLocked(f.bytes()[l.off : l.off+l.size])
	}
	if err := s.cutLocked(f, i); err != nil {
		// No memory for a smaller copy: hide the whole file rather than
		// keep showing the token.
		kept.Wipe()
		s.hideAllLocked(f, r)
		return false
	}
	if kept != nil {
		s.lastHide++
		l.rec = &rec{buf: kept, seq: s.lastHide, tok: l.tok, reason: r}
		l.reason, l.epoch, l.misses = r, epoch, 0
		s.addRec(l.rec)
	} else {
		s.keepWhyLocked(f, l.id, l.tok, r)
		f.lines = slices.Delete(f.lines, i, i+1)
	}
	f.emptied = !f.anyShown()
	s.touchLocked(f)
	return true
}

// cutLocked takes shown line i out of f's content, into a new, smaller
// buffer, zeroing the old one; the lines after it move up.
func (s *Store) cutLocked(f *file, i int) error {
	l := f.lines[i]
	b := f.bytes()
	var next *secmem.Buffer
	if n := len(b) - l.size; n > 0 {
		var err error
		if next, err = secmem.New(n); err != nil {
			return err
		}
		nb := next.Bytes()
		copy(nb, b[:l.off])
		copy(nb[l.off:], b[l.off+l.size:])
	}
	f.content.Wipe()
	f.content = next
	for j := i + 1; j < len(f.lines); j++ {
		f.lines[j].off -= l.size
	}
	return nil
}

// insertLocked puts line back into f's content as line i (remembered), into
// a new, larger buffer, zeroing the old one; the lines after it move down.
func (s *Store) insertLocked(f *file, i int, line []byte) error {
	l := f.lines[i]
	b := f.bytes()
	next, err := secmem.New(len(b) + len(line))
	if err != nil {
		return err
	}
	nb := next.Bytes()
	copy(nb, b[:l.off])
	copy(nb[l.off:], line)
	copy(nb[l.off+len(line):], b[l.off:])
	f.content.Wipe()
	f.content = next
	for j := i + 1; j < len(f.lines); j++ {
		f.lines[j].off += l.size
	}
	return nil
}

// hideAllLocked hides every token of f and zeroes its content.
func (s *Store) hideAllLocked(f *file, r token.Reason) {
	s.forgetAllLocked(f)
	for _, l := range f.lines {
		s.keepWhyLocked(f, l.id, l.tok, r)
	}
	f.wipe()
	f.emptied = true
	s.touchLocked(f)
}

// keepWhyLocked keeps why a token was zeroed, for `tokend list --all`:
// once per token (a writer's second write brings the same token again), the
// most recent maxHidden.
func (s *Store) keepWhyLocked(f *file, id uint64, t *token.Token, r token.Reason) {
	if !slices.ContainsFunc(f.hidden, func(in Info) bool { return in.Token == *t && in.Reason == r }) {
		f.hidden = append(f.hidden, Info{Name: f.name, ID: id, Token: *t, Reason: r, Hidden: true})
	}
	if len(f.hidden) > maxHidden {
		f.hidden = slices.Delete(f.hidden, 0, len(f.hidden)-maxHidden)
	}
}
