package main

import (
	"crypto/rand"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/simwire"
	"github.com/tokend/tokend/token"
)

// signRaw signs arbitrary claims as HTCondor would, with the pool key or a
// key of its own.
func (e *env) signRaw(kid string, key []byte, claims jwt.MapClaims) []byte {
	e.t.Helper()
	if key == nil {
		pool, err := (token.KeyDir{Dir: e.keys, WantUID: -1}).Key(token.PoolKeyName)
		if err != nil {
			e.t.Fatal(err)
		}
		defer pool.Wipe()
		key = pool.Bytes()
	}
	j := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	j.Header = map[string]any{"alg": "HS256", "kid": kid}
	s, err := j.SignedString(key)
	if err != nil {
		e.t.Fatal(err)
	}
	e.secrets = append(e.secrets, []byte(s))
	return []byte(s)
}

// Every kind of bad token written by the user is hidden with its reason;
// good ones stay, and so does one whose kid the pool has no key for
// (unknown-key: the tools skip it harmlessly); the tools see only those.
func TestHidingReasons(t *testing.T) {
	e := newEnv(t, map[string]string{"validate.trust_domains": `["test.example"]`})
	e.start()
	now := time.Now().Unix()
	claims := func(extra jwt.MapClaims) jwt.MapClaims {
		c := jwt.MapClaims{"iss": "test.example", "sub": "u@test.example", "iat": now, "jti": "0123456789abcdef0123456789abcdef"}
		for k, v := range extra {
			c[k] = v
		}
		return c
	}
	otherKey := make([]byte, 32)
	rand.Read(otherKey)
	files := map[string][]byte{
		"good":       e.signRaw("POOL", nil, claims(jwt.MapClaims{"exp": now + 3600})),
		"expired":    e.signRaw("POOL", nil, claims(jwt.MapClaims{"iat": now - 7200, "exp": now - 3600})),
		"not-yet":    e.signRaw("POOL", nil, claims(jwt.MapClaims{"nbf": now + 3600})),
		"issuer":     e.signRaw("POOL", nil, claims(jwt.MapClaims{"iss": "evil.example"})),
		"rotated":    e.signRaw("POOL", otherKey, claims(nil)),
		"unknown":    e.signRaw("OLD", otherKey, claims(nil)),
		"no-expiry":  e.signRaw("POOL", nil, claims(nil)),
		"capability": e.signRaw("POOL", nil, jwt.MapClaims{"iss": "test.example", "iat": now, "cap": true, "jti": "0123456789abcdef0123456789abcdef"}),
	}
	want := map[string]string{
		"good": "", "no-expiry": "", "capability": "", "tokend-session": "",
		"expired": "expired", "not-yet": "not-yet-valid", "issuer": "untrusted-issuer",
		"rotated": "rotated-key", "unknown": "unknown-key",
	}
	for name, tok := range files {
		if errno := e.write("write", name, tok); errno != "" {
			t.Fatalf("writing %s: %s", name, errno)
		}
	}
	testenv.Eventually(t, 5*time.Second, "every token to be checked", func() bool {
		got := e.tokens(true)
		if len(got) != len(want) {
			t.Logf("%d tokens: %+v", len(got), got)
		}
		return len(got) == len(want)
	})
	// Shown: valid, or unknown-key; everything else is hidden.
	shown := func(reason string) bool { return reason == "" || reason == api.ReasonUnknownKey }
	testenv.Eventually(t, 5*time.Second, "the unknown-key token to be noted", func() bool {
		return slices.ContainsFunc(e.tokens(false), func(tok api.Token) bool { return tok.Name == "unknown" && tok.Reason == api.ReasonUnknownKey })
	})
	for _, tok := range e.tokens(true) {
		r, ok := want[tok.Name]
		if !ok || tok.Reason != r {
			t.Errorf("%s: state %s reason %q, want reason %q", tok.Name, tok.State, tok.Reason, r)
		}
		if (tok.State == api.StateValid) != shown(r) {
			t.Errorf("%s: state %s with reason %q", tok.Name, tok.State, tok.Reason)
		}
		if tok.Pool != "default" {
			t.Errorf("%s: pool %q, want default (its trust domain is unknown, so it claims every iss)", tok.Name, tok.Pool)
		}
	}
	var seen []string
	for _, f := range e.read().Files {
		seen = append(seen, filepath.Base(f.Path))
	}
	slices.Sort(seen)
	if wantSeen := []string{"capability", "good", "no-expiry", "tokend-session", "unknown"}; !slices.Equal(seen, wantSeen) {
		t.Fatalf("the tools see %v, want %v", seen, wantSeen)
	}
	// The metadata never carries the token.
	out, _, _ := e.cli("list", "--all", "--json")
	for name, tok := range files {
		if strings.Contains(out, string(tok[strings.LastIndexByte(string(tok), '.')+1:])) {
			t.Fatalf("tokend list shows the signature of %s", name)
		}
	}
}

// A token that expires while mounted vanishes without any action.
func TestExpiryWhileMounted(t *testing.T) {
	e := newEnv(t, map[string]string{"validate.exp_margin": `"1s"`})
	e.start()
	short := e.sign("short@test.example", 3*time.Second)
	if errno := e.write("write", "short", short); errno != "" {
		t.Fatal(errno)
	}
	if r := e.read(); !slices.ContainsFunc(r.Files, func(f simwire.File) bool { return filepath.Base(f.Path) == "short" }) {
		t.Fatal("the short-lived token is not shown")
	}
	testenv.Eventually(t, 10*time.Second, "the expired token to vanish", func() bool {
		return !slices.ContainsFunc(e.read().Files, func(f simwire.File) bool { return filepath.Base(f.Path) == "short" })
	})
	for _, tok := range e.tokens(true) {
		if tok.Name == "short" && tok.Reason != "expired" {
			t.Fatalf("short: reason %q", tok.Reason)
		}
	}
}

// A session token is refreshed before it expires, with no moment when the
// tools would find no valid token.
func TestRefreshWithoutGap(t *testing.T) {
	e := newEnv(t, map[string]string{"fetch.lifetime": `"6s"`, "validate.exp_margin": `"1s"`})
	e.start()
	var w simwire.Watch
	e.sim(e.u, &w, "", "watch", e.dir, "9")
	t.Logf("%d reads, %d distinct tokens, %d failed reads", w.Reads, w.Distinct, len(w.Failures))
	if w.Distinct < 2 {
		t.Fatalf("the session token was not refreshed in 9 s (lifetime 6 s): %+v", w)
	}
	if w.NoToken > len(w.Failures) {
		t.Fatalf("%d of %d reads found no token (beyond %d reads that raced a replacement)", w.NoToken, w.Reads, len(w.Failures))
	}
	// A read that races a replacement is caught by read_secure_file's own
	// checks (size and mtime), as on any filesystem; it must stay rare.
	for _, f := range w.Failures {
		if !strings.Contains(f, "modified during reading") && !strings.Contains(f, "short read") {
			t.Errorf("unexpected read failure: %s", f)
		}
	}
	if len(w.Failures)*100 > w.Reads {
		t.Errorf("%d of %d reads raced a replacement", len(w.Failures), w.Reads)
	}
	st, err := e.status()
	if err != nil || st.Session.State != api.SessionValid || st.Session.Failures != 0 {
		t.Fatalf("status after refreshes: %+v %v", st.Session, err)
	}
}
