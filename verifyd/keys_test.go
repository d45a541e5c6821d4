package verifyd

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/token"
)

type vectorCase struct {
	Name       string              `json:"name"`
	SignedWith string              `json:"signed_with"`
	Token      string              `json:"token"`
	Expect     map[string][]string `json:"expect"`
}

func loadVectors(t *testing.T) []vectorCase {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vectorsDir, "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Cases []vectorCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Cases) == 0 {
		t.Fatal("no cases in vectors.json")
	}
	return v.Cases
}

// outcome is a Reason spelled as vectors.json spells it.
func outcome(r token.Reason) string {
	if r == token.Valid {
		return "valid"
	}
	return string(r)
}

// TestVectors runs HTCondor's own tokens through a real Server and verifyapi.Client,
// with the keys before a rotation and then, after the files are renamed
// over, with the rotated keys.
func TestVectors(t *testing.T) {
	cases := loadVectors(t)
	dir := t.TempDir()
	copyKeys(t, "keys", dir)
	ts := start(t, fast(dir), nil)

	matches := func(folder string, verbose bool) bool {
		ok := true
		for _, c := range cases {
			got := outcome(ts.reason(t, []byte(c.Token)))
			if !slices.Contains(c.Expect[folder], got) {
				ok = false
				if verbose {
					t.Errorf("%s against %s: got %q, want one of %q", c.Name, folder, got, c.Expect[folder])
				}
			}
		}
		return ok
	}
	matches("keys", true)
	if t.Failed() {
		t.FailNow()
	}

	g0 := ts.gen(t)
	// Rotate the way an installer does: new files renamed over the old.
	stage := filepath.Join(dir, ".staging")
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	copyKeys(t, "keys-rotated", stage)
	for _, name := range []string{"AP", "POOL"} {
		if err := os.Rename(filepath.Join(stage, name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if g, err := ts.client.WaitChange(ctx, g0); err != nil || g == g0 {
		t.Fatalf("WaitChange(%d) = %d, %v; want a new generation", g0, g, err)
	}
	testenv.Eventually(t, 5*time.Second, "verdicts after the rotation", func() bool { return matches("keys-rotated", false) })
	matches("keys-rotated", true)
}

func TestStoreCredToken(t *testing.T) {
	dir := t.TempDir()
	copyKeys(t, "store-cred", dir)
	ts := start(t, fast(dir), nil)
	raw, err := os.ReadFile(filepath.Join(vectorsDir, "store-cred", "schedd-fetched.jwt"))
	if err != nil {
		t.Fatal(err)
	}
	raw = []byte(strings.TrimSpace(string(raw)))
	if r := ts.reason(t, raw); r != token.Valid {
		t.Fatalf("schedd-fetched.jwt against store-cred/POOL: %q, want valid", r)
	}
}

// TestExpiredAndOrder: an authentic expired token is expired; an expired
// token whose key rotated is rotated-key (signature before time); an
// expired token of an unknown kid is unknown-key.
func TestExpiredAndOrder(t *testing.T) {
	dir := t.TempDir()
	copyKeys(t, "keys", dir)
	ts := start(t, fast(dir), nil)
	pool := keyFile(t, "keys", "POOL")
	old := time.Now().Add(-2 * time.Hour)
	expired, err := token.Sign(token.Claims{Issuer: "example.org", Subject: "a@example.org", Lifetime: time.Hour, IssuedAt: old},
		"POOL", token.DeriveKey("POOL", pool))
	if err != nil {
		t.Fatal(err)
	}
	rotated, _ := token.Sign(token.Claims{Issuer: "example.org", Subject: "a@example.org", Lifetime: time.Hour, IssuedAt: old},
		"POOL", token.DeriveKey("POOL", keyFile(t, "keys-rotated", "POOL")))
	unknown, _ := token.Sign(token.Claims{Issuer: "example.org", Subject: "a@example.org", Lifetime: time.Hour, IssuedAt: old},
		"NOPE", token.DeriveKey("NOPE", pool))
	for _, c := range []struct {
		name string
		raw  []byte
		want token.Reason
	}{
		{"expired", expired, token.Expired},
		{"expired+rotated", rotated, token.RotatedKey},
		{"expired+unknown", unknown, token.UnknownKey},
		{"valid", sign(t, "POOL", pool, time.Hour), token.Valid},
		{"no exp", sign(t, "POOL", pool, 0), token.Valid},
		{"garbage", []byte("not.a.token"), token.Malformed},
		{"whitespace", append(sign(t, "POOL", pool, time.Hour), '\n'), token.Malformed},
	} {
		if got := ts.reason(t, c.raw); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// rotationFixture is a password directory holding keys/ (POOL, AP) and the
// tokens signed before and after a rotation.
type rotationFixture struct {
	dir                      string
	oldPool, oldAP           []byte // files
	newPool, newAP           []byte
	tOldPool, tOldAP         []byte // tokens
	tNewPool, tNewAP, tExtra []byte
	extra                    []byte // a key file for a new name, NEW
}

func newRotation(t *testing.T) *rotationFixture {
	f := &rotationFixture{dir: filepath.Join(t.TempDir(), "passwords.d")}
	if err := os.Mkdir(f.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	copyKeys(t, "keys", f.dir)
	f.oldPool, f.oldAP = keyFile(t, "keys", "POOL"), keyFile(t, "keys", "AP")
	f.newPool, f.newAP = keyFile(t, "keys-rotated", "POOL"), keyFile(t, "keys-rotated", "AP")
	f.extra = keys.NewFile()
	f.tOldPool, f.tOldAP = sign(t, "POOL", f.oldPool, time.Hour), sign(t, "AP", f.oldAP, time.Hour)
	f.tNewPool, f.tNewAP = sign(t, "POOL", f.newPool, time.Hour), sign(t, "AP", f.newAP, time.Hour)
	f.tExtra = sign(t, "NEW", f.extra, time.Hour)
	return f
}

// TestRotationShapes makes every kind of key change an administrator or the
// collector makes and checks that a waiting WaitChange wakes within a
// second and that the verdicts follow. On the way, while a key file is
// missing or half written, verifyd may answer 503 key-unavailable for POOL
// tokens (unavailable): never a verdict it cannot make.
func TestRotationShapes(t *testing.T) {
	type want map[string]token.Reason // token name -> verdict
	shapes := []struct {
		name     string
		poolOut  bool // the pool key lives outside the password directory
		rotate   func(t *testing.T, f *rotationFixture, pool string)
		after    want
		stepwise bool // the change happens in several visible steps
	}{
		{
			name: "pool rewritten in place",
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				if err := os.WriteFile(pool, f.newPool, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			after: want{"oldPool": token.RotatedKey, "newPool": token.Valid, "oldAP": token.Valid},
		},
		{
			name: "pool replaced by rename",
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				tmp := filepath.Join(filepath.Dir(pool), ".POOL.new")
				writeKey(t, tmp, f.newPool)
				if err := os.Rename(tmp, pool); err != nil {
					t.Fatal(err)
				}
			},
			after: want{"oldPool": token.RotatedKey, "newPool": token.Valid, "oldAP": token.Valid},
		},
		{
			name: "pool deleted then recreated",
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				if err := os.Remove(pool); err != nil {
					t.Fatal(err)
				}
				writeKey(t, pool, f.newPool)
			},
			after:    want{"oldPool": token.RotatedKey, "newPool": token.Valid, "oldAP": token.Valid},
			stepwise: true,
		},
		{
			name: "new key added",
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				writeKey(t, filepath.Join(f.dir, "NEW"), f.extra)
			},
			after: want{"extra": token.Valid, "oldPool": token.Valid, "oldAP": token.Valid},
		},
		{
			name: "key removed",
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				if err := os.Remove(filepath.Join(f.dir, "AP")); err != nil {
					t.Fatal(err)
				}
			},
			after: want{"oldAP": token.UnknownKey, "oldPool": token.Valid},
		},
		{
			name: "directory removed and recreated",
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				if err := os.RemoveAll(f.dir); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(f.dir, 0o700); err != nil {
					t.Fatal(err)
				}
				writeKey(t, filepath.Join(f.dir, "POOL"), f.newPool)
				writeKey(t, filepath.Join(f.dir, "AP"), f.newAP)
			},
			after: want{"oldPool": token.RotatedKey, "newPool": token.Valid,
				"oldAP": token.RotatedKey, "newAP": token.Valid},
			stepwise: true,
		},
		{
			name:    "pool key elsewhere replaced by rename",
			poolOut: true,
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				tmp := pool + ".tmp"
				writeKey(t, tmp, f.newPool)
				if err := os.Rename(tmp, pool); err != nil {
					t.Fatal(err)
				}
			},
			after: want{"oldPool": token.RotatedKey, "newPool": token.Valid, "oldAP": token.Valid},
		},
		{
			name:    "pool key elsewhere deleted",
			poolOut: true,
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				if err := os.Remove(pool); err != nil {
					t.Fatal(err)
				}
			},
			// verifyd cannot judge POOL tokens without a pool key:
			// 503 key-unavailable, no verdict.
			after: want{"oldPool": unavailable, "newPool": unavailable, "oldAP": token.Valid},
		},
		{
			name: "pool made readable by others",
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				if err := os.Chmod(pool, 0o644); err != nil {
					t.Fatal(err)
				}
			},
			after: want{"oldPool": unavailable, "newPool": unavailable, "oldAP": token.Valid, "newAP": token.RotatedKey},
		},
		{
			name: "pool truncated",
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				if err := os.Truncate(pool, 0); err != nil {
					t.Fatal(err)
				}
			},
			after: want{"oldPool": unavailable, "newPool": unavailable, "oldAP": token.Valid},
		},
		{
			name: "named key made readable by others",
			rotate: func(t *testing.T, f *rotationFixture, pool string) {
				if err := os.Chmod(filepath.Join(f.dir, "AP"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			after: want{"oldAP": unavailable, "newAP": unavailable, "oldPool": token.Valid, "extra": token.UnknownKey},
		},
	}
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			t.Parallel()
			f := newRotation(t)
			o := fast(f.dir)
			pool := filepath.Join(f.dir, "POOL")
			if sh.poolOut {
				if err := os.Remove(pool); err != nil {
					t.Fatal(err)
				}
				pool = filepath.Join(t.TempDir(), "pool_signing_key")
				writeKey(t, pool, f.oldPool)
				o.PoolKey = pool
			}
			ts := start(t, o, nil)
			tokens := map[string][]byte{"oldPool": f.tOldPool, "oldAP": f.tOldAP, "newPool": f.tNewPool,
				"newAP": f.tNewAP, "extra": f.tExtra}
			before := want{"oldPool": token.Valid, "oldAP": token.Valid, "newPool": token.RotatedKey,
				"newAP": token.RotatedKey, "extra": token.UnknownKey}
			for name, w := range before {
				if got := ts.answer(t, tokens[name]); got != w {
					t.Fatalf("before: %s is %q, want %q", name, got, w)
				}
			}
			g0 := ts.gen(t)

			type result struct {
				gen uint64
				err error
				at  time.Time
			}
			waited := make(chan result, 1)
			go func() {
				g, err := ts.client.WaitChange(context.Background(), g0)
				waited <- result{g, err, time.Now()}
			}()
			// Let the long poll reach the server first, so it is woken
			// rather than answered at once (it works either way).
			testenv.Eventually(t, 5*time.Second, "the long poll to be waiting", func() bool {
				return ts.waiting.Load() > 0
			})
			sh.rotate(t, f, pool)
			changedAt := time.Now()
			var r result
			select {
			case r = <-waited:
			case <-time.After(10 * time.Second):
				t.Fatal("WaitChange did not return after the rotation")
			}
			if r.err != nil || r.gen == g0 {
				t.Fatalf("WaitChange(%d) = %d, %v; want a new generation", g0, r.gen, r.err)
			}
			if lag := r.at.Sub(changedAt); lag > time.Second {
				t.Errorf("WaitChange returned %v after the change; want well under a second", lag)
			}
			got := map[string]token.Reason{}
			testenv.Eventually(t, 5*time.Second, "the verdicts after the change", func() bool {
				for name, w := range sh.after {
					if got[name] = ts.answer(t, tokens[name]); got[name] != w {
						return false
					}
				}
				return true
			})
			if !sh.stepwise {
				if g := ts.gen(t); g != g0+1 {
					t.Errorf("generation %d after one change from %d; want %d", g, g0, g0+1)
				}
			}
		})
	}
}

