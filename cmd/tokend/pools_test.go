package main

// End-to-end tests of several pools: each token is judged only by the
// checks of the pool its iss belongs to, each pool fetches and keeps its
// own session token, and a rotation in one pool costs nothing in another.
// The default pool of newEnv has no trust domain configured (so it claims
// every iss no other pool claims, as setups of one pool always did), a
// local issuer signing as test.example, and validate.key_dir.

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/token"
)

// poolEnv is another pool of an env: its own trust domain and key
// directory, from which a local issuer signs its session token and which
// its validate.key_dir reads.
type poolEnv struct {
	e    *env
	name string
	td   string
	keys string
}

// addPool configures [pools.NAME] (before the agent starts).
func (e *env) addPool(name, td string) *poolEnv {
	e.t.Helper()
	p := &poolEnv{e: e, name: name, td: td, keys: filepath.Join(e.work, "keys-"+name)}
	e.mkdir(p.keys)
	e.writeKeyIn(p.keys, token.PoolKeyName)
	k := "pools." + name + "."
	e.set(map[string]string{
		k + "trust_domain":        strconv.Quote(td),
		k + "fetch.local.key_dir": strconv.Quote(p.keys),
		k + "validate.key_dir":    strconv.Quote(p.keys),
	})
	return p
}

// session is the file name of the pool's session token.
func (p *poolEnv) session() string { return "tokend-" + p.name }

// sign makes a token of the pool, with its current POOL key.
func (p *poolEnv) sign(sub string) []byte {
	p.e.t.Helper()
	return p.e.signBy(p.keys, p.td, sub)
}

// rotate gives the pool a new POOL key.
func (p *poolEnv) rotate() { p.e.writeKeyIn(p.keys, token.PoolKeyName) }

// signBy signs a token with the POOL key of dir, as iss.
func (e *env) signBy(dir, iss, sub string) []byte {
	e.t.Helper()
	return e.signClaims(dir, token.PoolKeyName, token.Claims{Issuer: iss, Subject: sub, Lifetime: time.Hour, IssuedAt: time.Now()})
}

// foreign signs a token of iss with kid POOL and a key this host never
// had: another pool's token, as a flocking user keeps it.
func (e *env) foreign(iss, sub string) []byte {
	e.t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	now := time.Now().Unix()
	return e.signRaw(token.PoolKeyName, key, jwt.MapClaims{"iss": iss, "sub": sub, "iat": now, "exp": now + 3600})
}

// poolStatus returns pool name's status.
func (e *env) poolStatus(name string) api.PoolStatus {
	e.t.Helper()
	st := e.mustStatus()
	for _, p := range st.Pools {
		if p.Name == name {
			return p
		}
	}
	e.t.Fatalf("no pool %q in the status:\n%s", name, e.statusJSON())
	return api.PoolStatus{}
}

// listed returns `tokend list --all --json`'s entries for name.
func (e *env) listed(name string) []api.Token {
	e.t.Helper()
	var out []api.Token
	for _, tok := range e.tokens(true) {
		if tok.Name == name {
			out = append(out, tok)
		}
	}
	return out
}

// waitFresh waits for a session token other than old and returns it.
func (e *env) waitFresh(old []byte) []byte {
	e.t.Helper()
	var fresh []byte
	testenv.Eventually(e.t, freshWithin, "a fresh session token", func() bool {
		e.running()
		fresh = e.sessionToken()
		return fresh != nil && !bytes.Equal(fresh, old)
	})
	return fresh
}

// waitPass pokes the agent (a token written) and waits for the check pass
// that follows.
func (e *env) waitPass() {
	e.t.Helper()
	since := time.Now()
	e.put("witness", e.sign("witness@test.example", time.Hour))
	testenv.Eventually(e.t, goneWithin, "a check pass", func() bool {
		st := e.mustStatus()
		return st.Validation.LastCheck != nil && st.Validation.LastCheck.After(since)
	})
}

// waitShown waits until the tools read exactly toks from file name.
func (e *env) waitShown(name string, toks ...[]byte) {
	e.t.Helper()
	want := make([]string, len(toks))
	for i, t := range toks {
		want[i] = string(t)
	}
	testenv.Eventually(e.t, goneWithin, name+" to be shown", func() bool {
		return slices.Equal(e.shown()[name], want)
	})
}

