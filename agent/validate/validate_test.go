package validate

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokend/tokend/token"
)

func TestQuick(t *testing.T) {
	now := time.Unix(2_000_000_000, 0)
	c := &Checker{Margin: 30 * time.Second, TrustDomains: []string{"pool.example"}, Now: func() time.Time { return now }}
	for _, tc := range []struct {
		name string
		tok  token.Token
		want token.Reason
	}{
		{"good", token.Token{Iss: "pool.example", Exp: now.Unix() + 3600}, token.Valid},
		{"no expiry", token.Token{Iss: "pool.example"}, token.Valid},
		{"expired", token.Token{Iss: "pool.example", Exp: now.Unix() - 1}, token.Expired},
		{"within the margin", token.Token{Iss: "pool.example", Exp: now.Unix() + 10}, token.Expired},
		{"not yet valid", token.Token{Iss: "pool.example", Nbf: now.Unix() + 60}, token.NotYetValid},
		{"other issuer", token.Token{Iss: "evil.example"}, token.UntrustedIssuer},
	} {
		if got := c.Quick(&tc.tok); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := (&Checker{Now: c.Now}).Quick(&token.Token{Iss: "anything"}); got != token.Valid {
		t.Errorf("no trust domains configured: %q", got)
	}
}

// fakeKey is a key check with a fixed answer.
type fakeKey struct {
	name string
	r    token.Reason
	err  error
}

func (f fakeKey) Name() string { return f.name }
func (f fakeKey) CheckKey(context.Context, []byte, *token.Token) (token.Reason, error) {
	return f.r, f.err
}

// The first key check that can tell decides; one that cannot is skipped;
// when none can, the token stays.
func TestKeyCheckOrder(t *testing.T) {
	down := fakeKey{"verifyd", "", ErrCannotTell}
	for _, tc := range []struct {
		keys   []KeyChecker
		want   token.Reason
		wantBy string
	}{
		{nil, token.Valid, KeyNone},
		{[]KeyChecker{down}, token.Valid, KeyNone},
		{[]KeyChecker{down, fakeKey{"keys", token.RotatedKey, nil}}, token.RotatedKey, "keys"},
		{[]KeyChecker{fakeKey{"verifyd", token.Valid, nil}, fakeKey{"keys", token.RotatedKey, nil}}, token.Valid, "verifyd"},
		{[]KeyChecker{fakeKey{"verifyd", token.UnknownKey, nil}}, token.UnknownKey, "verifyd"},
	} {
		c := &Checker{Pool: "p", Keys: tc.keys}
		v := c.Check(context.Background(), nil, &token.Token{Iss: "x"})
		if v.Reason != tc.want || v.By != tc.wantBy || v.Pool != "p" {
			t.Errorf("keys %v: %+v, want %q by %s in pool p", tc.keys, v, tc.want, tc.wantBy)
		}
		if v.CannotTell() != (tc.wantBy == KeyNone) {
			t.Errorf("keys %v: CannotTell %v", tc.keys, v.CannotTell())
		}
	}
	// The claims decide before any key check is asked.
	c := &Checker{Keys: []KeyChecker{fakeKey{"keys", token.Valid, nil}}}
	if v := c.Check(context.Background(), nil, &token.Token{Iss: "x", Exp: 1}); v.Reason != token.Expired || v.By != ByClaims {
		t.Errorf("an expired token: %+v, want expired by claims", v)
	}
}

type vector struct {
	Name       string              `json:"name"`
	Token      string              `json:"token"`
	SignedWith string              `json:"signed_with"`
	Expect     map[string][]string `json:"expect"`
}

// The Keys check agrees with HTCondor on every vector (expiry is Quick's job,
// so an expired vector must pass the key check unless its key is wrong).
func TestKeysAgreeWithVectors(t *testing.T) {
	src := filepath.Join("..", "..", "token", "testdata", "htcondor-24.0")
	data, err := os.ReadFile(filepath.Join(src, "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Cases []vector }
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	for _, folder := range []string{"keys", "keys-rotated"} {
		dir := t.TempDir()
		for _, name := range []string{"POOL", "AP"} {
			b, err := os.ReadFile(filepath.Join(src, folder, name))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, name), b, 0o600) // git keeps no modes
		}
		k := &Keys{Dir: token.KeyDir{Dir: dir, WantUID: -1}}
		for _, c := range v.Cases {
			r, err := k.CheckKey(context.Background(), []byte(c.Token), nil)
			if err != nil {
				t.Errorf("%s/%s: cannot tell: %v", folder, c.Name, err)
				continue
			}
			got := string(r)
			if got == "" {
				got = "valid"
			}
			ok := false
			for _, want := range c.Expect[folder] {
				ok = ok || want == got || (want == "expired" && got == "valid")
			}
			if !ok {
				t.Errorf("%s/%s: %s, want one of %v", folder, c.Name, got, c.Expect[folder])
			}
		}
	}
}

// A key file the agent may not use is not a verdict on the token.
func TestKeysCannotTell(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "POOL"), token.Scramble(make([]byte, 64)), 0o644)
	tok, _ := token.Sign(token.Claims{Issuer: "x", Subject: "a@x", IssuedAt: time.Now()}, "POOL", make([]byte, 32))
	_, err := (&Keys{Dir: token.KeyDir{Dir: dir, WantUID: -1}}).CheckKey(context.Background(), tok, nil)
	if !errors.Is(err, ErrCannotTell) {
		t.Fatalf("a 0644 key file: %v, want ErrCannotTell", err)
	}
}

