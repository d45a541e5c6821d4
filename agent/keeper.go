package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/tokend/tokend/agent/fetch"
	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/store"
	"github.com/tokend/tokend/token"
)

// sessionState is what the agent knows of a pool's session token. Guarded
// by Agent.mu.
type sessionState struct {
	name      string
	state     string // api.Session* constants
	exp, iat  int64  // exp: the effective one (SEC_TOKEN_MAX_AGE applied)
	fetching  bool
	failures  int
	lastErr   string
	lastFetch time.Time
	requestID string
	next      time.Time // next fetch (refresh or retry); zero when none planned
	rotatedAt time.Time // the pool's keys last changed (or verifyd came back)
	// unknownKeyAt is the key epoch + 1 at which the session token was
	// last fetched for being unknown-key (0: never): once per generation.
	// forUnknownKey: the planned fetch is that one; when it fails, it is
	// not retried (the token it would replace is still shown).
	unknownKeyAt  uint64
	forUnknownKey bool
	// firstCheck is the token just fetched, until a check pass has judged
	// it: one hidden then counts as a failed fetch.
	firstCheck *token.Token
}

// Backoff bounds for failed fetches.
const (
	backoffMin = time.Second
	backoffMax = 5 * time.Minute
	// rotationJitter spreads the refetches of every agent on a host after a
	// pool-wide key rotation, so they do not reach the schedd together.
	rotationJitter = 3 * time.Second
)

// fetchDone is the end of a pool's session fetch.
type fetchDone struct {
	p   *pool
	tok *token.Token // nil on failure
	err error
}

// keep is the agent's main loop: re-check tokens when anything changes, on
// a timer, and at the next expiry; fetch each pool's session token when it
// is missing or due for refresh. The pools' fetches run in parallel: one
// that hangs or fails holds back no other.
func (a *Agent) keep(ctx context.Context) {
	done := make(chan fetchDone, len(a.pools)) // at most one fetch per pool
	var fetching sync.WaitGroup                // the fetches end (their commands killed) with ctx
	defer fetching.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	rc := &rechecks{seen: map[uint64]uint64{}}
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.changed:
		case d := <-done:
			a.fetched(d)
		case <-timer.C:
		}
		a.validateAll(ctx)
		now := time.Now()
		wake := a.recheckRemembered(ctx, rc, now)
		infos := a.store.Infos()
		wake = earliest(wake, a.expiryWake(infos))
		for _, p := range a.pools {
			wake = earliest(wake, a.planSession(p, infos, now))
			if a.startFetch(p) {
				fetching.Go(func() {
					t, err := a.fetchInto(ctx, p, p.session.name, fetch.Request{}, a.progress(p))
					done <- fetchDone{p, t, err}
				})
			}
		}
		timer.Reset(max(time.Until(wake), 0))
	}
}

// validateAll checks every shown token with its pool's checks: a verdict
// that breaks the tools hides it (kept in memory when a key change may
// bring it back), any other verdict is noted (unknown-key), and "cannot
// tell" changes nothing.
func (a *Agent) validateAll(ctx context.Context) {
	cands, err := a.store.Candidates()
	if err != nil {
		a.log.Error("could not copy tokens for checking", "err", err)
		return
	}
	for _, c := range cands {
		v := a.router.Check(ctx, c.Raw.Bytes(), &c.Token)
		c.Raw.Wipe()
		switch {
		case v.Reason.Hides():
			if a.store.Hide(c.ID, v.Reason, a.epochOf(v.Pool)) {
				a.log.Warn("token hidden", "name", c.Name, "token", &c.Token, "reason", string(v.Reason), "check", v.By, "pool", v.Pool,
					"kept", v.Reason.Reversible())
			}
		case !v.CannotTell():
			a.store.Mark(c.ID, v.Reason)
		}
	}
	a.mu.Lock()
	a.lastPass = time.Now()
	a.mu.Unlock()
}

// rechecks is recheckRemembered's memory, kept by the keep loop.
type rechecks struct {
	last time.Time         // the last periodic re-check
	seen map[uint64]uint64 // remembered token id -> its pool's epoch + 1 when last checked
}