// A token of another pool (another iss, kid POOL, another key) survives
// this pool's rotation byte for byte: no check of this pool speaks for it.
func TestOtherPoolSurvivesRotation(t *testing.T) {
	t.Run("verifyd knows its trust domain", func(t *testing.T) {
		t.Parallel()
		v := newVerifyd(t)
		v.d.TrustDomain = "test.example"
		e := newEnv(t, v.settings())
		writeRootKey(t, filepath.Join(v.keys, token.PoolKeyName), e.userKey(token.PoolKeyName))
		v.start()
		e.start()
		e.waitVerifyd(true)
		testenv.Eventually(t, goneWithin, "the agent to learn verifyd's trust domain", func() bool {
			p := e.poolStatus(config.DefaultPool)
			return p.TrustDomain == "test.example" && p.TrustFrom == api.TrustFromVerifyd && !p.ClaimsOther
		})
		flock := e.foreign("flock.example", "me@flock.example")
		e.put("flock", flock)
		e.waitShown("flock", flock)

		checkRotation(t, e, v, "stale", rotateRootAndUser(e, v, renameRootKey, "rotated-key"))
		if got := e.shown()["flock"]; !slices.Equal(got, []string{string(flock)}) {
			t.Fatalf("the other pool's token after the rotation: the tools read %q", got)
		}
		if l := e.listed("flock"); len(l) != 1 || l[0].Pool != "" || l[0].State != api.StateValid || l[0].Reason != "" {
			t.Fatalf("tokend list: %+v, want one token of no pool, valid", l)
		}
	})
	t.Run("unknown trust domain, the other pool configured", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		e.addPool("other", "other.example")
		e.set(map[string]string{"pools.other.validate.key_dir": ""}) // no check of its own
		e.start()
		if p := e.poolStatus(config.DefaultPool); p.TrustDomain != "" || !p.ClaimsOther {
			t.Fatalf("the default pool: %+v, want an unknown trust domain that claims other issuers", p)
		}
		flock := e.foreign("other.example", "me@other.example")
		e.put("flock", flock)
		e.waitShown("flock", flock)
		session := e.sessionToken()
		stale := e.sign("user@test.example", time.Hour)
		e.put("stale", stale)
		e.waitShown("stale", stale)

		e.writeKey(token.PoolKeyName) // this pool's rotation
		testenv.Eventually(t, goneWithin, "this pool's stale tokens to leave the mount", func() bool {
			return !e.showsToken(stale) && !e.showsToken(session)
		})
		e.waitFresh(session)
		if got := e.shown()["flock"]; !slices.Equal(got, []string{string(flock)}) {
			t.Fatalf("the other pool's token after the rotation: the tools read %q", got)
		}
		if l := e.listed("flock"); len(l) != 1 || l[0].Pool != "other" || l[0].State != api.StateValid {
			t.Fatalf("tokend list: %+v, want one token of pool other, valid", l)
		}
		if l := e.listed("stale"); len(l) == 0 || l[0].Pool != config.DefaultPool || l[0].Reason != "rotated-key" {
			t.Fatalf("tokend list: %+v, want the stale token hidden as rotated-key in the default pool", l)
		}
	})
}

// A token whose kid the pool has no key for stays shown (the tools skip it
// harmlessly) and costs no fetch. Only the pool's own session token is
// fetched again for it, once per key generation.
func TestUnknownKeyShown(t *testing.T) {
	t.Run("a user's token", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		e.start()
		fetched := e.mustStatus().Session.LastFetch
		key := make([]byte, 32)
		rand.Read(key)
		now := time.Now().Unix()
		old := e.signRaw("OLD", key, jwt.MapClaims{"iss": "test.example", "sub": "u@test.example", "iat": now, "exp": now + 3600})
		e.put("old", old)
		testenv.Eventually(t, goneWithin, "the token to be noted unknown-key", func() bool {
			l := e.listed("old")
			return len(l) == 1 && l[0].Reason == api.ReasonUnknownKey
		})
		if l := e.listed("old")[0]; l.State != api.StateValid || l.Pool != config.DefaultPool {
			t.Fatalf("tokend list: %+v, want shown (valid) in the default pool", l)
		}
		if got := e.shown()["old"]; !slices.Equal(got, []string{string(old)}) {
			t.Fatalf("the tools read %q from old, want the token", got)
		}
		if st := e.mustStatus(); !st.Session.LastFetch.Equal(*fetched) {
			t.Fatalf("a user's unknown-key token made the agent fetch: last fetch %v, was %v", st.Session.LastFetch, fetched)
		}
	})
	t.Run("the session token", func(t *testing.T) {
		t.Parallel()
		// The issuer signs with AP, which the pool's key directory lacks.
		e := newEnv(t, nil)
		issuer := filepath.Join(e.work, "issuer-keys")
		e.mkdir(issuer)
		e.writeKeyIn(issuer, "AP")
		e.set(map[string]string{"fetch.local.key_dir": strconv.Quote(issuer), "fetch.local.key": `"AP"`})
		e.start()
		fetches := func() int { return strings.Count(e.log.String(), `msg="token fetched" component=agent pool=default`) }
		// The token fetched is unknown-key: it is kept, and it was this
		// key generation's fetch.
		e.waitPass()
		if n := fetches(); n != 1 {
			t.Fatalf("%d fetches of the session token within one key generation, want 1:\n%s", n, e.log)
		}
		if l := e.listed("tokend-session"); len(l) != 1 || l[0].Reason != api.ReasonUnknownKey || l[0].State != api.StateValid {
			t.Fatalf("the session token: %+v, want shown as unknown-key", l)
		}
		// A key change: one fetch more, and no other.
		e.writeKey("X")
		testenv.Eventually(t, freshWithin, "a fetch in the new key generation", func() bool {
			return fetches() == 2
		})
		e.waitPass()
		if n := fetches(); n != 2 {
			t.Fatalf("%d fetches of the session token after one key change, want 2:\n%s", n, e.log)
		}
	})
}

