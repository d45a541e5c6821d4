package verifyd

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/tokend/tokend/internal/keywatch"
	"github.com/tokend/tokend/internal/safepath"
	"github.com/tokend/tokend/token"
)

// Timing of the key watcher (package keywatch: debounced, follows a
// replaced directory, reloads after an event overflow).
const (
	// resync reloads everything this often even without events: a safety
	// net for what inotify cannot report (a symlinked key whose target
	// changes, the parent of a watched directory replaced).
	resync = time.Minute
	// resyncNoWatch is the reload period when inotify is unavailable.
	resyncNoWatch = 2 * time.Second
	// maxKeys bounds how many key files are held.
	maxKeys = 4096
)

// keySet is what one reading of the key files found.
type keySet struct {
	// keys maps a kid to its derived key.
	keys map[string][]byte
	// unusable maps a kid whose file is there but cannot be used (refused
	// for its owner or mode, not a regular file, empty, unreadable, beyond
	// maxKeys), and POOL when the pool key is missing or refused, to what
	// is wrong. It never holds key bytes. verifyd cannot judge the tokens of
	// these kids: it answers 503 key-unavailable for them.
	unusable map[string]string
	// listErr, when not "", says why the password directory, which exists,
	// cannot be listed: then whether a named key file exists is not known,
	// and every named kid without a key is unusable too.
	listErr string
}

// readKeys reads and derives every key: each regular file in the password
// directory under its file name, and the pool key file as POOL. Refused
// files are logged (once per distinct problem), left out of keys and
// recorded in unusable. The error is about the password directory itself
// (missing, not a directory, not listable); what was read so far is
// returned with it.
func (s *Server) readKeys() (keySet, error) {
	ks := keySet{keys: map[string][]byte{}, unusable: map[string]string{}}
	seen := map[string]bool{}
	refuse := func(path, kid, msg string) {
		seen[path] = true
		if s.refused[path] == msg {
			return
		}
		s.refused[path] = msg
		s.log.Warn("key file left out", "path", path, "kid", kid, "problem", msg)
	}
	unusable := func(path, kid, msg string) {
		ks.unusable[kid] = msg
		refuse(path, kid, msg)
	}
	trust := safepath.Condor(s.owner)
	load := func(path, kid string) {
		// HTCondor's safe-path rule first: a symlink is followed only
		// through what root or condor alone can change.
		resolved, err := safepath.File(path, trust)
		var file []byte
		if err == nil {
			file, err = token.ReadKeyFile(resolved, s.owner)
		}
		switch {
		case errors.Is(err, fs.ErrNotExist) && kid != token.PoolKeyName:
			return // removed since it was listed: an unknown kid
		case errors.Is(err, fs.ErrNotExist):
			ks.unusable[kid] = fmt.Sprintf("the pool key file %s does not exist", path)
			refuse(path, kid, ks.unusable[kid]+": tokens with kid POOL get 503 key-unavailable until it appears")
			return
		case err != nil:
			unusable(path, kid, err.Error()) // the error says how to fix it, and holds no key bytes
			return
		}
		key := token.DeriveKey(kid, file)
		clear(file)
		if key == nil {
			unusable(path, kid, "cannot derive a key from "+path)
			return
		}
		if len(ks.keys) >= maxKeys {
			clear(key)
			unusable(path, kid, fmt.Sprintf("more than %d key files in %s; this one is left out", maxKeys, s.dir))
			return
		}
		delete(s.refused, path)
		ks.keys[kid] = key
	}

	load(s.pool, token.PoolKeyName)
	ents, dirErr := os.ReadDir(s.dir)
	if dirErr == nil {
		for _, e := range ents {
			name := e.Name()
			path := filepath.Join(s.dir, name)
			// kid POOL always means the pool key file; a file named
			// POOL here is that file, or is not used (as in HTCondor).
			if path == s.pool || name == token.PoolKeyName {
				continue
			}
			if e.IsDir() {
				// Not a key and not logged (installers keep staging
				// directories here), but a token of that kid cannot
				// be judged.
				ks.unusable[name] = path + " is a directory, not a key file"
				continue
			}
			load(path, name)
		}
	} else {
		// A directory that is gone holds no key files: tokens of named
		// kids are unknown-key. One that is there but cannot be listed
		// may hold them: those tokens cannot be judged.
		what := "get 503 key-unavailable"
		if errors.Is(dirErr, fs.ErrNotExist) {
			what = "get unknown-key"
		} else {
			ks.listErr = fmt.Sprintf("cannot list the password directory %s: %v", s.dir, pathErr(dirErr))
		}
		msg := fmt.Sprintf("cannot list the password directory: %v: tokens of every kid but POOL %s until it is back", pathErr(dirErr), what)
		refuse(s.dir, "", msg)
	}
	// Forget problems with files that are gone, so that they are logged
	// again if they come back.
	for path := range s.refused {
		if !seen[path] {
			delete(s.refused, path)
		}
	}
	return ks, dirErr
}