// recheckRemembered judges the hidden tokens kept in memory again: a
// not-yet-valid one once its time has come, a rotated-key one at each key
// change of its pool (and at the periodic check, for pools without key
// epochs). One that passes comes back, with the same name and bytes; one
// still rotated-key counts a miss (two zero it); one that expired
// meanwhile is zeroed. "Cannot tell" does nothing. It returns when it
// wants to run next.
func (a *Agent) recheckRemembered(ctx context.Context, rc *rechecks, now time.Time) time.Time {
	interval := a.cfg.Validate.Interval.Std()
	wake := now.Add(interval)
	all := a.recheck.Swap(false)
	if now.Sub(rc.last) >= interval {
		all, rc.last = true, now
	}
	margin := a.cfg.Validate.ExpMargin.Std()
	live := map[uint64]bool{}
	for _, r := range a.store.Remembered() {
		live[r.ID] = true
		switch q := a.router.Quick(&r.Token); q {
		case token.Valid:
		case token.NotYetValid:
			wake = earliest(wake, time.Unix(r.Token.Nbf, 0))
			continue
		default:
			if a.store.Forget(r.ID, q) {
				a.log.Info("a kept token is zeroed", "name", r.Name, "token", &r.Token, "reason", string(q))
			}
			continue
		}
		if e := a.router.Effective(r.Token); e.Exp != 0 {
			wake = earliest(wake, time.Unix(e.Exp, 0).Add(-margin))
		}
		pool := ""
		if p := a.poolOf(r.Token.Iss); p != nil {
			pool = p.cfg.Name
		}
		epoch := a.epochOf(pool)
		if _, ok := rc.seen[r.ID]; !ok && r.Reason == token.RotatedKey && r.Epoch == epoch && !all {
			rc.seen[r.ID] = epoch + 1 // just hidden in this epoch
		}
		if !all && rc.seen[r.ID] == epoch+1 {
			continue
		}
		rc.seen[r.ID] = epoch + 1
		a.recheckOne(ctx, r, epoch)
	}
	for id := range rc.seen {
		if !live[id] {
			delete(rc.seen, id)
		}
	}
	return wake
}

// recheckOne judges remembered token r at its pool's key epoch.
func (a *Agent) recheckOne(ctx context.Context, r store.Remembered, epoch uint64) {
	var raw *secmem.Buffer
	var err error
	if !a.store.WithRemembered(r.ID, func(b []byte) { raw, err = secmem.From(b) }) {
		return
	}
	if err != nil {
		a.log.Error("could not copy a kept token for checking", "name", r.Name, "err", err)
		return
	}
	v := a.router.Check(ctx, raw.Bytes(), &r.Token)
	raw.Wipe()
	switch {
	case !v.Reason.Hides() && (!v.CannotTell() || r.Reason == token.NotYetValid):
		// (A not-yet-valid token was refused for its time alone.)
		if a.store.Restore(r.ID) {
			a.log.Info("a kept token is back", "name", r.Name, "token", &r.Token, "was", string(r.Reason), "check", v.By, "pool", v.Pool)
		}
	case v.Reason == token.RotatedKey:
		if a.store.Missed(r.ID, epoch) {
			a.log.Info("a kept token is zeroed: it did not verify after two key changes", "name", r.Name, "token", &r.Token, "pool", v.Pool)
		}
	case v.Reason == token.NotYetValid:
	case v.Reason.Hides():
		if a.store.Forget(r.ID, v.Reason) {
			a.log.Info("a kept token is zeroed", "name", r.Name, "token", &r.Token, "reason", string(v.Reason), "check", v.By)
		}
	}
}

