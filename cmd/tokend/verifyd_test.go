package main

// End-to-end tests of signing-key rotation: a real `tokend verifyd` run as
// root over root-owned key files, and a real agent run as the test user
// whose only key check is that verifyd (validate.key_dir = ""). The agent's
// embedded issuer stands in for the schedd with a copy of the pool key the
// user can read; a rotation changes both, so the fresh token is signed with
// the new key. HTCondor's vectors through verifyd are tested in verifyd/.

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/token"
)

// Deadlines of the polls below. They are not timing assertions: a
// rotation is seen well within a second (make bench has the figure); these
// only bound how long a broken agent makes a test wait.
const (
	goneWithin  = 5 * time.Second  // a stale token leaves the mount
	freshWithin = 20 * time.Second // a fresh session token arrives (jitter, retries with backoff)
	upWithin    = 20 * time.Second // the agent reconnects to verifyd (backoff up to 10 s)
)

// startWithVerifyd starts verifyd, whose POOL key is the user's copy, and an
// agent that checks keys only through it.
func startWithVerifyd(t *testing.T) (*env, *verifydProc) {
	t.Helper()
	v := newVerifyd(t)
	e := newEnv(t, v.settings())
	writeRootKey(t, filepath.Join(v.keys, token.PoolKeyName), e.userKey(token.PoolKeyName))
	v.start()
	e.start()
	e.waitVerifyd(true)
	if kc := e.mustStatus().Validation.KeyCheck; kc != "verifyd" {
		t.Fatalf("key check %q, want verifyd alone", kc)
	}
	t.Cleanup(func() { e.noSecretsIn("verifyd", v.log.String()) })
	return e, v
}

// waitVerifyd waits until the agent reports verifyd up (or down).
func (e *env) waitVerifyd(up bool) {
	e.t.Helper()
	testenv.Eventually(e.t, upWithin, "the agent to report verifyd_up "+map[bool]string{true: "true", false: "false"}[up], func() bool {
		e.running()
		st, err := e.status()
		return err == nil && st.Validation.VerifydUp == up
	})
}