func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// reload reads every key again and installs the result if, and only if, it
// differs from the current set: then the generation goes up by one and
// every waiting long poll is woken. What is known about unusable key files
// is installed every time; it does not move the generation by itself (a key
// that becomes unusable, or usable again, leaves or joins the set, which
// does).
func (s *Server) reload() {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	ks, _ := s.readKeys()

	s.mu.Lock()
	s.unusable, s.listErr = ks.unusable, ks.listErr
	added, removed, changed := diffKeys(s.keys, ks.keys)
	if len(added)+len(removed)+len(changed) == 0 {
		s.mu.Unlock()
		zeroKeys(ks.keys)
		return
	}
	old := s.keys
	s.keys = ks.keys
	gen := s.gen.Add(1)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	zeroKeys(old)

	s.log.Info("signing keys changed", "generation", gen, "keys", sortedNames(ks.keys),
		"added", added, "removed", removed, "replaced", changed)
}

// diffKeys compares two key sets by name and, for names in both, by the
// derived bytes in constant time.
func diffKeys(old, cur map[string][]byte) (added, removed, changed []string) {
	for name, k := range cur {
		o, ok := old[name]
		switch {
		case !ok:
			added = append(added, name)
		case subtle.ConstantTimeCompare(o, k) != 1:
			changed = append(changed, name)
		}
	}
	for name := range old {
		if _, ok := cur[name]; !ok {
			removed = append(removed, name)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	slices.Sort(changed)
	return added, removed, changed
}

func zeroKeys(keys map[string][]byte) {
	for name, k := range keys {
		clear(k)
		delete(keys, name)
	}
}

func sortedNames(keys map[string][]byte) []string {
	names := make([]string, 0, len(keys))
	for name := range keys {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// watch follows the key files until ctx is done. It installs the watches
// first and then reloads, so a change made before the watches existed is
// not missed.
func (s *Server) watch(ctx context.Context) {
	w := keywatch.New(keywatch.Options{
		Dir: s.dir, PoolKey: s.pool,
		Resync: resync, Fallback: resyncNoWatch,
		Log: s.log,
	})
	s.reload()
	w.Run(ctx, s.reload)
}

// keyFor returns the current key of kid ("" is POOL). When there is none,
// unusable says why verifyd cannot judge the tokens of kid ("" when kid is
// simply unknown: no such key file). The caller holds s.mu for reading
// while it uses the key: a replaced key is zeroed under the write lock.
func (s *Server) keyFor(kid string) (key []byte, unusable string) {
	if kid == "" {
		kid = token.PoolKeyName
	}
	if k, ok := s.keys[kid]; ok {
		return k, ""
	}
	problem, ok := s.unusable[kid]
	switch {
	case ok:
	case kid == token.PoolKeyName:
		// Missing or refused: the collector recreates a missing POOL,
		// and a verifyd looking in the wrong place must not condemn
		// every token.
		problem = "no usable pool key file " + s.pool
	case s.listErr != "":
		problem = s.listErr
	default:
		return nil, ""
	}
	return nil, fmt.Sprintf("verifyd cannot use the key of kid %q, so it cannot judge this token: %s", kid, problem)
}

// Wipe zeroes every key; the server answers 503 key-unavailable
// afterwards. Serve wipes when it returns; call Wipe for a server that will
// not be served.
func (s *Server) Wipe() {
	s.mu.Lock()
	zeroKeys(s.keys)
	s.mu.Unlock()
}

func logKeys(keys map[string][]byte) slog.Attr { return slog.Any("keys", sortedNames(keys)) }
