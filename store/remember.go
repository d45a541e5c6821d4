package store

import (
	"cmp"
	"slices"

	"github.com/tokend/tokend/token"
)

// The bound on remembered tokens, store-wide: past either, the oldest
// hidden goes first (zeroed, with a log line).
const (
	MaxRemembered      = 16
	MaxRememberedBytes = 8 << 10 // whole lines, terminators included
)

// Remembered is a hidden token whose bytes the store keeps, for re-checking
// at key changes (see the package doc, "Reversible hiding").
type Remembered struct {
	Name   string
	ID     uint64
	Token  token.Token
	Reason token.Reason // token.RotatedKey or token.NotYetValid
	Epoch  uint64       // the key epoch it was hidden at or last missed at
	Misses int          // key changes in which it did not verify (Missed)
}

// Mark records the verdict of a shown token that stays shown (r does not
// Hide: token.Valid or token.UnknownKey), for `tokend list`. It reports
// whether the token is shown and r was recorded.
func (s *Store) Mark(id uint64, r token.Reason) bool {
	if r.Hides() {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, i := s.lineLocked(id, true)
	if f == nil {
		return false
	}
	f.lines[i].reason = r
	return true
}

// Restore puts a remembered token back: the same bytes, at the same place
// in its file, under the file's current name. The file gets a new inode
// (Replaced, or Added when it was not shown). It reports whether id was
// remembered and is now shown.
func (s *Store) Restore(id uint64) bool {
	s.mu.Lock()
	f, i := s.lineLocked(id, false)
	if f == nil {
		s.mu.Unlock()
		return false
	}
	l := &f.lines[i]
	// Out of the list first, so that ReclaimOne cannot zero it while a
	// larger buffer is found for the content.
	if !s.takeRec(l.rec) {
		s.mu.Unlock()
		return false
	}
	if err := s.insertLocked(f, i, l.rec.buf.Bytes()); err != nil {
		s.putBackRec(l.rec)
		s.mu.Unlock()
		return false
	}
	l.rec.buf.Wipe()
	l.rec, l.reason, l.epoch, l.misses = nil, token.Valid, 0, 0
	was, old := f.visible(), f.ino
	f.emptied = false
	s.touchLocked(f)
	s.renumberLocked(f)
	c := Change{Kind: Added, Name: f.name, Ino: f.ino}
	if was {
		c = Change{Kind: Replaced, Name: f.name, Ino: f.ino, Old: old}
	}
	s.mu.Unlock()
	s.notify([]Change{c})
	return true
}

// Missed records that remembered token id did not verify at key epoch
// epoch. Only a later epoch than the one it was hidden at or last missed at
// counts; the second miss zeroes it. It reports whether the token was
// zeroed.
//
// A token remembered as not yet valid whose time came and whose signature
// does not verify is from then on a rotated-key one, hidden at this epoch
// with no miss yet: it gets the same two key changes as any other, and
// "cannot tell" never brings it back as a not-yet-valid one would be.
func (s *Store) Missed(id uint64, epoch uint64) (zeroed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, i := s.lineLocked(id, false)
	if f == nil {
		return false
	}
	l := &f.lines[i]
	if l.reason != token.RotatedKey {
		l.reason, l.rec.reason = token.RotatedKey, token.RotatedKey
		l.epoch, l.misses = epoch, 0
		return false
	}
	if epoch <= l.epoch {
		return false
	}
	l.epoch = epoch
	if l.misses++; l.misses < 2 {
		return false
	}
	s.forgetLocked(f, i, l.reason)
	return true
}

// Forget zeroes remembered token id, which `tokend list --all` then shows
// as hidden for r (say token.Expired: it expired while remembered). It
// reports whether id was remembered.
func (s *Store) Forget(id uint64, r token.Reason) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, i := s.lineLocked(id, false)
	if f == nil {
		return false
	}
	s.forgetLocked(f, i, r)
	return true
}

// Remembered lists the remembered tokens, oldest hidden first, without
// their bytes (WithRemembered gives those).
func (s *Store) Remembered() []Remembered {
	s.mu.Lock()
	defer s.mu.Unlock()
	type ordered struct {
		seq uint64
		r   Remembered
	}
	var out []ordered
	for _, f := range s.byName {
		s.pruneLocked(f)
		for _, l := range f.lines {
			if !l.shown() {
				out = append(out, ordered{l.rec.seq, Remembered{Name: f.name, ID: l.id, Token: *l.tok, Reason: l.reason, Epoch: l.epoch, Misses: l.misses}})
			}
		}
	}
	slices.SortFunc(out, func(a, b ordered) int { return cmp.Compare(a.seq, b.seq) })
	rs := make([]Remembered, len(out))
	for i, o := range out {
		rs[i] = o.r
	}
	return rs
}

