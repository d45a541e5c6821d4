package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tokend/tokend/agent/fetch"
	"github.com/tokend/tokend/agent/validate"
	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/token"
)

func TestBackoff(t *testing.T) {
	for failures, want := range map[int][2]time.Duration{
		1:   {500 * time.Millisecond, time.Second},
		2:   {time.Second, 2 * time.Second},
		5:   {8 * time.Second, 16 * time.Second},
		100: {backoffMax / 2, backoffMax},
	} {
		for range 100 {
			if d := (&policy{rand: rand.N[time.Duration]}).backoff(failures); d < want[0] || d > want[1] {
				t.Fatalf("backoff(%d) = %v, want within %v", failures, d, want)
			}
		}
	}
}

// Refresh is about two thirds into the life, jittered, and always before
// the expiry margin.
func TestRefreshTime(t *testing.T) {
	iat := time.Now().Unix()
	for _, c := range []struct {
		life, margin time.Duration
	}{
		{time.Hour, 30 * time.Second},
		{6 * time.Second, time.Second},
		{10 * time.Second, 30 * time.Second}, // margin longer than the life
	} {
		exp := iat + int64(c.life/time.Second)
		lo := time.Unix(iat, 0).Add(c.life*2/3 - c.life/20)
		hi := time.Unix(iat, 0).Add(c.life*2/3 + c.life/20)
		deadline := time.Unix(exp, 0).Add(-c.margin)
		seen := map[time.Time]bool{}
		for range 50 {
			at := (&policy{margin: c.margin, rand: rand.N[time.Duration]}).refreshAt(iat, exp, time.Now())
			if c.margin >= c.life && at.After(time.Unix(iat, 0)) {
				t.Fatalf("life %v margin %v: refresh at %v, want at once: the token is within its margin from the start", c.life, c.margin, at)
			}
			if at.After(deadline) && c.margin < c.life {
				t.Fatalf("life %v margin %v: refresh at %v is after exp-margin %v", c.life, c.margin, at, deadline)
			}
			if c.margin < c.life/3 && (at.Before(lo) || at.After(hi)) {
				t.Fatalf("life %v: refresh at %v, want within [%v, %v]", c.life, at, lo, hi)
			}
			seen[at] = true
		}
		if c.margin < c.life/3 && len(seen) < 10 {
			t.Errorf("life %v: only %d distinct refresh times in 50: no jitter", c.life, len(seen))
		}
	}
}

// switchKey is a key check whose answer the test changes: a verdict, or
// "cannot tell" when cannot is set.
type switchKey struct {
	mu     sync.Mutex
	r      token.Reason
	cannot bool
}

func (*switchKey) Name() string { return validate.KeyDir }

func (k *switchKey) set(r token.Reason, cannot bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.r, k.cannot = r, cannot
}

func (k *switchKey) CheckKey(context.Context, []byte, *token.Token) (token.Reason, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cannot {
		return "", validate.ErrCannotTell
	}
	return k.r, nil
}