// TestNoChangeNoGeneration: rewriting the same bytes, touching and a chmod
// that keeps a key usable leave the generation alone; the next real change
// moves it by exactly one.
func TestNoChangeNoGeneration(t *testing.T) {
	f := newRotation(t)
	ts := start(t, fast(f.dir), nil)
	g0 := ts.gen(t)
	pool := filepath.Join(f.dir, "POOL")

	// Same bytes, in place and by rename; touch; chmod 0400 and back.
	if err := os.WriteFile(pool, f.oldPool, 0o600); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(t.TempDir(), "AP")
	writeKey(t, tmp, f.oldAP)
	if err := os.Rename(tmp, filepath.Join(f.dir, "AP")); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Add(time.Minute)
	if err := os.Chtimes(pool, now, now); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pool, 0o400); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pool, 0o600); err != nil {
		t.Fatal(err)
	}
	// A file that is not a key at all: a subdirectory.
	if err := os.Mkdir(filepath.Join(f.dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	// Wait until the watcher has certainly seen all of that: its reload
	// also picks up the marker below, which is a real change.
	writeKey(t, filepath.Join(f.dir, "NEW"), f.extra)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, err := ts.client.WaitChange(ctx, g0)
	if err != nil {
		t.Fatal(err)
	}
	if g != g0+1 {
		t.Fatalf("generation went from %d to %d; want exactly one step (no-op changes must not count)", g0, g)
	}
	if r := ts.reason(t, f.tExtra); r != token.Valid {
		t.Fatalf("the new key is not in use at generation %d: %q", g, r)
	}
	if r := ts.reason(t, f.tOldPool); r != token.Valid {
		t.Fatalf("POOL after no-op changes: %q", r)
	}
	if g := ts.gen(t); g != g0+1 {
		t.Fatalf("generation %d, want %d", g, g0+1)
	}
}

// TestRefusedKeyFiles: a key file readable by others, or owned by someone
// else, is left out with a log line saying how to fix it, and comes back
// when fixed. New does not fail for it. Meanwhile tokens of its kid get no
// verdict: 503 key-unavailable.
func TestRefusedKeyFiles(t *testing.T) {
	testenv.RequireRoot(t, "the wrong-owner case chowns a key file")
	f := newRotation(t)
	ap := filepath.Join(f.dir, "AP")
	if err := os.Chmod(ap, 0o644); err != nil {
		t.Fatal(err)
	}
	ts := start(t, fast(f.dir), nil)
	if r, se := ts.verify(t, f.tOldAP); r != unavailable {
		t.Fatalf("AP with mode 0644: %q, want 503 key-unavailable", r)
	} else if !strings.Contains(se.Message, `kid "AP"`) || !strings.Contains(se.Message, "chmod 600 "+ap) {
		t.Fatalf("the 503 does not name the kid and the problem: %q", se.Message)
	}
	if r := ts.reason(t, f.tOldPool); r != token.Valid {
		t.Fatalf("POOL: %q, want valid", r)
	}
	if logs := ts.logs.String(); !strings.Contains(logs, "chmod 600 "+ap) || !strings.Contains(logs, "left out") {
		t.Fatalf("the log does not say how to fix the mode of %s:\n%s", ap, logs)
	}

	g0 := ts.gen(t)
	if err := os.Chmod(ap, 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "AP to be used once chmod 600", func() bool {
		return ts.answer(t, f.tOldAP) == token.Valid
	})
	if g := ts.gen(t); g != g0+1 {
		t.Fatalf("generation %d, want %d", g, g0+1)
	}

	if err := os.Chown(ap, 1, -1); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "AP owned by uid 1 to be left out", func() bool {
		return ts.answer(t, f.tOldAP) == unavailable
	})
	if g := ts.gen(t); g != g0+2 {
		t.Fatalf("generation %d after AP was refused again, want %d", g, g0+2)
	}
	if logs := ts.logs.String(); !strings.Contains(logs, "chown 0 "+ap) {
		t.Fatalf("the log does not say how to fix the owner of %s:\n%s", ap, logs)
	}
}