// Two pools: each gets and keeps its own session token, and each pool's
// rotation refreshes only its own. tokend fetch --pool names the pool; a
// pool whose fetch hands back another pool's token is refused and says so,
// and holds back nothing else.
func TestTwoPools(t *testing.T) {
	t.Run("rotations", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		b := e.addPool("b", "b.example")
		e.start()
		var sessionB []byte
		testenv.Eventually(t, freshWithin, "pool b's session token", func() bool {
			e.running()
			toks := e.shown()[b.session()]
			if len(toks) == 1 {
				sessionB = []byte(toks[0])
			}
			return sessionB != nil && e.poolStatus("b").Session.State == api.SessionValid
		})
		sessionA := e.sessionToken()
		if tok, err := token.Parse(sessionB); err != nil || tok.Iss != "b.example" {
			t.Fatalf("pool b's session token: %+v %v, want iss b.example", tok, err)
		}
		for _, l := range []struct{ name, pool string }{{"tokend-session", config.DefaultPool}, {b.session(), "b"}} {
			if got := e.listed(l.name); len(got) != 1 || got[0].Pool != l.pool {
				t.Fatalf("%s: %+v, want one token of pool %s", l.name, got, l.pool)
			}
		}

		// The default pool's rotation: its session token is refreshed,
		// b's bytes stay.
		e.writeKey(token.PoolKeyName)
		sessionA = e.waitFresh(sessionA)
		if got := e.shown()[b.session()]; !slices.Equal(got, []string{string(sessionB)}) {
			t.Fatalf("pool b's session token changed with the default pool's rotation")
		}
		// And the other way round.
		b.rotate()
		testenv.Eventually(t, freshWithin, "a fresh session token of pool b", func() bool {
			e.running()
			toks := e.shown()[b.session()]
			return len(toks) == 1 && toks[0] != string(sessionB)
		})
		if got := e.sessionToken(); !bytes.Equal(got, sessionA) {
			t.Fatalf("the default session token changed with pool b's rotation")
		}

		// tokend fetch --pool.
		if _, stderr, code := e.cli("fetch", "--pool", "b", "--name", "x"); code != 0 {
			t.Fatalf("tokend fetch --pool b: exit %d: %s", code, stderr)
		}
		x := e.shown()["x"]
		if len(x) != 1 {
			t.Fatalf("tokend fetch --pool b --name x: the tools read %q", x)
		}
		if tok, err := token.Parse([]byte(x[0])); err != nil || tok.Iss != "b.example" {
			t.Fatalf("the token fetched for pool b: %+v %v", tok, err)
		}
		_, stderr, code := e.cli("fetch", "--pool", "nope")
		if code == 0 || !strings.Contains(stderr, `no pool named "nope" (pools: default, b)`) {
			t.Fatalf("tokend fetch --pool nope: exit %d: %s", code, stderr)
		}
	})
	t.Run("a fetch of the wrong pool", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		e.addPool("b", "b.example")
		// Pool b's command hands back a token of the default pool, once
		// told to: until then it hangs, and the default pool's fetch
		// must not wait for it.
		wrong := e.sign("user@test.example", time.Hour)
		tokFile := filepath.Join(e.work, "wrong-token")
		e.writeFile(tokFile, string(wrong)+"\n", 0o600)
		goFile := filepath.Join(e.work, "go")
		cmd := e.standIn("fetch-b", `while [ ! -e `+goFile+` ]; do sleep 0.05; done
cat `+tokFile+`
`)
		e.set(map[string]string{
			"pools.b.fetch.method":  `"exec"`,
			"pools.b.fetch.command": "[" + quote(cmd) + "]",
		})
		e.start() // the default pool's session token, while b's fetch hangs
		if s := e.poolStatus("b").Session; s.State != api.SessionFetching {
			t.Fatalf("pool b's session: %+v, want fetching", s)
		}
		e.writeFile(goFile, "", 0o600)
		testenv.Eventually(t, freshWithin, "pool b to report the refused token", func() bool {
			e.running()
			p := e.poolStatus("b")
			return strings.Contains(p.LastError, `has iss "test.example"`) && p.Session.State == api.SessionFailed
		})
		if p := e.poolStatus("b"); !strings.Contains(p.LastError, "refused") || !strings.Contains(p.LastError, "[pools.b.fetch]") {
			t.Fatalf("pool b's last error %q does not say the token was refused and what to check", p.LastError)
		}
		if l := e.listed("tokend-b"); len(l) != 0 {
			t.Fatalf("the refused token was stored: %+v", l)
		}
		if _, err := os.Lstat(filepath.Join(e.dir, "tokend-b")); err == nil {
			t.Fatal("the mount shows tokend-b")
		}
		if e.sessionToken() == nil {
			t.Fatal("the default pool's session token went away")
		}
	})
}