// expiryWake is the earliest moment a shown token reaches its expiry
// margin (its effective exp: SEC_TOKEN_MAX_AGE applied).
func (a *Agent) expiryWake(infos []store.Info) time.Time {
	var wake time.Time
	margin := a.cfg.Validate.ExpMargin.Std()
	for _, in := range infos {
		if in.Hidden {
			continue
		}
		if e := a.router.Effective(in.Token); e.Exp != 0 {
			at := time.Unix(e.Exp, 0).Add(-margin)
			if wake.IsZero() || at.Before(wake) {
				wake = at
			}
		}
	}
	if wake.IsZero() {
		return time.Now().Add(a.cfg.Validate.Interval.Std())
	}
	return wake
}

// planSession updates pool p's session token state and returns when the
// agent must wake next for it: the next refresh or retry, or the periodic
// re-check.
func (a *Agent) planSession(p *pool, infos []store.Info, now time.Time) time.Time {
	wake := now.Add(a.cfg.Validate.Interval.Std())
	margin := a.cfg.Validate.ExpMargin.Std()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &p.session
	var session *store.Info
	for i := range infos {
		if in := &infos[i]; in.Name == s.name && !in.Hidden {
			session = in
			break
		}
	}
	if s.firstCheck != nil {
		a.firstChecked(p, infos, now)
	}
	if s.fetching {
		return wake
	}
	switch {
	case session == nil && (s.state == api.SessionRemoved || s.state == api.SessionValid && !a.store.Has(s.name)):
		// The user removed it (tokend rm, rm, tokend wipe): they asked
		// for no token; `tokend fetch` brings one back. (A hidden token
		// leaves its file behind, invisible, and is fetched again.)
		s.state, s.exp, s.iat, s.next = api.SessionRemoved, 0, 0, time.Time{}
	case session == nil:
		// Plan a fetch when the token just went missing (hidden) or none
		// is planned; a failed fetch keeps its backoff.
		if s.state == api.SessionValid || s.next.IsZero() {
			s.next = a.soon(p, now)
		}
		s.forUnknownKey = false
		s.state, s.exp, s.iat = api.SessionMissing, 0, 0
		if s.failures > 0 {
			s.state = api.SessionFailed
		}
	default:
		exp := a.router.Effective(session.Token).Exp
		switch {
		case s.iat != session.Token.Iat || s.exp != exp || s.state == api.SessionMissing || s.state == api.SessionRemoved:
			// A new session token (or a new max age): plan its refresh
			// once (the jitter must not move at every pass).
			s.state, s.exp, s.iat = api.SessionValid, exp, session.Token.Iat
			s.next = time.Time{}
			if exp != 0 {
				s.next = refreshTime(session.Token.Iat, exp, margin)
			}
		case s.state != api.SessionValid:
			// A refresh failed: the token is still shown; the retry
			// keeps its backoff.
			s.state = api.SessionValid
		}
		if epoch := p.epoch.Load(); session.Reason == token.UnknownKey && s.unknownKeyAt != epoch+1 {
			// The pool has no key of its kid: a fresh token may have
			// one. Once per key generation; the fresh one replaces it.
			s.unknownKeyAt = epoch + 1
			s.next, s.forUnknownKey = a.soon(p, now), true
			a.log.Info("the pool has no key for the session token's kid; fetching a fresh one", "pool", p.cfg.Name, "name", s.name, "token", &session.Token)
		}
	}
	if !s.next.IsZero() {
		wake = earliest(wake, s.next)
	}
	return wake
}

// soon is when to fetch a pool's session token that is needed now: at
// once, or, just after a key change, after a random jitter (drawn from now,
// not from the key change: agents learn of a rotation at different moments,
// and drawing from the change would bunch up everyone who learnt late).
// Called with a.mu held.
func (a *Agent) soon(p *pool, now time.Time) time.Time {
	if at := p.session.rotatedAt; !at.IsZero() && now.Sub(at) < rotationJitter {
		return now.Add(rand.N(rotationJitter))
	}
	return now
}

