package validate

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// maxKeyFiles bounds the key files of a snapshot (their derived keys are
// held in locked memory); a kid past it is unknown.
const maxKeyFiles = 32

// Keys checks signatures with key files the agent can read (personal pools,
// tests), against a snapshot of them: the files as they were at the last
// Apply (the agent applies only readings that two reads
// keywatch.Confirm apart agree on). So a key file that disappears or
// changes for a moment costs no token, and every change that counts moves
// Generation.
//
// A token of kid POOL when there is no usable pool key, or of a kid whose
// file cannot be used (owner, mode, size), cannot be told; a token of a kid
// with no file is unknown-key.
type Keys struct {
	Dir token.KeyDir

	mu  sync.RWMutex // guards set and gen
	set *KeySet      // nil until the first Load or check
	gen uint64
}

// KeySet is one reading of the key files; its keys are zeroed by Wipe.
type KeySet struct {
	keys map[string]*secmem.Buffer // kid -> derived key; the pool key as token.PoolKeyName
	bad  map[string]string         // kid -> why its file cannot be used
}

func (*Keys) Name() string { return KeyDir }

func (k *Keys) CheckKey(ctx context.Context, raw []byte, t *token.Token) (token.Reason, error) {
	if t == nil {
		var err error
		if t, err = token.Parse(raw); err != nil {
			return token.Malformed, nil
		}
	}
	kid := t.Kid
	if kid == "" {
		kid = token.PoolKeyName
	}
	k.Load()
	k.mu.RLock()
	defer k.mu.RUnlock()
	if why, bad := k.set.bad[kid]; bad {
		return "", fmt.Errorf("%w: %s", ErrCannotTell, why)
	}
	key, ok := k.set.keys[kid]
	switch {
	case !ok && kid == token.PoolKeyName:
		return "", fmt.Errorf("%w: no pool key file", ErrCannotTell)
	case !ok:
		return token.UnknownKey, nil
	}
	err := token.Verify(raw, key.Bytes())
	switch r := token.ReasonOf(err); {
	case err == nil:
		return token.Valid, nil
	case errors.Is(err, token.ErrRotatedKey), errors.Is(err, token.ErrMalformed):
		return r, nil
	default:
		return "", fmt.Errorf("%w: %v", ErrCannotTell, err)
	}
}

// Load reads the key files if no snapshot is held yet.
func (k *Keys) Load() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.set == nil {
		k.set = k.read()
	}
}

// Generation counts the changes of the key files that counted (Apply).
func (k *Keys) Generation() uint64 {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.gen
}

// Read reads the key files now, for Apply (keywatch.Settled applies a
// reading only once two reads Confirm apart agree).
func (k *Keys) Read() *KeySet { return k.read() }

// Apply takes s as the snapshot if it differs from the one held, and
// reports whether it did (the generation moved). A first snapshot is no
// change. s is the Keys' own from then on, or zeroed.
func (k *Keys) Apply(s *KeySet) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.set != nil && SameKeys(k.set, s) {
		s.Wipe()
		return false
	}
	old := k.set
	k.set = s
	if old != nil {
		k.gen++
		old.Wipe()
	}
	return old != nil
}

// Close zeroes the snapshot.
func (k *Keys) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.set != nil {
		k.set.Wipe()
		k.set = &KeySet{}
	}
}

// read reads every key file: the pool key (Dir.PoolFile, else Dir/POOL)
// and the other files of Dir. A missing directory reads as no keys.
func (k *Keys) read() *KeySet {
	s := &KeySet{keys: map[string]*secmem.Buffer{}, bad: map[string]string{}}
	var names []string
	if entries, err := os.ReadDir(k.Dir.Dir); err == nil {
		for _, e := range entries {
			n := e.Name()
			// Dot files are a copy's temporary files; with a pool key
			// file elsewhere, Dir/POOL is not the pool key.
			if strings.HasPrefix(n, ".") || (n == token.PoolKeyName && k.Dir.PoolFile != "") {
				continue
			}
			names = append(names, n)
		}
	} else if !errors.Is(err, fs.ErrNotExist) && k.Dir.Dir != "" {
		s.bad[token.PoolKeyName] = fmt.Sprintf("cannot read the key directory %s: %v", k.Dir.Dir, err)
	}
	slices.Sort(names)
	if len(names) > maxKeyFiles {
		names = names[:maxKeyFiles]
	}
	if k.Dir.PoolFile != "" {
		names = append(names, token.PoolKeyName)
	}
	for _, kid := range names {
		path := filepath.Join(k.Dir.Dir, kid)
		if kid == token.PoolKeyName && k.Dir.PoolFile != "" {
			path = k.Dir.PoolFile
		}
		file, err := token.ReadKeyFile(path, k.Dir.WantUID)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			s.bad[kid] = err.Error()
			continue
		}
		key := token.DeriveKey(kid, file)
		clear(file)
		if key == nil {
			s.bad[kid] = "cannot derive a key from " + path
			continue
		}
		buf, err := secmem.From(key)
		clear(key)
		if err != nil {
			s.bad[kid] = err.Error()
			continue
		}
		s.keys[kid] = buf
	}
	return s
}

// Wipe zeroes the keys of s.
func (s *KeySet) Wipe() {
	for _, b := range s.keys {
		b.Wipe()
	}
	s.keys = nil
}

// SameKeys reports whether a and b hold the same keys (compared in
// constant time) and the same unusable files.
func SameKeys(a, b *KeySet) bool {
	if len(a.keys) != len(b.keys) || !maps.Equal(a.bad, b.bad) {
		return false
	}
	same := true
	for kid, ka := range a.keys {
		kb, ok := b.keys[kid]
		if !ok || subtle.ConstantTimeCompare(ka.Bytes(), kb.Bytes()) != 1 {
			same = false
		}
	}
	return same
}