func TestWrongOwnerAtStart(t *testing.T) {
	testenv.RequireRoot(t, "this test chowns a key file")
	f := newRotation(t)
	if err := os.Chown(filepath.Join(f.dir, "POOL"), 1, -1); err != nil {
		t.Fatal(err)
	}
	ts := start(t, fast(f.dir), nil)
	if r, se := ts.verify(t, f.tOldPool); r != unavailable {
		t.Fatalf("POOL owned by uid 1: %q, want 503 key-unavailable", r)
	} else if !strings.Contains(se.Message, `kid "POOL"`) || !strings.Contains(se.Message, "owned by uid 1") {
		t.Fatalf("the 503 does not name the kid and the problem: %q", se.Message)
	}
	if r := ts.reason(t, f.tOldAP); r != token.Valid {
		t.Fatalf("AP beside a refused POOL: %q, want valid", r)
	}
	if !strings.Contains(ts.logs.String(), "owned by uid 1") {
		t.Fatalf("log:\n%s", ts.logs.String())
	}
}

func TestNewErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := New(Options{PasswordDir: missing})
	if err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "SEC_PASSWORD_DIRECTORY") {
		t.Fatalf("missing password directory: %v", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	writeKey(t, file, []byte("x"))
	if _, err := New(Options{PasswordDir: file}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("password directory is a file: %v", err)
	}
	// An empty directory is fine: keys may come later.
	s, err := New(Options{PasswordDir: t.TempDir(), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	if s.Generation() != 1 {
		t.Fatalf("generation %d after New, want 1", s.Generation())
	}
	if _, err := New(Options{PasswordDir: t.TempDir(), Rate: -1}); err == nil {
		t.Fatal("negative rate accepted")
	}
}

// TestDefaultsFromCondorConfig: without options, condor_config_val decides.
func TestDefaultsFromCondorConfig(t *testing.T) {
	f := newRotation(t)
	poolDir := t.TempDir()
	pool := filepath.Join(poolDir, "signing")
	writeKey(t, pool, f.newPool)
	old := configVal
	t.Cleanup(func() { configVal = old })
	configVal = func(name string) string {
		switch name {
		case "SEC_PASSWORD_DIRECTORY":
			return f.dir
		case "SEC_TOKEN_POOL_SIGNING_KEY_FILE":
			return pool
		}
		return ""
	}
	s, err := New(Options{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	if s.dir != f.dir || s.pool != pool {
		t.Fatalf("dir %s pool %s; want %s and %s", s.dir, s.pool, f.dir, pool)
	}
	// An explicit directory does not take the pool file from the config.
	s, err = New(Options{PasswordDir: f.dir, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(f.dir, "POOL"); s.pool != want {
		t.Fatalf("pool %s, want %s", s.pool, want)
	}
}

// TestRecreatedDirectoryIsWatched: after the password directory is removed
// and made again, changes inside the new directory are still seen at once
// (the watch is re-added), and a POOL file in the directory is ignored when
// the pool key lives elsewhere.
func TestRecreatedDirectoryIsWatched(t *testing.T) {
	f := newRotation(t)
	ts := start(t, fast(f.dir), nil)
	for round := range 3 {
		if err := os.RemoveAll(f.dir); err != nil {
			t.Fatal(err)
		}
		// No key at all: no verdict on anything.
		testenv.Eventually(t, 5*time.Second, "keys to go with the directory", func() bool {
			return ts.answer(t, f.tOldPool) == unavailable && ts.answer(t, f.tExtra) == unavailable
		})
		if err := os.Mkdir(f.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		writeKey(t, filepath.Join(f.dir, "POOL"), f.oldPool)
		testenv.Eventually(t, 5*time.Second, "a key written into the recreated directory", func() bool {
			return ts.answer(t, f.tOldPool) == token.Valid
		})
		// The reload that found POOL re-added the watch: a later key is
		// seen through it (the periodic reload is a minute away).
		writeKey(t, filepath.Join(f.dir, "NEW"), f.extra)
		testenv.Eventually(t, 5*time.Second, "a later key in the recreated directory", func() bool {
			return ts.answer(t, f.tExtra) == token.Valid
		})
		t.Logf("round %d: generation %d", round, ts.Generation())
	}
}

func TestPoolFileInDirIgnoredWhenPoolElsewhere(t *testing.T) {
	f := newRotation(t) // dir/POOL holds the old pool key
	pool := filepath.Join(t.TempDir(), "POOL")
	writeKey(t, pool, f.newPool)
	ts := start(t, Options{PasswordDir: f.dir, PoolKey: pool, Rate: 1e6, Burst: 1e6}, nil)
	if r := ts.reason(t, f.tNewPool); r != token.Valid {
		t.Fatalf("token of the pool key file: %q", r)
	}
	if r := ts.reason(t, f.tOldPool); r != token.RotatedKey {
		t.Fatalf("token of <dir>/POOL: %q, want rotated-key (that file is not the pool key)", r)
	}
}
