package verifyd

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// A verifyd that cannot read a key cannot judge the tokens of its kid: it
// answers 503 key-unavailable, which agents take as "cannot tell" (they
// keep the token), never unknown-key (which makes them hide and zero it).

// wantUnavailable checks that raw gets 503 key-unavailable with a message
// naming kid and containing each of problem, and without the key file's
// bytes or its derived key.
func wantUnavailable(t *testing.T, ts *testServer, what string, raw []byte, kid string, file []byte, problem ...string) {
	t.Helper()
	r, se := ts.verify(t, raw)
	if r != unavailable {
		t.Fatalf("%s: %q, want 503 key-unavailable (no verdict)", what, r)
	}
	if !strings.Contains(se.Message, `kid "`+kid+`"`) {
		t.Errorf("%s: the message does not name kid %s: %q", what, kid, se.Message)
	}
	for _, p := range problem {
		if !strings.Contains(se.Message, p) {
			t.Errorf("%s: the message does not say %q: %q", what, p, se.Message)
		}
	}
	if len(file) > 0 {
		key := token.DeriveKey(kid, file)
		for _, secret := range [][]byte{file, key, []byte(base64.StdEncoding.EncodeToString(file)),
			[]byte(base64.RawURLEncoding.EncodeToString(key))} {
			if bytes.Contains([]byte(se.Message), secret) {
				t.Errorf("%s: the message holds key bytes", what)
			}
		}
	}
}

// TestPoolReadableByOthers: a POOL key file with mode 0644 is refused (as in
// HTCondor). POOL tokens get no verdict; AP, whose
// file is fine, is still judged, and a kid with no file is unknown-key. The
// generation moves when POOL comes back and when it is refused again.
func TestPoolReadableByOthers(t *testing.T) {
	f := newRotation(t)
	pool := filepath.Join(f.dir, "POOL")
	if err := os.Chmod(pool, 0o644); err != nil {
		t.Fatal(err)
	}
	ts := start(t, fast(f.dir), nil)
	wantUnavailable(t, ts, "POOL token", f.tOldPool, "POOL", f.oldPool, "mode 0644", "chmod 600 "+pool)
	wantUnavailable(t, ts, "POOL token of another key", f.tNewPool, "POOL", f.oldPool, "chmod 600 "+pool)
	for name, c := range map[string]struct {
		raw  []byte
		want token.Reason
	}{
		"AP":            {f.tOldAP, token.Valid},
		"AP rotated":    {f.tNewAP, token.RotatedKey},
		"NEW (no file)": {f.tExtra, token.UnknownKey},
		"malformed":     {[]byte("not.a.token"), token.Malformed},
	} {
		if r := ts.answer(t, c.raw); r != c.want {
			t.Errorf("%s beside a refused POOL: %q, want %q", name, r, c.want)
		}
	}
	// The raw answer: 503 with the code, as the wire says.
	r := ts.do(t, http.MethodPost, verifyapi.PathVerify, verifyapi.VerifyBody(f.tOldPool))
	if r.status != http.StatusServiceUnavailable || r.code(t) != verifyapi.CodeKeyUnavailable {
		t.Fatalf("raw answer: %d %s", r.status, r.body)
	}

	g0 := ts.gen(t)
	if err := os.Chmod(pool, 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "POOL to be used once chmod 600", func() bool {
		return ts.answer(t, f.tOldPool) == token.Valid
	})
	if g := ts.gen(t); g != g0+1 {
		t.Fatalf("generation %d after POOL came back, want %d", g, g0+1)
	}
	if err := os.Chmod(pool, 0o640); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "POOL to be refused again", func() bool {
		return ts.answer(t, f.tOldPool) == unavailable
	})
	if g := ts.gen(t); g != g0+2 {
		t.Fatalf("generation %d after POOL was refused again, want %d", g, g0+2)
	}
	if r := ts.answer(t, f.tOldAP); r != token.Valid {
		t.Fatalf("AP: %q, want valid", r)
	}
}

// TestPoolEmpty: an empty POOL file (a truncate-then-write caught half way)
// gives no verdict; once written, the verdicts follow the new key.
func TestPoolEmpty(t *testing.T) {
	f := newRotation(t)
	pool := filepath.Join(f.dir, "POOL")
	if err := os.Truncate(pool, 0); err != nil {
		t.Fatal(err)
	}
	ts := start(t, fast(f.dir), nil)
	wantUnavailable(t, ts, "empty POOL", f.tOldPool, "POOL", f.oldPool, pool+" is empty")
	if r := ts.answer(t, f.tOldAP); r != token.Valid {
		t.Fatalf("AP beside an empty POOL: %q, want valid", r)
	}
	g0 := ts.gen(t)
	if err := os.WriteFile(pool, f.newPool, 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the written POOL to be used", func() bool {
		return ts.answer(t, f.tNewPool) == token.Valid
	})
	if r := ts.answer(t, f.tOldPool); r != token.RotatedKey {
		t.Fatalf("old POOL token after the write: %q, want rotated-key", r)
	}
	if g := ts.gen(t); g != g0+1 {
		t.Fatalf("generation %d, want %d", g, g0+1)
	}
}