// An expired token is never shown, whatever its pool: the tools, reading
// all the while, never see one.
func TestExpiredNeverShown(t *testing.T) {
	e := newEnv(t, map[string]string{"trust_domain": `"test.example"`})
	e.addPool("b", "b.example")
	e.start()
	now := time.Now().Unix()
	other := make([]byte, 32)
	rand.Read(other)
	expired := map[string][]byte{
		"mine":   e.signRaw(token.PoolKeyName, nil, jwt.MapClaims{"iss": "test.example", "sub": "u@test.example", "iat": now - 7200, "exp": now - 60}),
		"margin": e.signRaw(token.PoolKeyName, nil, jwt.MapClaims{"iss": "test.example", "sub": "u@test.example", "iat": now - 7200, "exp": now + 5}),
		"b":      e.signRaw(token.PoolKeyName, nil, jwt.MapClaims{"iss": "b.example", "sub": "u@b.example", "iat": now - 7200, "exp": now - 60}),
		// Of no pool: only its claims are checked.
		"nowhere": e.signRaw(token.PoolKeyName, other, jwt.MapClaims{"iss": "nowhere.example", "sub": "u@nowhere.example", "iat": now - 7200, "exp": now - 1}),
	}

	var w struct {
		Reads int
		Seen  []string
	}
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		stdout, stderr, code := e.runAs(e.u, "", e.simBin, "watch", e.dir, "3")
		if code != 0 {
			t.Errorf("condorsim watch: exit %d: %s", code, stderr)
			return
		}
		if err := json.Unmarshal([]byte(stdout), &w); err != nil {
			t.Errorf("condorsim watch: %v", err)
		}
	}()
	for round := range 3 {
		for name, tok := range expired {
			// Refused or hidden at once: either way never shown.
			e.write("write", name+strconv.Itoa(round), tok)
		}
	}
	<-watched
	if w.Reads == 0 {
		t.Fatal("condorsim watch made no read")
	}
	for _, seen := range w.Seen {
		e.secrets = append(e.secrets, []byte(seen))
		for name, tok := range expired {
			if seen == string(tok) {
				t.Errorf("the tools read the expired token %s (%d reads)", name, w.Reads)
			}
		}
	}
	for _, tok := range e.tokens(false) {
		if tok.Exp != nil && *tok.Exp < now+60 && !strings.HasPrefix(tok.Name, "tokend-") {
			t.Errorf("tokend list shows %s (exp %d)", tok.Name, *tok.Exp)
		}
	}
}

