package token

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestScramble(t *testing.T) {
	key := []byte("secret key bytes")
	file := Scramble(key)
	if bytes.Equal(file, key) {
		t.Fatal("Scramble changed nothing")
	}
	if want := byte('s' ^ 0xDE); file[0] != want || file[1] != 'e'^0xAD || file[2] != 'c'^0xBE || file[3] != 'r'^0xEF || file[4] != 'e'^0xDE {
		t.Errorf("wrong mask: % x", file[:5])
	}
	back := Unscramble(file)
	if !bytes.Equal(back, key) {
		t.Errorf("round trip: %q", back)
	}
	back[0] = 'X'
	if file[0] == 'X' || key[0] == 'X' {
		t.Error("Unscramble did not return a new slice")
	}
}

func TestDeriveKeyPoolDoubling(t *testing.T) {
	file := rawKeyFile(t, "keys", "POOL")
	pool := DeriveKey("POOL", file)
	named := DeriveKey("AP", file)
	if len(pool) != 32 || len(named) != 32 {
		t.Fatalf("key lengths %d, %d", len(pool), len(named))
	}
	if bytes.Equal(pool, named) {
		t.Error("POOL key not doubled: same key as a named key with the same bytes")
	}
	if !bytes.Equal(DeriveKey("", file), pool) {
		t.Error(`kid "" does not mean POOL`)
	}
	// Doubling is exactly k||k: a named key over the doubled bytes matches.
	k := Unscramble(file)
	if !bytes.Equal(DeriveKey("AP", Scramble(append(k, k...))), pool) {
		t.Error("POOL derivation is not HKDF over k||k")
	}
	orig := rawKeyFile(t, "keys", "POOL")
	if !bytes.Equal(file, orig) {
		t.Error("DeriveKey modified its input")
	}
}

func writeKey(t *testing.T, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "POOL")
	if err := os.WriteFile(p, rawKeyFile(t, "keys", "POOL"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask-proof
		t.Fatal(err)
	}
	return p
}

func TestReadKeyFile(t *testing.T) {
	uid := os.Getuid()
	good := writeKey(t, 0o600)
	b, err := ReadKeyFile(good, uid)
	if err != nil {
		t.Fatalf("0600: %v", err)
	}
	if !bytes.Equal(b.Bytes(), rawKeyFile(t, "keys", "POOL")) {
		t.Error("content differs")
	}
	b.Wipe()
	if b, err := ReadKeyFile(good, -1); err != nil {
		t.Errorf("wantUID -1: %v", err)
	} else {
		b.Wipe()
	}

	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, make([]byte, 64<<10+1), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		uid        int
		want       string
	}{
		{"group readable", writeKey(t, 0o640), uid, "must not be readable by group or others (mode 0640): chmod 600 "},
		{"world readable", writeKey(t, 0o644), uid, "(mode 0644): chmod 600 "},
		{"group writable", writeKey(t, 0o620), uid, "chmod 600"},
		{"wrong owner", good, uid + 1, "is owned by uid"},
		{"missing", filepath.Join(t.TempDir(), "none"), uid, "no such file"},
		{"directory", t.TempDir(), uid, "not a regular file"},
		{"fifo", fifo, uid, "not a regular file"},
		{"empty", empty, uid, "is empty"},
		{"too large", big, uid, "larger than 64 KiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := ReadKeyFile(tt.path, tt.uid)
			if err == nil {
				t.Fatalf("accepted: %d bytes", b.Len())
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if tt.name == "missing" && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("missing file error %v is not fs.ErrNotExist", err)
			}
		})
	}
}

func TestKeyDir(t *testing.T) {
	kd := keyDir(t, "keys")
	want := DeriveKey("POOL", rawKeyFile(t, "keys", "POOL"))
	for _, kid := range []string{"POOL", ""} {
		got, err := heapKey(kd.Key(kid))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("Key(%q) = %v", kid, err)
		}
	}
	if got, err := heapKey(kd.Key("AP")); err != nil || !bytes.Equal(got, DeriveKey("AP", rawKeyFile(t, "keys", "AP"))) {
		t.Errorf("Key(AP) = %v", err)
	}

	// PoolFile overrides Dir/POOL for the pool key only.
	rotated := keyDir(t, "keys-rotated")
	withPool := KeyDir{Dir: kd.Dir, PoolFile: filepath.Join(rotated.Dir, "POOL"), WantUID: -1}
	if got, _ := heapKey(withPool.Key("POOL")); !bytes.Equal(got, DeriveKey("POOL", rawKeyFile(t, "keys-rotated", "POOL"))) {
		t.Error("PoolFile not used")
	}
	if got, _ := heapKey(withPool.Key("AP")); !bytes.Equal(got, DeriveKey("AP", rawKeyFile(t, "keys", "AP"))) {
		t.Error("PoolFile used for AP")
	}

	for _, kid := range []string{"OLD", "../keys/POOL", "a/b", ".", "..", "x\x00"} {
		_, err := kd.Key(kid)
		if !errors.Is(err, ErrUnknownKey) || ReasonOf(err) != UnknownKey {
			t.Errorf("Key(%q) = %v, want ErrUnknownKey", kid, err)
		}
	}
	if _, err := (KeyDir{WantUID: -1}).Key("AP"); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("no Dir: %v", err)
	}

	if err := os.Chmod(filepath.Join(kd.Dir, "AP"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := kd.Key("AP")
	if !errors.Is(err, ErrKeyUnavailable) || ReasonOf(err) != UnknownKey || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("Key(AP) with mode 0644 = %v", err)
	}
	other := KeyDir{Dir: kd.Dir, WantUID: os.Getuid() + 1}
	if _, err := other.Key("POOL"); !errors.Is(err, ErrKeyUnavailable) {
		t.Errorf("wrong owner: %v", err)
	}
}
