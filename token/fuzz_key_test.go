package token

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzKeyFile feeds arbitrary key file content and key names to the key
// reader: ReadKeyFile returns exactly what a private file holds (or says
// why not, never quoting it), DeriveKey is a pure function of the bytes and
// of whether the key is the pool's, a token signed with the derived key
// verifies through KeyDir, and no key name reaches a file outside the key
// directory.
func FuzzKeyFile(f *testing.F) {
	for _, k := range []struct{ folder, name string }{{"keys", "POOL"}, {"keys", "AP"}, {"store-cred", "POOL"}, {"keys-rotated", "POOL"}} {
		f.Add(k.name, rawKeyFile(f, k.folder, k.name))
	}
	for _, kid := range []string{"", "..", ".", "../outside", "a/b", "POOL\x00", "outside", "/etc/passwd"} {
		f.Add(kid, []byte("password\n"))
	}
	f.Add("POOL", []byte{})
	f.Add("AP", []byte{0})
	f.Add("AP", make([]byte, maxKeyFileSize+1))

	f.Fuzz(func(t *testing.T, kid string, file []byte) {
		base := t.TempDir()
		dir := filepath.Join(base, "keys")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		// A key next to the key directory that no key name may reach.
		outside := []byte("not a key of this directory")
		if err := os.WriteFile(filepath.Join(base, "outside"), outside, 0o600); err != nil {
			t.Fatal(err)
		}

		checkDerive(t, kid, file)

		name := kid
		if kid == "" {
			name = PoolKeyName
		}
		if !plainName(name) {
			_, err := KeyDir{Dir: dir, WantUID: -1}.Key(kid)
			if !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("Key(%q), not a plain name: %v, want ErrUnknownKey", kid, err)
			}
			return
		}
		if len(name) > 255 { // NAME_MAX: no such file can exist
			_, err := KeyDir{Dir: dir, WantUID: -1}.Key(kid)
			if !errors.Is(err, ErrUnknownKey) && !errors.Is(err, ErrKeyUnavailable) {
				t.Fatalf("Key of a %d-byte name: %v, want ErrUnknownKey or ErrKeyUnavailable", len(name), err)
			}
			return
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, file, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadKeyFile(path, os.Getuid())
		switch {
		case len(file) == 0 || len(file) > maxKeyFileSize:
			if err == nil {
				t.Fatalf("ReadKeyFile accepted a %d-byte file", len(file))
			}
		case err != nil:
			t.Fatalf("ReadKeyFile of a private %d-byte file: %v", len(file), err)
		case !bytes.Equal(got.Bytes(), file):
			t.Fatal("ReadKeyFile returned other bytes than the file holds")
		}
		got.Wipe()
		if err != nil {
			noKeyIn(t, err, path, file)
			return
		}

		kr := KeyDir{Dir: dir, WantUID: os.Getuid()}
		key, err := heapKey(kr.Key(kid))
		if err != nil {
			t.Fatalf("Key(%q): %v", kid, err)
		}
		if !bytes.Equal(key, DeriveKey(kid, file)) {
			t.Fatalf("Key(%q) is not DeriveKey of its file", kid)
		}
		raw, err := Sign(Claims{Issuer: "example.org", Subject: "a@example.org", Lifetime: time.Hour}, kid, key)
		if !utf8.ValidString(kid) {
			// JSON cannot carry the name: Sign must refuse rather than
			// name another key.
			if err == nil {
				t.Fatalf("Sign accepted kid %q, which is not UTF-8", kid)
			}
			return
		}
		if err != nil {
			t.Fatalf("Sign with kid %q: %v", kid, err)
		}
		if err := VerifyWith(raw, kr); err != nil {
			t.Fatalf("a token signed with the derived key does not verify: %v", err)
		}
		// The same file under another name derives another key (unless
		// both are pool names), so the token no longer verifies.
		other := "OTHER"
		if name == other {
			other = "OTHER2"
		}
		if err := os.Rename(path, filepath.Join(dir, other)); err != nil {
			t.Fatal(err)
		}
		if err := VerifyWith(raw, kr); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("after its key file went away: %v, want ErrUnknownKey", err)
		}

		// A mode that lets others read is refused, without quoting the key.
		path = filepath.Join(dir, other)
		if err := os.Chmod(path, 0o640); err != nil {
			t.Fatal(err)
		}
		_, err = ReadKeyFile(path, -1)
		if err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("a 0640 key file: %v, want a refusal saying chmod 600", err)
		}
		noKeyIn(t, err, path, file)
	})
}

// checkDerive checks DeriveKey on arbitrary bytes.
func checkDerive(t *testing.T, kid string, file []byte) {
	t.Helper()
	orig := bytes.Clone(file)
	key := DeriveKey(kid, file)
	if len(key) != 32 {
		t.Fatalf("DeriveKey gave %d bytes, want 32", len(key))
	}
	if !bytes.Equal(file, orig) {
		t.Fatal("DeriveKey changed its input")
	}
	if !bytes.Equal(key, DeriveKey(kid, file)) {
		t.Fatal("DeriveKey is not deterministic")
	}
	isPool := kid == "" || kid == PoolKeyName
	pool, plain := DeriveKey(PoolKeyName, file), DeriveKey("AP", file)
	if want := map[bool][]byte{true: pool, false: plain}[isPool]; !bytes.Equal(key, want) {
		t.Fatalf("DeriveKey(%q) depends on more than whether the key is the pool's", kid)
	}
	// The pool key is the doubled key: only the empty file gives both the same.
	if len(file) > 0 && bytes.Equal(pool, plain) {
		t.Fatal("the pool key derives like any other key")
	}
	if !bytes.Equal(plain, DeriveKey("AP", Scramble(Unscramble(file)))) {
		t.Fatal("Scramble does not undo Unscramble")
	}
}

// noKeyIn fails if an error message quotes the key file (the path it names
// aside).
func noKeyIn(t *testing.T, err error, path string, file []byte) {
	t.Helper()
	msg := strings.ReplaceAll(err.Error(), path, "")
	if s := strings.TrimSpace(string(file)); len(s) >= 12 && strings.Contains(msg, s) {
		t.Fatalf("the error quotes the key file: %v", err)
	}
}