// The probe offers only the token, in a private directory, and reads
// HTCondor's IDTOKENS failure as a verdict and anything else as "cannot tell".
func TestProbe(t *testing.T) {
	run := t.TempDir()
	script := filepath.Join(t.TempDir(), "probe")
	os.WriteFile(script, []byte(`#!/bin/sh
# A stand-in for condor_ping: succeeds when the token is the good one.
ls "$_CONDOR_SEC_TOKEN_DIRECTORY" > "$0.files"
case "$(cat "$_CONDOR_SEC_TOKEN_DIRECTORY"/*)" in
  *good*) exit 0 ;;
  *stale*) echo "AUTHENTICATE:1003:Failed to authenticate with any method|AUTHENTICATE:1004:Failed to authenticate using IDTOKENS" >&2; exit 1 ;;
  *) echo "SECMAN:2004:Failed to create security session to <127.0.0.1:9618> with TCP." >&2; exit 1 ;;
esac
`), 0o755)
	p := &Probe{Command: []string{script}, Dir: run}
	for raw, want := range map[string]token.Reason{"good.a.b": token.Valid, "stale.a.b": token.RotatedKey} {
		r, err := p.CheckKey(context.Background(), []byte(raw), nil)
		if err != nil || r != want {
			t.Errorf("%s: %q, %v; want %q", raw, r, err, want)
		}
	}
	if _, err := p.CheckKey(context.Background(), []byte("unreachable.a.b"), nil); !errors.Is(err, ErrCannotTell) {
		t.Errorf("pool unreachable: %v, want ErrCannotTell", err)
	}
	files, _ := os.ReadFile(script + ".files")
	if string(files) != "token\n" {
		t.Errorf("the probe saw %q in its token directory, want only the token", files)
	}
	if left, _ := os.ReadDir(run); len(left) != 0 {
		t.Errorf("the probe left %d entries in the runtime directory", len(left))
	}
	// Verdicts are cached: a second check does not run the command.
	os.Remove(script + ".files")
	p.CheckKey(context.Background(), []byte("good.a.b"), nil)
	if _, err := os.Stat(script + ".files"); err == nil {
		t.Error("a cached verdict ran the probe again")
	}
}

// The key directory is read into a snapshot: a missing pool key is "cannot
// tell", a kid with no file is unknown-key, and only a change two reads
// agree on moves the generation.
func TestKeysSnapshot(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, file []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), file, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rawKey := func() []byte { b := make([]byte, 64); rand.Read(b); return token.Scramble(b) }
	pool := rawKey()
	write("POOL", pool)
	k := &Keys{Dir: token.KeyDir{Dir: dir, WantUID: -1}}
	defer k.Close()
	sign := func(kid string, file []byte) []byte {
		tok, err := token.Sign(token.Claims{Issuer: "x", Subject: "a@x", IssuedAt: time.Now()}, kid, token.DeriveKey(kid, file))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	ctx := context.Background()
	check := func(raw []byte) (token.Reason, error) { return k.CheckKey(ctx, raw, nil) }

	good := sign("POOL", pool)
	if r, err := check(good); r != token.Valid || err != nil {
		t.Fatalf("a good token: %q %v", r, err)
	}
	if r, err := check(sign("AP", rawKey())); r != token.UnknownKey || err != nil {
		t.Fatalf("a kid with no file: %q %v, want unknown-key", r, err)
	}
	if r, err := check(sign("POOL", rawKey())); r != token.RotatedKey || err != nil {
		t.Fatalf("another POOL key: %q %v, want rotated-key", r, err)
	}

	reload := func() bool { return k.Apply(k.Read()) }
	// Removed: the snapshot holds until a reading is applied; then POOL
	// tokens cannot be told.
	os.Remove(filepath.Join(dir, "POOL"))
	if r, err := check(good); r != token.Valid || err != nil {
		t.Fatalf("before any reload: %q %v", r, err)
	}
	if !reload() || k.Generation() != 1 {
		t.Fatalf("the removal did not count: generation %d", k.Generation())
	}
	if _, err := check(good); !errors.Is(err, ErrCannotTell) {
		t.Fatalf("no POOL file: %v, want ErrCannotTell", err)
	}
	// The same bytes back: a change again, but none with nothing new.
	write("POOL", pool)
	if !reload() || reload() || k.Generation() != 2 {
		t.Fatalf("restored then unchanged: generation %d, want 2", k.Generation())
	}
	if r, err := check(good); r != token.Valid || err != nil {
		t.Fatalf("POOL restored: %q %v", r, err)
	}
	// An unusable file of a named kid cannot be told; it is a change.
	write("AP", rawKey())
	os.Chmod(filepath.Join(dir, "AP"), 0o644)
	if !reload() {
		t.Fatal("a new key file did not count")
	}
	if _, err := check(sign("AP", rawKey())); !errors.Is(err, ErrCannotTell) {
		t.Fatalf("a 0644 AP: %v, want ErrCannotTell", err)
	}
}
