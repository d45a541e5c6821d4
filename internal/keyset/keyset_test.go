package keyset

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

func randomKey(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 64)
	rand.Read(b)
	return b
}

func writeKey(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// load is Load with the owner check off; a directory error fails the
// test. The set is wiped when the test ends.
func load(t *testing.T, o Options) *Set {
	t.Helper()
	o.Owner = -1
	s, err := Load(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Wipe)
	return s
}

func TestLoad(t *testing.T) {
	live := secmem.Live()
	dir := t.TempDir()
	pool, ap := randomKey(t), randomKey(t)
	writeKey(t, filepath.Join(dir, "POOL"), pool, 0o600)
	writeKey(t, filepath.Join(dir, "AP"), ap, 0o600)
	writeKey(t, filepath.Join(dir, "OPEN"), randomKey(t), 0o644)
	writeKey(t, filepath.Join(dir, "EMPTY"), nil, 0o600)
	if err := os.Mkdir(filepath.Join(dir, "SUB"), 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := Load(Options{Dir: dir, Owner: -1})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Names(); !slices.Equal(got, []string{"AP", "POOL"}) || s.Len() != 2 {
		t.Fatalf("keys %v, want AP and POOL", got)
	}
	for kid, file := range map[string][]byte{"POOL": pool, "": pool, "AP": ap} {
		key, why := s.Key(kid)
		if want := token.DeriveKey(kid, file); !bytes.Equal(key, want) || why != "" {
			t.Errorf("Key(%q): not the derived key (%q)", kid, why)
		}
	}
	for kid, want := range map[string]string{
		"OPEN":  "chmod 600",
		"EMPTY": "is empty",
		"SUB":   "is a directory",
	} {
		if key, why := s.Key(kid); key != nil || !strings.Contains(why, want) {
			t.Errorf("Key(%q) = %v, %q; want no key and %q", kid, key != nil, why, want)
		}
	}
	if key, why := s.Key("NONE"); key != nil || why != "" {
		t.Errorf("a kid with no file: %q, want unknown (no key, no problem)", why)
	}
	// Problems name refused files (not the subdirectory), never key bytes.
	var paths []string
	for _, p := range s.Problems() {
		paths = append(paths, filepath.Base(p.Path))
		if strings.Contains(p.Msg, string(ap)) || strings.Contains(p.Msg, string(pool)) {
			t.Fatal("a problem holds key bytes")
		}
	}
	slices.Sort(paths)
	if !slices.Equal(paths, []string{"EMPTY", "OPEN"}) {
		t.Fatalf("problems about %v, want EMPTY and OPEN", paths)
	}
	if secmem.Live() != live+2 {
		t.Fatalf("%d locked buffers for 2 keys", secmem.Live()-live)
	}
	s.Wipe()
	s.Wipe()
	if key, _ := s.Key("AP"); key != nil || s.Len() != 0 || secmem.Live() != live {
		t.Fatalf("after Wipe: a key, or %d buffers left", secmem.Live()-live)
	}
}

func TestPoolKey(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	inDir, elsewhere := randomKey(t), randomKey(t)
	writeKey(t, filepath.Join(dir, "POOL"), inDir, 0o600)
	poolFile := filepath.Join(other, "signing")
	writeKey(t, poolFile, elsewhere, 0o600)
	// The pool key file elsewhere is POOL; dir/POOL is not used.
	s := load(t, Options{Dir: dir, PoolFile: poolFile})
	if key, _ := s.Key("POOL"); !bytes.Equal(key, token.DeriveKey("POOL", elsewhere)) || !slices.Equal(s.Names(), []string{"POOL"}) {
		t.Fatalf("POOL is not the pool key file (keys %v)", s.Names())
	}
	// A missing pool key: its tokens cannot be judged; other kids can.
	os.Remove(poolFile)
	writeKey(t, filepath.Join(dir, "AP"), randomKey(t), 0o600)
	s = load(t, Options{Dir: dir, PoolFile: poolFile})
	if key, why := s.Key(""); key != nil || !strings.Contains(why, poolFile+" does not exist") {
		t.Fatalf("missing pool key: %q", why)
	}
	if key, _ := s.Key("AP"); key == nil {
		t.Fatal("AP beside a missing pool key")
	}
}

func TestDirectory(t *testing.T) {
	// Gone: named kids are unknown; POOL cannot be judged.
	gone := filepath.Join(t.TempDir(), "gone")
	s, err := Load(Options{Dir: gone, Owner: -1})
	if !errors.Is(err, os.ErrNotExist) || s == nil {
		t.Fatalf("a missing directory: %v", err)
	}
	if _, why := s.Key("AP"); why != "" {
		t.Fatalf("named kid in a missing directory: %q, want unknown", why)
	}
	if _, why := s.Key("POOL"); why == "" {
		t.Fatal("POOL in a missing directory: no problem")
	}
	// There but not listable (here: not a directory): nothing named can be
	// judged.
	file := filepath.Join(t.TempDir(), "file")
	writeKey(t, file, randomKey(t), 0o600)
	s, err = Load(Options{Dir: file, PoolFile: filepath.Join(t.TempDir(), "POOL"), Owner: -1})
	if err == nil {
		t.Fatal("a password directory that is a file: no error")
	}
	if _, why := s.Key("AP"); !strings.Contains(why, "cannot list") {
		t.Fatalf("named kid, directory not listable: %q", why)
	}
	if len(s.Problems()) == 0 {
		t.Fatal("no problem reported for the directory")
	}
}

func TestMaxAndRead(t *testing.T) {
	dir := t.TempDir()
	for _, kid := range []string{"A", "B", "C", "POOL"} {
		writeKey(t, filepath.Join(dir, kid), randomKey(t), 0o600)
	}
	s := load(t, Options{Dir: dir, Max: 2})
	if s.Len() != 2 {
		t.Fatalf("%d keys held, Max 2", s.Len())
	}
	refused := 0
	for _, kid := range []string{"A", "B", "C"} {
		if _, why := s.Key(kid); strings.Contains(why, "more than 2 key files") {
			refused++
		}
	}
	if refused != 2 { // POOL is read first, then one of A, B, C
		t.Fatalf("%d kids refused beyond Max, want 2", refused)
	}
	// Read decides what a file holds (verifyd adds HTCondor's safe-path
	// rule there).
	var read []string
	s = load(t, Options{Dir: dir, Read: func(path string) (*secmem.Buffer, error) {
		read = append(read, filepath.Base(path))
		if filepath.Base(path) == "B" {
			return nil, errors.New("not safe")
		}
		return token.ReadKeyFile(path, -1)
	}})
	if _, why := s.Key("B"); why != "not safe" || s.Len() != 3 || len(read) != 4 {
		t.Fatalf("Read hook: %q, %d keys, read %v", why, s.Len(), read)
	}
}

func TestSameAndDiff(t *testing.T) {
	dir := t.TempDir()
	pool, ap := randomKey(t), randomKey(t)
	writeKey(t, filepath.Join(dir, "POOL"), pool, 0o600)
	writeKey(t, filepath.Join(dir, "AP"), ap, 0o600)
	a := load(t, Options{Dir: dir})
	b := load(t, Options{Dir: dir})
	if !Same(a, b) || !Same(nil, nil) || Same(a, nil) {
		t.Fatal("two readings of the same files differ")
	}
	if x, y, z := Diff(a, b); len(x)+len(y)+len(z) != 0 {
		t.Fatalf("Diff of the same files: %v %v %v", x, y, z)
	}
	// Replaced, added, removed.
	writeKey(t, filepath.Join(dir, "POOL"), randomKey(t), 0o600)
	writeKey(t, filepath.Join(dir, "NEW"), randomKey(t), 0o600)
	os.Remove(filepath.Join(dir, "AP"))
	c := load(t, Options{Dir: dir})
	added, removed, changed := Diff(a, c)
	if !slices.Equal(added, []string{"NEW"}) || !slices.Equal(removed, []string{"AP"}) || !slices.Equal(changed, []string{"POOL"}) || Same(a, c) {
		t.Fatalf("Diff: added %v removed %v changed %v", added, removed, changed)
	}
	if added, _, _ := Diff(nil, c); !slices.Equal(added, []string{"NEW", "POOL"}) {
		t.Fatalf("Diff from nothing: %v", added)
	}
	// The same keys but a file caught half written (empty) is not the
	// Same reading: the settle rule waits for it.
	writeKey(t, filepath.Join(dir, "HALF"), nil, 0o600)
	d := load(t, Options{Dir: dir})
	if x, y, z := Diff(c, d); len(x)+len(y)+len(z) != 0 || Same(c, d) {
		t.Fatal("an unusable file does not make a different reading")
	}
}