// newTestAgent builds an agent (not mounted, not running) whose default
// pool has the key check k.
func newTestAgent(t *testing.T, k validate.KeyChecker, f fetch.Fetcher) *Agent {
	t.Helper()
	cfg := config.Default()
	cfg.Dir = "/nonexistent/tokend-test"
	cfg.Socket = "/nonexistent/tokend-test.sock"
	if f == nil {
		f = &fuzzFetcher{}
	}
	a, err := newAgent(Options{Config: cfg, Fetcher: f, Keys: []validate.KeyChecker{k}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.store.Close)
	return a
}

// putToken stores a fresh token (signed with fuzzKey) as file name.
func putToken(t *testing.T, a *Agent, name string) {
	t.Helper()
	raw, err := token.Sign(token.Claims{Issuer: "example.org", Subject: name + "@example.org", Lifetime: time.Hour, IssuedAt: time.Now()}, "POOL", fuzzKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.store.Put(name, append(raw, '\n'), a.router.Quick); err != nil {
		t.Fatal(err)
	}
}

// info returns the store's entries of name: shown or kept.
func info(a *Agent, name string) (shown, kept bool, misses int) {
	for _, in := range a.store.Infos() {
		if in.Name != name {
			continue
		}
		shown = shown || !in.Hidden
		kept = kept || in.Remembered
	}
	for _, r := range a.store.Remembered() {
		if r.Name == name {
			misses = r.Misses
		}
	}
	return shown, kept, misses
}

// A rotated-key token is kept; "cannot tell" neither restores it nor
// counts a miss; a miss counts once per key epoch and the second zeroes
// it; a good verdict at a key change brings it back. An unknown-key token
// stays shown.
func TestRememberedRechecks(t *testing.T) {
	ctx := context.Background()
	k := &switchKey{}
	a := newTestAgent(t, k, nil)
	p := a.pools[0]
	rc := &rechecks{seen: map[uint64]uint64{}}
	pass := func() {
		a.validateAll(ctx)
		a.recheckRemembered(ctx, rc, time.Now())
	}
	putToken(t, a, "a")
	putToken(t, a, "b")

	k.set(token.UnknownKey, false)
	pass()
	if shown, _, _ := info(a, "a"); !shown {
		t.Fatal("an unknown-key token was hidden")
	}
	k.set(token.RotatedKey, false)
	pass()
	if shown, kept, _ := info(a, "a"); shown || !kept {
		t.Fatalf("a rotated-key token: shown %v kept %v, want hidden and kept", shown, kept)
	}

	// Key changes the checks cannot judge: nothing happens.
	k.set("", true)
	for range 3 {
		a.onRotation(p, true, true)
		pass()
	}
	if shown, kept, misses := info(a, "a"); shown || !kept || misses != 0 {
		t.Fatalf("after key changes that cannot be told: shown %v kept %v misses %d", shown, kept, misses)
	}

	// A key change, still rotated-key: one miss, not two in one epoch.
	k.set(token.RotatedKey, false)
	a.onRotation(p, true, true)
	pass()
	a.recheck.Store(true) // a re-check in the same epoch
	pass()
	if _, kept, misses := info(a, "a"); !kept || misses != 1 {
		t.Fatalf("after one key change: kept %v misses %d, want kept with one miss", kept, misses)
	}

	// A good verdict at the next key change brings both back.
	k.set(token.Valid, false)
	a.onRotation(p, true, true)
	pass()
	for _, name := range []string{"a", "b"} {
		if shown, kept, _ := info(a, name); !shown || kept {
			t.Fatalf("%s after a good verdict at a key change: shown %v kept %v", name, shown, kept)
		}
	}

	// Two key changes without verifying: zeroed.
	k.set(token.RotatedKey, false)
	pass()
	for range 2 {
		a.onRotation(p, true, true)
		pass()
	}
	if shown, kept, _ := info(a, "a"); shown || kept {
		t.Fatalf("a token that missed two key changes: shown %v kept %v, want zeroed", shown, kept)
	}
}

// testPass runs one pass of agent a (not running) and returns the decision
// for pool p; the fetch it may start is left to the test.
func testPass(a *Agent, rc *rechecks, p *pool) decision {
	var got decision
	a.pass(context.Background(), rc, func(q *pool, d decision) {
		if q == p {
			got = d
		}
	})
	return got
}

// A fetched token hidden at its first check counts as a failed fetch: the
// next fetch waits for its backoff.
func TestFetchedHiddenBacksOff(t *testing.T) {
	ctx := context.Background()
	k := &switchKey{}
	k.set("", true) // the fetch's own check cannot tell
	a := newTestAgent(t, k, nil)
	p := a.pools[0]
	rc := &rechecks{seen: map[uint64]uint64{}}
	if !testPass(a, rc, p).Fetch {
		t.Fatal("no fetch of the missing session token")
	}
	tok, err := a.fetchInto(ctx, p, p.cfg.SessionToken, fetch.Request{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a.deliver(p, func(ib *inbox) { ib.done = &fetchResult{tok, nil} })
	k.set(token.RotatedKey, false) // the pass can
	now := time.Now()
	for range 2 {
		if testPass(a, rc, p).Fetch {
			t.Fatal("a fetch started at once after the fetched token was hidden")
		}
	}
	s, st := p.session, a.poolStatus(p, a.store.Infos()).Session
	if s.failures != 1 || st.State != api.SessionFailed || !s.next.After(now) || !strings.Contains(s.lastErr, "hidden at its first check") {
		t.Fatalf("after the fetched token was hidden: %+v (%s), want a failure with a backoff", s, st.State)
	}
}

// A not-yet-valid token is kept and comes back once its time has come,
// even when no key check can tell (time was the only objection).
func TestNotYetValidReturns(t *testing.T) {
	ctx := context.Background()
	k := &switchKey{}
	k.set("", true)
	a := newTestAgent(t, k, nil)
	now := time.Now()
	a.pools[0].checker.Now = func() time.Time { return now }
	j := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss": "example.org", "sub": "u@example.org", "iat": now.Unix(), "nbf": now.Unix() + 60, "exp": now.Unix() + 3600})
	j.Header = map[string]any{"alg": "HS256", "kid": "POOL"}
	s, err := j.SignedString(fuzzKey)
	if err != nil {
		t.Fatal(err)
	}
	raw := []byte(s)
	if _, err := a.store.Put("later", append(raw, '\n'), a.router.Quick); err != nil {
		t.Fatal(err)
	}
	rc := &rechecks{seen: map[uint64]uint64{}}
	if wake := a.recheckRemembered(ctx, rc, now); wake.After(now.Add(time.Minute)) {
		t.Fatalf("the next re-check at %v, want by the token's nbf", wake)
	}
	if shown, kept, _ := info(a, "later"); shown || !kept {
		t.Fatalf("a not-yet-valid token: shown %v kept %v, want kept", shown, kept)
	}
	now = now.Add(2 * time.Minute)
	a.recheckRemembered(ctx, rc, now)
	if shown, kept, _ := info(a, "later"); !shown || kept {
		t.Fatalf("a not-yet-valid token past its nbf: shown %v kept %v, want shown", shown, kept)
	}
}

// The pool's own session token with a kid the pool has no key for is
// fetched again once per key generation; a failure of that fetch is not
// retried while the token is shown.
func TestUnknownKeySessionOncePerEpoch(t *testing.T) {
	k := &switchKey{}
	a := newTestAgent(t, k, nil)
	p := a.pools[0]
	putToken(t, a, p.cfg.SessionToken)
	k.set(token.UnknownKey, false)
	rc := &rechecks{seen: map[uint64]uint64{}}
	plan := func() bool { return testPass(a, rc, p).Fetch }
	if !plan() {
		t.Fatal("no fetch for an unknown-key session token")
	}
	a.deliver(p, func(ib *inbox) { ib.done = &fetchResult{err: errors.New("the schedd is away")} })
	for range 3 {
		if plan() {
			t.Fatalf("the failed fetch for an unknown-key session token is retried: %+v", p.session)
		}
	}
	if s, st := p.session, a.poolStatus(p, a.store.Infos()).Session; s.failures != 1 || st.State != api.SessionValid || s.next.IsZero() || s.next.Before(time.Now().Add(time.Minute)) {
		t.Fatalf("after the failed fetch: %+v (%s), want the token kept to its refresh, the failure counted", s, st.State)
	}
	a.onRotation(p, true, false)
	if !plan() {
		t.Fatal("no fetch for the unknown-key session token after a key change")
	}
}