// Every bad pools configuration stops the agent at start with an error
// that names the key.
func TestBadPoolsConfig(t *testing.T) {
	for _, c := range []struct {
		name     string
		settings map[string]string
		want     string
	}{
		{"no trust domain", map[string]string{"pools.b.fetch.local.key_dir": `"/k"`}, "pools.b.trust_domain"},
		{"a trust domain twice", map[string]string{
			"pools.b.trust_domain": `"x.example"`, "pools.b.fetch.local.key_dir": `"/k"`,
			"pools.c.trust_domain": `"x.example"`, "pools.c.fetch.local.key_dir": `"/k"`,
		}, "pools.c.trust_domain"},
		{"the default's trust domain", map[string]string{
			"trust_domain":         `"test.example"`,
			"pools.b.trust_domain": `"test.example"`, "pools.b.fetch.local.key_dir": `"/k"`,
		}, "pools.b.trust_domain"},
		{"a session token name twice", map[string]string{
			"pools.b.trust_domain": `"b.example"`, "pools.b.fetch.local.key_dir": `"/k"`, "pools.b.session_token": `"tokend-session"`,
		}, "pools.b.session_token"},
		{"no target", map[string]string{"pools.b.trust_domain": `"b.example"`}, "pools.b.fetch.local.key_dir"},
		{"no target to exec", map[string]string{"pools.b.trust_domain": `"b.example"`, "pools.b.fetch.method": `"exec"`}, "pools.b.fetch.pool"},
		{"an unknown key", map[string]string{
			"pools.b.trust_domain": `"b.example"`, "pools.b.fetch.local.key_dir": `"/k"`, "pools.b.fetch.lifetme": `"1h"`,
		}, "pools.b.fetch.lifetime"},
		{"the default pool's name", map[string]string{"pools.default.trust_domain": `"d.example"`}, "pools.default"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, c.settings)
			e.launchCmd(e.agentCmd())
			code := e.waitExit(20 * time.Second)
			e.nothingLeft()
			if out := e.log.String(); code != exitUsage || !strings.Contains(out, c.want) {
				t.Fatalf("exit %d, want %d with an error naming %s:\n%s", code, exitUsage, c.want, out)
			}
		})
	}
}

// Where the pool sets SEC_TOKEN_MAX_AGE (verifyd reports it), a token whose
// iat is older is hidden as expired, and the session token is refreshed
// before its iat + max age, with no moment when the tools find none.
func TestMaxAge(t *testing.T) {
	v := newVerifyd(t)
	v.d.TrustDomain = "test.example"
	v.d.Env = []string{"_CONDOR_SEC_TOKEN_MAX_AGE=9"}
	settings := v.settings()
	settings["validate.exp_margin"] = `"1s"`
	e := newEnv(t, settings)
	writeRootKey(t, filepath.Join(v.keys, token.PoolKeyName), e.userKey(token.PoolKeyName))
	v.start()
	e.start()
	e.waitVerifyd(true)
	testenv.Eventually(t, goneWithin, "the agent to learn the pool's max age", func() bool {
		return e.poolStatus(config.DefaultPool).TokenMaxAge == 9
	})

	now := time.Now().Unix()
	old := e.signRaw(token.PoolKeyName, nil, jwt.MapClaims{"iss": "test.example", "sub": "old@test.example", "iat": now - 60, "exp": now + 3600})
	e.write("write", "old", old) // refused, or hidden at once
	testenv.Eventually(t, goneWithin, "the token past the max age to be judged", func() bool {
		l := e.listed("old")
		return len(l) == 0 || !slices.ContainsFunc(l, func(t api.Token) bool { return t.State == api.StateValid })
	})
	if e.showsToken(old) {
		t.Fatal("a token past SEC_TOKEN_MAX_AGE is shown")
	}
	for _, l := range e.listed("old") {
		if l.Reason != "expired" {
			t.Fatalf("the token past the max age is hidden as %q, want expired", l.Reason)
		}
	}

	var w struct {
		Reads    int
		NoToken  int `json:"no_token"`
		Failures []string
		Distinct int
		Seen     []string
	}
	e.sim(e.u, &w, "", "watch", e.dir, "12")
	for _, s := range w.Seen {
		e.secrets = append(e.secrets, []byte(s))
	}
	t.Logf("%d reads, %d distinct session tokens, %d failed reads", w.Reads, w.Distinct, len(w.Failures))
	if w.Distinct < 2 {
		t.Fatalf("the session token was not refreshed in 12 s (max age 9 s): %+v\n%s", w, e.statusJSON())
	}
	if w.NoToken > len(w.Failures) {
		t.Fatalf("%d of %d reads found no token (beyond %d reads that raced a replacement)", w.NoToken, w.Reads, len(w.Failures))
	}
	for _, s := range w.Seen {
		if s == string(old) {
			t.Fatal("the tools read the token past the max age")
		}
	}
	st := e.poolStatus(config.DefaultPool)
	if st.Session.State != api.SessionValid || st.Session.Exp == nil {
		t.Fatalf("status after refreshes: %+v", st.Session)
	}
	if tok, err := token.Parse(e.sessionToken()); err != nil || *st.Session.Exp != tok.Iat+9 {
		t.Fatalf("the session token's expiry in the status: %d, want its iat + 9 (%+v, %v)", *st.Session.Exp, tok, err)
	}
}