// WithRemembered calls f with the bytes of remembered token id (the token
// alone, without its line's whitespace) and reports whether id is
// remembered. raw is valid only during f. f runs under the store's lock: it
// must neither call the store nor block; to check the token against
// something slow, copy it (secmem.From) and check the copy outside.
func (s *Store) WithRemembered(id uint64, f func(raw []byte)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	file, i := s.lineLocked(id, false)
	if file == nil {
		return false
	}
	l := file.lines[i]
	s.rmu.Lock()
	if l.rec.buf == nil {
		s.rmu.Unlock()
		return false
	}
	// Pinned, ReclaimOne passes it by while f runs (f may allocate).
	l.rec.pinned = true
	s.rmu.Unlock()
	defer func() {
		s.rmu.Lock()
		l.rec.pinned = false
		s.rmu.Unlock()
	}()
	f(l.rec.buf.Bytes()[l.tokOff : l.tokOff+l.tokLen])
	return true
}

// ReclaimOne zeroes the oldest remembered token, to free locked memory for
// live ones: register it with secmem.SetReclaim. It reports whether it
// zeroed one. It takes only the lock of the remembered list, never the
// store's, so it may run while the store's lock is held.
func (s *Store) ReclaimOne() bool {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.dropOldestLocked("no locked memory left for the shown tokens")
}

// addRec puts a newly remembered line on the list and keeps the bound.
func (s *Store) addRec(r *rec) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.rem = append(s.rem, r)
	s.remBytes += r.buf.Len()
	for len(s.rem) > MaxRemembered || s.remBytes > MaxRememberedBytes {
		if !s.dropOldestLocked("more hidden tokens than the store remembers") {
			break
		}
	}
}

// dropOldestLocked zeroes the oldest remembered line that no one is
// reading. Its file notices at its next look (pruneLocked). rmu is held.
func (s *Store) dropOldestLocked(why string) bool {
	i := slices.IndexFunc(s.rem, func(r *rec) bool { return !r.pinned })
	if i < 0 {
		return false
	}
	r := s.rem[i]
	s.rem = slices.Delete(s.rem, i, i+1)
	s.remBytes -= r.buf.Len()
	r.buf.Wipe()
	r.buf = nil
	s.logger().Warn("zeroed a hidden token that could have come back: "+why, "token", r.tok, "reason", string(r.reason))
	return true
}

// takeRec takes r off the list, keeping its bytes; false if it was zeroed
// meanwhile.
func (s *Store) takeRec(r *rec) bool {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if r.buf == nil {
		return false
	}
	s.rem = slices.DeleteFunc(s.rem, func(o *rec) bool { return o == r })
	s.remBytes -= r.buf.Len()
	return true
}

// putBackRec undoes takeRec, in hide order.
func (s *Store) putBackRec(r *rec) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	i, _ := slices.BinarySearchFunc(s.rem, r.seq, func(o *rec, seq uint64) int { return cmp.Compare(o.seq, seq) })
	s.rem = slices.Insert(s.rem, i, r)
	s.remBytes += r.buf.Len()
}

// zeroRec zeroes a remembered line's bytes and takes it off the list.
func (s *Store) zeroRec(r *rec) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if r.buf == nil {
		return
	}
	s.rem = slices.DeleteFunc(s.rem, func(o *rec) bool { return o == r })
	s.remBytes -= r.buf.Len()
	r.buf.Wipe()
	r.buf = nil
}

// forgetLocked zeroes remembered line i of f, keeping why for r.
func (s *Store) forgetLocked(f *file, i int, r token.Reason) {
	l := f.lines[i]
	s.zeroRec(l.rec)
	s.keepWhyLocked(f, l.id, l.tok, r)
	f.lines = slices.Delete(f.lines, i, i+1)
}

// forgetAllLocked zeroes every remembered line of f: new content for its
// name, or the file goes.
func (s *Store) forgetAllLocked(f *file) {
	for i := len(f.lines) - 1; i >= 0; i-- {
		if !f.lines[i].shown() {
			s.forgetLocked(f, i, f.lines[i].reason)
		}
	}
}

// pruneLocked drops the lines of f whose bytes ReclaimOne or the bound
// zeroed, keeping why.
func (s *Store) pruneLocked(f *file) {
	for i := len(f.lines) - 1; i >= 0; i-- {
		if l := f.lines[i]; !l.shown() && s.zeroed(l.rec) {
			s.keepWhyLocked(f, l.id, l.tok, l.reason)
			f.lines = slices.Delete(f.lines, i, i+1)
		}
	}
}

func (s *Store) zeroed(r *rec) bool {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return r.buf == nil
}

// Pending reports whether file ino was made by Create and has had no
// commit yet: it is not shown, listed or found by name.
func (s *Store) Pending(ino uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byIno[ino]
	return f != nil && f.pending
}

// Abandon drops pending file ino (a refused or abandoned first write). It
// changes nothing else: a file of that name, shown or not, and its
// remembered tokens stay as they are. It reports whether ino was pending.
func (s *Store) Abandon(ino uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.byIno[ino]
	if f == nil || !f.pending {
		return false
	}
	s.dropLocked(f)
	return true
}
