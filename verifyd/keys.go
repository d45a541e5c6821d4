package verifyd

import (
	"context"
	"errors"
	"io/fs"
	"time"

	"github.com/tokend/tokend/internal/keyset"
	"github.com/tokend/tokend/internal/keywatch"
	"github.com/tokend/tokend/internal/safepath"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// Timing of the key watcher (package keywatch: settled, follows a replaced
// directory, reloads after an event overflow).
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

// readKeys reads and derives every key (package keyset): each regular file
// in the password directory under its file name, and the pool key file as
// POOL. The error is about the password directory itself (missing, not a
// directory, not listable); the set holds what could be read.
func (s *Server) readKeys() (*keyset.Set, error) {
	return keyset.Load(keyset.Options{Dir: s.dir, PoolFile: s.pool, Max: maxKeys, Read: s.readKey})
}

// readKey reads one key file the way HTCondor accepts one: by its
// safe-path rule first (a symlink is followed only through what root or
// condor alone can change), then as a key file. Its errors say how to fix
// the file and hold no key bytes.
func (s *Server) readKey(path string) (*secmem.Buffer, error) {
	resolved, err := safepath.File(path, safepath.Condor(s.owner))
	if err != nil {
		return nil, err
	}
	return token.ReadKeyFile(resolved, s.owner)
}

func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// logProblems logs the key files a reading left out, each distinct problem
// of a path once; a path whose problem is gone is forgotten, so that it is
// logged again if it comes back.
func (s *Server) logProblems(ks *keyset.Set) {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	seen := map[string]bool{}
	for _, p := range ks.Problems() {
		seen[p.Path] = true
		if s.refused[p.Path] == p.Msg {
			continue
		}
		s.refused[p.Path] = p.Msg
		s.log.Warn("key file left out", "path", p.Path, "kid", p.Kid, "problem", p.Msg)
	}
	for path := range s.refused {
		if !seen[path] {
			delete(s.refused, path)
		}
	}
}

// install takes a settled reading of the keys. It always replaces the
// current one (what is known about unusable key files may have changed),
// but the generation goes up by one, and every waiting long poll is woken,
// only when the set of derived keys differs: a key added, removed, or
// replaced with different bytes (a key that becomes unusable, or usable
// again, leaves or joins the set).
func (s *Server) install(ks *keyset.Set) {
	s.logProblems(ks)
	s.mu.Lock()
	added, removed, changed := keyset.Diff(s.set, ks)
	old := s.set
	s.set = ks
	if len(added)+len(removed)+len(changed) == 0 {
		s.mu.Unlock()
		old.Wipe()
		return
	}
	gen := s.gen.Add(1)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	old.Wipe()

	s.log.Info("signing keys changed", "generation", gen, "keys", ks.Names(),
		"added", added, "removed", removed, "replaced", changed)
}

// watch follows the key files until ctx is done, and installs each reading
// once it has settled (keywatch.Settled: two readings Confirm apart
// agree), so that a key file caught missing or half written for a moment
// never counts. The watches exist before the first reading, so a change
// made before them is not missed.
func (s *Server) watch(ctx context.Context) {
	w := keywatch.New(keywatch.Options{
		Dir: s.dir, PoolKey: s.pool,
		Resync: resync, Fallback: resyncNoWatch,
		Log: s.log,
	})
	read := func() *keyset.Set {
		ks, _ := s.readKeys() // the set says what the error means
		return ks
	}
	keywatch.Settled(ctx, w, read, keyset.Same, s.install, (*keyset.Set).Wipe)
}

// Wipe zeroes every key; the server answers 503 key-unavailable
// afterwards. Serve wipes when it returns; call Wipe for a server that will
// not be served.
func (s *Server) Wipe() {
	s.mu.Lock()
	s.set.Wipe()
	s.mu.Unlock()
}