// forged signs a token with a key the pool never had, under kid POOL: only
// a signature check can tell it from a good one.
func (e *env) forged(sub string) []byte {
	e.t.Helper()
	tok, err := keys.Sign(newKeyFile(), token.PoolKeyName, token.Claims{Issuer: "test.example", Subject: sub, Lifetime: time.Hour, IssuedAt: time.Now()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.secrets = append(e.secrets, tok)
	return tok
}

// put writes tok as file name through the mount, as condor_token_fetch
// -token does.
func (e *env) put(name string, tok []byte) {
	e.t.Helper()
	if errno := e.write("write", name, tok); errno != "" {
		e.t.Fatalf("writing %s: %s", name, errno)
	}
}

// checkRotation runs one rotation and checks what the tools see. Before it,
// the session token and a token the user wrote (file stale, signed with the
// current key) are shown. rotate changes the keys of verifyd and the
// user's copy, and returns the reasons the old tokens may be hidden for.
// After it, both old tokens leave the mount, `tokend list --all` says why,
// and a fresh session token signed with verifyd's new POOL key is shown.
// It returns the fresh session token.
func checkRotation(t *testing.T, e *env, v *verifydProc, stale string, rotate func() []string) []byte {
	t.Helper()
	session := e.sessionToken()
	if session == nil {
		t.Fatalf("no session token before the rotation:\n%s", e.statusJSON())
	}
	old := e.sign("user@test.example", time.Hour)
	e.put(stale, old)
	testenv.Eventually(t, goneWithin, "the token written before the rotation to be shown", func() bool {
		return e.showsToken(old)
	})
	if !e.showsToken(session) {
		t.Fatal("the session token went away before the rotation")
	}

	hiddenBefore := map[string]int{}
	for _, name := range []string{stale, "tokend-session"} {
		hiddenBefore[name] = len(e.hiddenReasons(name))
	}
	changed := time.Now()
	reasons := rotate()
	testenv.Eventually(t, goneWithin, "the stale tokens to leave the mount", func() bool {
		return !e.showsToken(old) && !e.showsToken(session)
	})
	t.Logf("stale tokens gone from the mount %v after the key change (polled by condorsim; make bench times it)", time.Since(changed).Round(time.Millisecond))
	e.running()
	for _, name := range []string{stale, "tokend-session"} {
		got := e.hiddenReasons(name)[hiddenBefore[name]:]
		if len(got) == 0 {
			t.Fatalf("tokend list --all shows no token of %s hidden by the rotation", name)
		}
		for _, r := range got {
			if !slices.Contains(reasons, r) {
				t.Errorf("%s hidden as %q, want one of %v", name, r, reasons)
			}
		}
	}

	var fresh []byte
	testenv.Eventually(t, freshWithin, "a fresh session token signed with the new key", func() bool {
		e.running()
		fresh = e.sessionToken()
		return fresh != nil && !bytes.Equal(fresh, session) &&
			token.VerifyWith(fresh, token.KeyDir{Dir: v.keys, WantUID: 0}) == nil
	})
	if e.showsToken(old) {
		t.Fatal("the stale token came back")
	}
	return fresh
}

// rotateRootAndUser installs a new POOL key for the user's issuer first,
// then for verifyd with install, and returns the reasons a rotation of this
// kind hides old tokens for.
func rotateRootAndUser(e *env, v *verifydProc, install func(t *testing.T, path string, file []byte), reasons ...string) func() []string {
	return func() []string {
		file := newKeyFile()
		e.setUserKey(token.PoolKeyName, file)
		install(e.t, filepath.Join(v.keys, token.PoolKeyName), file)
		return reasons
	}
}

// Every way a site replaces the POOL key: the stale tokens leave the mount
// and a fresh one signed with the new key comes.
func TestVerifydRotation(t *testing.T) {
	t.Run("in place", func(t *testing.T) {
		t.Parallel()
		e, v := startWithVerifyd(t)
		// A write in place may be seen half done (the file truncated):
		// verifyd then cannot tell for a moment, and the agent keeps the
		// old tokens until the new key is whole.
		checkRotation(t, e, v, "stale", rotateRootAndUser(e, v, writeRootKey, "rotated-key"))
	})
	t.Run("by rename", func(t *testing.T) {
		t.Parallel()
		e, v := startWithVerifyd(t)
		checkRotation(t, e, v, "stale", rotateRootAndUser(e, v, renameRootKey, "rotated-key"))
	})
	t.Run("deleted and recreated", func(t *testing.T) {
		t.Parallel()
		e, v := startWithVerifyd(t)
		checkRotation(t, e, v, "stale", func() []string {
			pool := filepath.Join(v.keys, token.PoolKeyName)
			gen := e.mustStatus().Validation.Generation
			if err := os.Remove(pool); err != nil {
				t.Fatal(err)
			}
			// While the key is missing verifyd cannot judge POOL tokens
			// (503 key-unavailable): the agent cannot tell and keeps
			// every token, even a forged one, until the new key comes.
			testenv.Eventually(t, goneWithin, "the agent to see verifyd's key generation move", func() bool {
				st, err := e.status()
				return err == nil && st.Validation.Generation > gen
			})
			since := time.Now()
			witness := e.forged("forged@test.example")
			e.put("witness", witness)
			testenv.Eventually(t, goneWithin, "a check pass with the key gone", func() bool {
				st := e.mustStatus()
				return st.Validation.LastCheck != nil && st.Validation.LastCheck.After(since)
			})
			if got := e.hiddenReasons("stale"); len(got) != 0 {
				t.Fatalf("with the key gone the stale token is hidden as %v; verifyd cannot tell, so it must stay", got)
			}
			if e.sessionToken() == nil || !e.showsToken(witness) {
				t.Fatalf("a token was hidden while verifyd had no POOL key:\n%s", e.statusJSON())
			}
			rotateRootAndUser(e, v, writeRootKey)()
			return []string{"rotated-key"}
		})
	})
	t.Run("directory removed and recreated", func(t *testing.T) {
		t.Parallel()
		e, v := startWithVerifyd(t)
		checkRotation(t, e, v, "stale", func() []string {
			file := newKeyFile()
			e.setUserKey(token.PoolKeyName, file)
			if err := os.RemoveAll(v.keys); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(v.keys, 0o700); err != nil {
				t.Fatal(err)
			}
			writeRootKey(t, filepath.Join(v.keys, token.PoolKeyName), file)
			// While the directory is gone verifyd holds no key and cannot
			// tell: the tokens go only once the new key is there.
			return []string{"rotated-key"}
		})
		// verifyd watches the new directory: a later rotation is seen too.
		checkRotation(t, e, v, "stale-again", rotateRootAndUser(e, v, renameRootKey, "rotated-key"))
	})
	t.Run("new key added", func(t *testing.T) {
		t.Parallel()
		e, v := startWithVerifyd(t)
		session := e.sessionToken()
		pooled := e.sign("user@test.example", time.Hour)
		e.put("pooled", pooled)
		gen := e.mustStatus().Validation.Generation

		writeRootKey(t, filepath.Join(v.keys, "AP"), newKeyFile())
		testenv.Eventually(t, goneWithin, "the agent to see the new key generation", func() bool {
			st, err := e.status()
			return err == nil && st.Validation.Generation > gen
		})
		// A token signed with the new key, then a witness only a
		// signature check can refuse: once the witness is hidden, the
		// agent has checked the new token with verifyd too.
		signed := e.signWith(v.keys, "AP", "ap@test.example")
		e.put("ap", signed)
		e.put("witness", e.forged("forged@test.example"))
		testenv.Eventually(t, goneWithin, "the forged witness to be hidden", func() bool {
			return slices.Equal(e.hiddenReasons("witness"), []string{"rotated-key"})
		})
		shown := e.shown()
		for name, tok := range map[string][]byte{"ap": signed, "pooled": pooled, "tokend-session": session} {
			if !slices.Equal(shown[name], []string{string(tok)}) {
				t.Errorf("%s: the tools read %q, want the token from before", name, shown[name])
			}
		}
		for _, tok := range e.tokens(true) {
			if tok.Name != "witness" && tok.State != "valid" {
				t.Errorf("%s hidden (%s) after a key was added", tok.Name, tok.Reason)
			}
		}
	})
}

// verifyd killed and started again while the agent runs: nothing is hidden
// while it is away, the agent reconnects and re-checks, and a later
// rotation is still seen.
func TestVerifydRestart(t *testing.T) {
	e, v := startWithVerifyd(t)
	session := e.sessionToken()
	good := e.sign("user@test.example", time.Hour)
	e.put("good", good)

	v.kill()
	e.waitVerifyd(false)
	// Checks made now cannot tell: they must not hide anything. The
	// witness is forged, but only verifyd could know.
	since := time.Now()
	during := e.sign("during@test.example", time.Hour)
	e.put("during", during)
	witness := e.forged("forged@test.example")
	e.put("witness", witness)
	testenv.Eventually(t, goneWithin, "a check pass after the writes", func() bool {
		st := e.mustStatus()
		return st.Validation.LastCheck != nil && st.Validation.LastCheck.After(since)
	})
	for _, tok := range [][]byte{session, good, during, witness} {
		if !e.showsToken(tok) {
			t.Fatalf("a token was hidden while verifyd was away:\n%s", e.statusJSON())
		}
	}

	v.start() // over the stale socket the killed one left
	e.waitVerifyd(true)
	testenv.Eventually(t, goneWithin, "the agent to re-check with verifyd back and hide the forged token", func() bool {
		return slices.Equal(e.hiddenReasons("witness"), []string{"rotated-key"})
	})
	for _, tok := range [][]byte{session, good, during} {
		if !e.showsToken(tok) {
			t.Fatalf("a good token was hidden after verifyd came back:\n%s", e.statusJSON())
		}
	}

	checkRotation(t, e, v, "stale", rotateRootAndUser(e, v, renameRootKey, "rotated-key"))
	e.running()
}

// No verifyd at all: the agent works and shows its tokens (nothing can
// tell a stale one); when verifyd appears, the agent uses it.
func TestVerifydAbsent(t *testing.T) {
	v := newVerifyd(t)
	e := newEnv(t, v.settings())
	e.start()
	st := e.mustStatus()
	if st.Validation.VerifydUp || st.Validation.KeyCheck != "verifyd" {
		t.Fatalf("without verifyd: verifyd_up %v, key_check %q", st.Validation.VerifydUp, st.Validation.KeyCheck)
	}
	session := e.sessionToken()
	if session == nil {
		t.Fatal("no session token without verifyd")
	}
	witness := e.forged("forged@test.example")
	e.put("witness", witness)
	if !e.showsToken(witness) {
		t.Fatal("without verifyd a token nothing can refuse was hidden")
	}

	writeRootKey(t, filepath.Join(v.keys, token.PoolKeyName), e.userKey(token.PoolKeyName))
	v.start()
	e.waitVerifyd(true)
	testenv.Eventually(t, goneWithin, "the forged token to be hidden once verifyd answers", func() bool {
		return slices.Equal(e.hiddenReasons("witness"), []string{"rotated-key"})
	})
	if !e.showsToken(session) {
		t.Fatalf("the session token was hidden once verifyd answered:\n%s", e.statusJSON())
	}
	e.noSecretsIn("verifyd", v.log.String())
}
