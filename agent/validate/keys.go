package validate

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/tokend/tokend/internal/keyset"
	"github.com/tokend/tokend/token"
)

// Keys checks signatures with key files the agent can read (personal pools,
// tests), against a snapshot of them (a keyset.Set): the files as they were
// at the last Apply. The agent applies only readings that two reads
// keywatch.Confirm apart agree on, so a key file that disappears or changes
// for a moment costs no token, and every change that counts moves
// Generation.
//
// A token of kid POOL when there is no usable pool key, or of a kid whose
// file cannot be used (owner, mode, size), cannot be told; a token of a kid
// with no file is unknown-key.
type Keys struct {
	Dir token.KeyDir

	mu  sync.RWMutex // guards set and gen
	set *keyset.Set  // nil until the first Load or check
	gen uint64
}

func (*Keys) Name() string { return KeyDir }

func (k *Keys) CheckKey(ctx context.Context, raw []byte, t *token.Token) (token.Reason, error) {
	if t == nil {
		var err error
		if t, err = token.Parse(raw); err != nil {
			return token.Malformed, nil
		}
	}
	k.Load()
	k.mu.RLock()
	defer k.mu.RUnlock()
	key, unusable := k.set.Key(t.Kid)
	switch {
	case unusable != "":
		return "", fmt.Errorf("%w: %s", ErrCannotTell, unusable)
	case key == nil:
		return token.UnknownKey, nil
	}
	err := token.Verify(raw, key)
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
		k.set = k.Read()
	}
}

// Read reads the key files now, for Apply.
func (k *Keys) Read() *keyset.Set {
	s, _ := keyset.Load(keyset.Options{Dir: k.Dir.Dir, PoolFile: k.Dir.PoolFile, Owner: k.Dir.WantUID})
	return s
}

// Apply takes s as the snapshot if it differs from the one held, and
// reports whether it did (the generation moved). A first snapshot is no
// change. s is the Keys' own from then on, or zeroed.
func (k *Keys) Apply(s *keyset.Set) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.set != nil && keyset.Same(k.set, s) {
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

// Generation counts the changes of the key files that counted (Apply).
func (k *Keys) Generation() uint64 {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.gen
}

// Close zeroes the snapshot.
func (k *Keys) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.set.Wipe()
}
