// Package keyset reads a pool's signing keys the way HTCondor finds them
// (HTCONDOR.md "Signing keys"): every regular file in the password
// directory (SEC_PASSWORD_DIRECTORY) is the key of the kid named by its file
// name, and the pool key file (SEC_TOKEN_POOL_SIGNING_KEY_FILE) is the key
// of kid POOL. A [Set] is one such reading: the derived keys, in locked
// memory (secmem), and what is known about the kids whose key cannot be
// used. verifyd holds one, and so does the agent for validate.key_dir;
// both take a new one only once it has settled (keywatch.Settled, with
// [Same]).
//
// A Set never hands out a key file's bytes: they are read into locked
// memory and wiped as soon as the key is derived there (token.DeriveLocked:
// the unscrambled bytes, the HKDF key and the HMAC pads never leave locked
// memory either). Derived keys are compared in constant time.
package keyset

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// DefaultMax bounds how many keys a Set holds.
const DefaultMax = 4096

// Options says where the keys are and how to read them.
type Options struct {
	Dir      string // the password directory
	PoolFile string // the pool key file; "" means Dir/POOL
	// Owner is the uid that must own key files; -1 skips the check.
	Owner int
	// Max bounds the keys held; 0 means DefaultMax.
	Max int
	// Read reads one key file into a secmem buffer, which Load wipes; nil
	// means token.ReadKeyFile(path, Owner). Its errors say what to fix
	// and hold no key bytes; one wrapping fs.ErrNotExist means there is
	// no such file.
	Read func(path string) (*secmem.Buffer, error)
}

// Problem is a key file left out of a Set, for the caller's log. Kid is ""
// for the password directory itself. Msg says what to fix and holds no key
// bytes.
type Problem struct {
	Path, Kid, Msg string
}

// Set is one reading of the keys. Its methods are not safe for concurrent
// use with Wipe; the caller guards a Set it shares.
type Set struct {
	keys map[string]*secmem.Buffer // kid -> derived key
	// unusable maps a kid whose file is there but cannot be used
	// (refused for its owner or mode, not a regular file, empty,
	// unreadable, beyond Max), and POOL when the pool key is missing or
	// refused, to what is wrong. Tokens of these kids cannot be judged.
	unusable map[string]string
	// listErr, when not "", says why the password directory, which
	// exists, cannot be listed: whether a named key file exists is then
	// not known, and no named kid without a key can be judged.
	listErr  string
	pool     string
	problems []Problem
}

// Load reads and derives every key. A refused file is left out, recorded as
// unusable and reported among Problems; a key that cannot be put in
// locked memory is unusable too. The error is about the password directory
// itself (missing, not a directory, not listable); the Set holds what could
// be read, and is never nil.
func Load(o Options) (*Set, error) {
	dir := filepath.Clean(o.Dir)
	pool := o.PoolFile
	if pool == "" {
		pool = filepath.Join(dir, token.PoolKeyName)
	}
	pool = filepath.Clean(pool)
	maxKeys := o.Max
	if maxKeys <= 0 {
		maxKeys = DefaultMax
	}
	read := o.Read
	if read == nil {
		read = func(path string) (*secmem.Buffer, error) { return token.ReadKeyFile(path, o.Owner) }
	}
	s := &Set{keys: map[string]*secmem.Buffer{}, unusable: map[string]string{}, pool: pool}
	unusable := func(path, kid, msg string) {
		s.unusable[kid] = msg
		s.problems = append(s.problems, Problem{path, kid, msg})
	}
	load := func(path, kid string) {
		file, err := read(path)
		switch {
		case errors.Is(err, fs.ErrNotExist) && kid != token.PoolKeyName:
			return // removed since it was listed: an unknown kid
		case errors.Is(err, fs.ErrNotExist):
			s.unusable[kid] = fmt.Sprintf("the pool key file %s does not exist", path)
			s.problems = append(s.problems, Problem{path, kid, s.unusable[kid] + ": tokens with kid POOL cannot be judged until it appears"})
			return
		case err != nil:
			unusable(path, kid, err.Error())
			return
		}
		defer file.Wipe()
		if len(s.keys) >= maxKeys {
			unusable(path, kid, fmt.Sprintf("more than %d key files in %s; this one is left out", maxKeys, dir))
			return
		}
		b, err := token.DeriveLocked(kid, file.Bytes())
		if err != nil {
			unusable(path, kid, fmt.Sprintf("cannot derive the key of %s in locked memory: %v", path, err))
			return
		}
		s.keys[kid] = b
	}

	load(pool, token.PoolKeyName)
	ents, dirErr := os.ReadDir(dir)
	if dirErr != nil {
		// A directory that is gone holds no key files: tokens of named
		// kids are unknown-key. One that is there but cannot be listed
		// may hold them: those tokens cannot be judged.
		what := "cannot be judged"
		if errors.Is(dirErr, fs.ErrNotExist) {
			what = "are unknown-key"
		} else {
			s.listErr = fmt.Sprintf("cannot list the password directory %s: %v", dir, pathErr(dirErr))
		}
		s.problems = append(s.problems, Problem{dir, "", fmt.Sprintf("cannot list the password directory: %v: tokens of every kid but POOL %s until it is back", pathErr(dirErr), what)})
		return s, dirErr
	}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(dir, name)
		// kid POOL always means the pool key file; a file named POOL here
		// is that file, or is not used (as in HTCondor).
		if path == pool || name == token.PoolKeyName {
			continue
		}
		if e.IsDir() {
			// Not a key and not a problem (installers keep staging
			// directories here), but a token of that kid cannot be
			// judged.
			s.unusable[name] = path + " is a directory, not a key file"
			continue
		}
		load(path, name)
	}
	return s, nil
}