// firstChecked looks at how the first check pass judged the token just
// fetched for p: one hidden at once counts as a failed fetch, so a pool
// whose fetches are refused by its own checks backs off rather than
// fetching in a loop. Called with a.mu held.
func (a *Agent) firstChecked(p *pool, infos []store.Info, now time.Time) {
	s := &p.session
	want := *s.firstCheck
	s.firstCheck = nil
	for _, in := range infos {
		if in.Name != s.name || in.Token != want {
			continue
		}
		if !in.Hidden {
			s.failures, s.lastErr = 0, ""
			return
		}
		s.failures++
		s.lastErr = fmt.Sprintf("the fetched token was hidden at its first check (%s): is the pool's signing key in sync?", in.Reason)
		s.state = api.SessionFailed
		s.next = now.Add(backoff(s.failures))
		a.log.Error("the fetched session token was hidden at its first check; will retry", "pool", p.cfg.Name, "reason", string(in.Reason),
			"failures", s.failures, "retry_at", s.next.Format(time.TimeOnly))
		return
	}
	// Replaced meanwhile (a write, tokend fetch): nothing to judge.
	s.failures, s.lastErr = 0, ""
}

// refreshTime is about two thirds into a token's life, jittered by a tenth
// of its life, and always before the expiry margin.
func refreshTime(iat, exp int64, margin time.Duration) time.Time {
	start, end := time.Unix(iat, 0), time.Unix(exp, 0)
	life := end.Sub(start)
	if life <= 0 {
		return time.Now()
	}
	at := start.Add(life * 2 / 3)
	if j := life / 10; j > 0 {
		at = at.Add(rand.N(j) - j/2)
	}
	return earliest(at, end.Add(-margin-time.Second))
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// startFetch marks p's session fetch as started if one is due.
func (a *Agent) startFetch(p *pool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &p.session
	if s.fetching || s.next.IsZero() || time.Now().Before(s.next) {
		return false
	}
	s.fetching, s.state = true, api.SessionFetching
	return true
}

// resumeSession fetches the session tokens again for a new login, though
// the user removed the last ones: a login starts with fresh tokens.
func (a *Agent) resumeSession() {
	a.mu.Lock()
	for _, p := range a.pools {
		if p.session.state == api.SessionRemoved {
			p.session.state = api.SessionMissing
		}
	}
	a.mu.Unlock()
	poke(a.changed)
}

// progress records a long fetch's progress in p's status.
func (a *Agent) progress(p *pool) func(fetch.Progress) {
	return func(pr fetch.Progress) {
		a.mu.Lock()
		defer a.mu.Unlock()
		s := &p.session
		if pr.RequestID != "" && s.requestID != pr.RequestID {
			s.requestID = pr.RequestID
			s.state = api.SessionWaiting
			a.log.Info("waiting for an administrator to approve the token request", "pool", p.cfg.Name, "request_id", pr.RequestID,
				"approve_with", "condor_token_request_approve -reqid "+pr.RequestID)
		}
	}
}

// fetched records the end of a session fetch and plans a retry on failure.
// A success counts once the first check pass has seen the token shown.
func (a *Agent) fetched(d fetchDone) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &d.p.session
	s.fetching = false
	s.requestID = ""
	once := s.forUnknownKey
	s.forUnknownKey = false
	if d.err == nil {
		s.lastFetch = time.Now()
		s.next = time.Time{}
		s.iat = 0 // plan the new token's refresh, whatever its claims
		s.firstCheck = d.tok
		return
	}
	s.failures++
	s.lastErr = d.err.Error()
	s.state = api.SessionFailed
	if once {
		// The unknown-key token is still shown: keep it until its
		// refresh, or the next key change.
		s.next, s.iat = time.Time{}, 0
		a.log.Error("could not fetch a session token to replace the unknown-key one; keeping it", "pool", d.p.cfg.Name, "err", d.err)
		return
	}
	s.next = time.Now().Add(backoff(s.failures))
	a.log.Error("could not fetch the session token; will retry", "pool", d.p.cfg.Name, "err", d.err, "failures", s.failures, "retry_at", s.next.Format(time.TimeOnly))
}

// backoff is exponential from backoffMin to backoffMax with full jitter on
// the upper half.
func backoff(failures int) time.Duration {
	d := backoffMin << min(failures-1, 20)
	d = min(d, backoffMax)
	return d/2 + rand.N(d/2+1)
}
