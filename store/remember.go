package store

import (
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
	return false // seam
}

// Restore puts a remembered token back: the same bytes, at the same place
// in its file, under the file's current name. The file gets a new inode
// (Replaced, or Added when it was not shown). It reports whether id was
// remembered and is now shown.
func (s *Store) Restore(id uint64) bool {
	return false // seam
}

// Missed records that remembered token id did not verify at key epoch
// epoch. Only a later epoch than the one it was hidden at or last missed at
// counts; the second miss zeroes it. It reports whether the token was
// zeroed.
func (s *Store) Missed(id uint64, epoch uint64) (zeroed bool) {
	return false // seam
}

// Forget zeroes remembered token id, which `tokend list --all` then shows
// as hidden for r (say token.Expired: it expired while remembered). It
// reports whether id was remembered.
func (s *Store) Forget(id uint64, r token.Reason) bool {
	return false // seam
}

// Remembered lists the remembered tokens, oldest hidden first, without
// their bytes (WithRemembered gives those).
func (s *Store) Remembered() []Remembered {
	return nil // seam
}

// WithRemembered calls f with the bytes of remembered token id (the token
// alone, without its line's whitespace) and reports whether id is
// remembered. raw is valid only during f. f runs under the store's lock: it
// must neither call the store nor block; to check the token against
// something slow, copy it (secmem.From) and check the copy outside.
func (s *Store) WithRemembered(id uint64, f func(raw []byte)) bool {
	return false // seam
}

// ReclaimOne zeroes the oldest remembered token, to free locked memory for
// live ones: register it with secmem.SetReclaim. It reports whether it
// zeroed one. It takes only the lock of the remembered list, never the
// store's, so it may run while the store's lock is held.
func (s *Store) ReclaimOne() bool {
	return false // seam
}

// Pending reports whether file ino was made by Create and has had no
// commit yet: it is not shown, listed or found by name.
func (s *Store) Pending(ino uint64) bool {
	return false // seam
}

// Abandon drops pending file ino (a refused or abandoned first write). It
// changes nothing else: a file of that name, shown or not, and its
// remembered tokens stay as they are. It reports whether ino was pending.
func (s *Store) Abandon(ino uint64) bool {
	return false // seam
}