// TestPoolMissing: with no POOL key file (the collector has not made it
// yet, or verifyd looks in the wrong place) POOL tokens get no verdict;
// AP tokens are still judged. A named kid with no file is unknown-key.
func TestPoolMissing(t *testing.T) {
	t.Run("password directory without POOL", func(t *testing.T) {
		f := newRotation(t)
		pool := filepath.Join(f.dir, "POOL")
		if err := os.Remove(pool); err != nil {
			t.Fatal(err)
		}
		ts := start(t, fast(f.dir), nil)
		wantUnavailable(t, ts, "POOL token", f.tOldPool, "POOL", f.oldPool, pool+" does not exist")
		for name, c := range map[string]struct {
			raw  []byte
			want token.Reason
		}{
			"AP":            {f.tOldAP, token.Valid},
			"AP rotated":    {f.tNewAP, token.RotatedKey},
			"NEW (no file)": {f.tExtra, token.UnknownKey},
		} {
			if r := ts.answer(t, c.raw); r != c.want {
				t.Errorf("%s without POOL: %q, want %q", name, r, c.want)
			}
		}
		g0 := ts.gen(t)
		writeKey(t, pool, f.oldPool)
		testenv.Eventually(t, 5*time.Second, "POOL to be used once it appears", func() bool {
			return ts.answer(t, f.tOldPool) == token.Valid
		})
		if g := ts.gen(t); g != g0+1 {
			t.Fatalf("generation %d, want %d", g, g0+1)
		}
	})
	t.Run("pool key file option pointing nowhere", func(t *testing.T) {
		f := newRotation(t)
		o := fast(f.dir)
		o.PoolKey = filepath.Join(t.TempDir(), "no", "such", "pool_key")
		ts := start(t, o, nil)
		wantUnavailable(t, ts, "POOL token", f.tOldPool, "POOL", f.oldPool, o.PoolKey+" does not exist")
		if r := ts.answer(t, f.tOldAP); r != token.Valid {
			t.Fatalf("AP: %q, want valid", r)
		}
	})
}

// TestNamedKidWithoutFile: a token whose kid has no key file at all is
// unknown-key (HTCondor's tools skip such tokens too); a kid whose "file" is
// a directory cannot be judged.
func TestNamedKidWithoutFile(t *testing.T) {
	f := newRotation(t)
	if err := os.Mkdir(filepath.Join(f.dir, "SUB"), 0o700); err != nil {
		t.Fatal(err)
	}
	ts := start(t, fast(f.dir), nil)
	if r := ts.answer(t, f.tExtra); r != token.UnknownKey {
		t.Fatalf("kid NEW with no file: %q, want unknown-key", r)
	}
	wantUnavailable(t, ts, "kid naming a directory", sign(t, "SUB", f.extra, time.Hour), "SUB", nil, "is a directory")
	if r := ts.answer(t, f.tOldPool); r != token.Valid {
		t.Fatalf("POOL: %q, want valid", r)
	}
}

// TestNoKeys: with no usable key at all every verify request gets 503
// key-unavailable, even a malformed token; a warning says so once, at load.
// The first key brings verdicts back, and losing every key takes them away.
func TestNoKeys(t *testing.T) {
	f := newRotation(t)
	empty := filepath.Join(t.TempDir(), "passwords.d")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	ts := start(t, fast(empty), nil)
	for name, raw := range map[string][]byte{"POOL": f.tOldPool, "AP": f.tOldAP, "NEW": f.tExtra, "malformed": []byte("not.a.token")} {
		r, se := ts.verify(t, raw)
		if r != unavailable {
			t.Fatalf("%s with no keys: %q, want 503 key-unavailable", name, r)
		}
		if !strings.Contains(se.Message, "no usable signing key") || !strings.Contains(se.Message, empty) {
			t.Fatalf("%s with no keys: the message does not say why: %q", name, se.Message)
		}
	}
	if n := strings.Count(ts.logs.String(), "no usable signing key yet"); n != 1 {
		t.Fatalf("the no-key warning is logged %d times, want once:\n%s", n, ts.logs.String())
	}

	g0 := ts.gen(t)
	writeKey(t, filepath.Join(empty, "AP"), f.oldAP)
	testenv.Eventually(t, 5*time.Second, "AP to be used", func() bool { return ts.answer(t, f.tOldAP) == token.Valid })
	if g := ts.gen(t); g != g0+1 {
		t.Fatalf("generation %d, want %d", g, g0+1)
	}
	wantUnavailable(t, ts, "POOL token with only AP", f.tOldPool, "POOL", nil, "does not exist")
	if r := ts.answer(t, []byte("not.a.token")); r != token.Malformed {
		t.Fatalf("malformed token with a key: %q", r)
	}
	if r := ts.answer(t, f.tExtra); r != token.UnknownKey {
		t.Fatalf("NEW with no file: %q, want unknown-key", r)
	}

	if err := os.Remove(filepath.Join(empty, "AP")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "no verdicts once the last key is gone", func() bool {
		return ts.answer(t, f.tOldAP) == unavailable
	})
	if r := ts.answer(t, f.tExtra); r != unavailable {
		t.Fatalf("NEW with no keys at all: %q, want 503 key-unavailable", r)
	}
	if g := ts.gen(t); g != g0+2 {
		t.Fatalf("generation %d, want %d", g, g0+2)
	}
}