func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Key returns the derived key of kid ("" is POOL), valid until the Set is
// wiped. With no key, unusable says why tokens of kid cannot be judged, and
// is "" when kid is simply unknown (no key file of that name): then its
// tokens are unknown-key.
func (s *Set) Key(kid string) (key []byte, unusable string) {
	if kid == "" {
		kid = token.PoolKeyName
	}
	if b, ok := s.keys[kid]; ok {
		return b.Bytes(), ""
	}
	if why, ok := s.unusable[kid]; ok {
		return nil, why
	}
	switch {
	case kid == token.PoolKeyName:
		// Missing or refused: the collector recreates a missing POOL,
		// and a reader looking in the wrong place must not condemn every
		// token.
		return nil, "no usable pool key file " + s.pool
	case s.listErr != "":
		return nil, s.listErr
	}
	return nil, ""
}

// Len is the number of usable keys.
func (s *Set) Len() int { return len(s.keys) }

// Names returns the kids of the usable keys, sorted.
func (s *Set) Names() []string { return slices.Sorted(maps.Keys(s.keys)) }

// Problems returns the key files left out, in the order they were read.
func (s *Set) Problems() []Problem { return s.problems }

// Diff compares two sets' keys by kid and, for kids in both, by the derived
// bytes in constant time. Either set may be nil (no keys).
func Diff(old, cur *Set) (added, removed, changed []string) {
	var o, c map[string]*secmem.Buffer
	if old != nil {
		o = old.keys
	}
	if cur != nil {
		c = cur.keys
	}
	for kid, k := range c {
		was, found := o[kid]
		switch {
		case !found:
			added = append(added, kid)
		case subtle.ConstantTimeCompare(was.Bytes(), k.Bytes()) != 1:
			changed = append(changed, kid)
		}
	}
	for kid := range o {
		if _, found := c[kid]; !found {
			removed = append(removed, kid)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	slices.Sort(changed)
	return added, removed, changed
}

// Same reports whether two readings agree on everything: the same keys
// (compared in constant time) and the same kids that cannot be used, for
// the same reasons. keywatch.Settled takes a reading only when the next one
// is the Same.
func Same(a, b *Set) bool {
	if a == nil || b == nil {
		return a == b
	}
	added, removed, changed := Diff(a, b)
	return len(added)+len(removed)+len(changed) == 0 &&
		maps.Equal(a.unusable, b.unusable) && a.listErr == b.listErr
}

// Wipe zeroes every key; the Set holds none afterwards. Wiping twice, or a
// nil Set, is harmless.
func (s *Set) Wipe() {
	if s == nil {
		return
	}
	for kid, b := range s.keys {
		b.Wipe()
		delete(s.keys, kid)
	}
}
