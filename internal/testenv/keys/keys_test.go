package keys

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/token"
)

// A token signed from a key file verifies with that key directory, and not
// after the key is replaced.
func TestSignFromInstalledKey(t *testing.T) {
	dir := t.TempDir()
	pool := filepath.Join(dir, token.PoolKeyName)
	if err := Install(pool, NewFile(), -1, -1); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(pool)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("installed key: %v, %v; want mode 0600", st.Mode(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("Install left %d files, want the key alone", len(ents))
	}
	tok, err := SignFrom(dir, token.PoolKeyName, token.Claims{Issuer: "test.example", Subject: "a@test.example", Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	kd := token.KeyDir{Dir: dir, WantUID: os.Getuid()}
	if err := token.VerifyWith(tok, kd); err != nil {
		t.Fatalf("the token does not verify: %v", err)
	}
	if err := Install(pool, NewFile(), -1, -1); err != nil {
		t.Fatal(err)
	}
	if err := token.VerifyWith(tok, kd); err == nil {
		t.Fatal("the token verifies with a new key")
	}
}

// Write keeps the file's inode; Install replaces it.
func TestWriteInPlaceInstallByRename(t *testing.T) {
	path := filepath.Join(t.TempDir(), "AP")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	ino := func() uint64 {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("mode %v, want 0600", st.Mode())
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	before, _ := os.Stat(path)
	if err := Write(path, NewFile()); err != nil {
		t.Fatal(err)
	}
	if ino() != before.Sys().(*syscall.Stat_t).Ino {
		t.Fatal("Write replaced the file")
	}
	inPlace := ino()
	if err := Install(path, NewFile(), -1, -1); err != nil {
		t.Fatal(err)
	}
	if ino() == inPlace {
		t.Fatal("Install wrote in place")
	}
}
