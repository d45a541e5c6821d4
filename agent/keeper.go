package agent

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/tokend/tokend/agent/fetch"
	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/token"
)

// sessionState is what the agent knows of the session token. Guarded by
// Agent.mu.
type sessionState struct {
	name      string
	state     string // api.Session* constants
	exp, iat  int64
	fetching  bool
	failures  int
	lastErr   string
	lastFetch time.Time
	requestID string
	next      time.Time // next fetch (refresh or retry); zero when none planned
}

// Backoff bounds for failed fetches.
const (
	backoffMin = time.Second
	backoffMax = 5 * time.Minute
	// rotationJitter spreads the refetches of every agent on a host after a
	// pool-wide key rotation, so they do not reach the schedd together.
	rotationJitter = 3 * time.Second
)

// keep is the agent's main loop: re-check tokens when anything changes, on
// a timer, and at the next expiry; fetch the session token when it is
// missing or due for refresh.
func (a *Agent) keep(ctx context.Context) {
	done := make(chan error, 1) // result of the running session fetch
	var fetching sync.WaitGroup // the fetch ends (its command killed) with ctx
	defer fetching.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	rotatedAt := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.changed:
		case <-a.rotated:
			rotatedAt = time.Now()
		case err := <-done:
			a.fetched(err)
		case <-timer.C:
		}
		a.validateAll(ctx)
		wake := a.planSession(rotatedAt)
		if a.startFetch() {
			fetching.Go(func() {
				_, err := a.fetchInto(ctx, a.session.name, fetch.Request{}, a.progress)
				done <- err
			})
		}
		timer.Reset(max(time.Until(wake), 0))
	}
}

// validateAll checks every shown token and hides those that fail.
func (a *Agent) validateAll(ctx context.Context) {
	cands, err := a.store.Candidates()
	if err != nil {
		a.log.Error("could not copy tokens for checking", "err", err)
		return
	}
	for _, c := range cands {
		r, by := a.checker.Check(ctx, c.Raw.Bytes(), &c.Token)
		c.Raw.Wipe()
		if r == token.Valid {
			continue
		}
		if a.store.Hide(c.ID, r, 0) {
			a.log.Warn("token hidden", "name", c.Name, "token", &c.Token, "reason", string(r), "check", by)
		}
	}
	a.mu.Lock()
	a.lastPass = time.Now()
	a.mu.Unlock()
}

// planSession updates the session token's state and decides when the agent
// must wake next: the next refresh or retry, the earliest expiry among shown
// tokens, or the periodic re-check.
func (a *Agent) planSession(rotatedAt time.Time) time.Time {
	now := time.Now()
	wake := now.Add(a.cfg.Validate.Interval.Std())
	margin := a.cfg.Validate.ExpMargin.Std()
	var session *token.Token
	for _, in := range a.store.Infos() {
		if in.Hidden {
			continue
		}
		if in.Token.Exp != 0 {
			wake = earliest(wake, time.Unix(in.Token.Exp, 0).Add(-margin))
		}
		if in.Name == a.session.name && session == nil {
			t := in.Token
			session = &t
		}
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	s := &a.session
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
			s.next = now
			// Drawn from now, not from the key change: agents learn of a
			// rotation at different moments, and drawing from the change
			// would bunch up everyone who learnt late.
			if !rotatedAt.IsZero() && now.Sub(rotatedAt) < rotationJitter {
				s.next = now.Add(rand.N(rotationJitter))
			}
		}
		s.state, s.exp, s.iat = api.SessionMissing, 0, 0
		if s.failures > 0 {
			s.state = api.SessionFailed
		}
	case s.state != api.SessionValid || s.iat != session.Iat || s.exp != session.Exp:
		// A new session token: plan its refresh once (the jitter must not
		// move at every pass).
		s.state, s.exp, s.iat = api.SessionValid, session.Exp, session.Iat
		s.next = time.Time{}
		if session.Exp != 0 {
			s.next = refreshTime(session.Iat, session.Exp, margin)
		}
	}
	if !s.next.IsZero() {
		wake = earliest(wake, s.next)
	}
	return wake
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

// startFetch marks a session fetch as started if one is due.
func (a *Agent) startFetch() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &a.session
	if s.fetching || s.next.IsZero() || time.Now().Before(s.next) {
		return false
	}
	s.fetching, s.state = true, api.SessionFetching
	return true
}

// resumeSession fetches a session token again for a new login, though the
// user removed the last one: a login starts with a fresh token.
func (a *Agent) resumeSession() {
	a.mu.Lock()
	if a.session.state == api.SessionRemoved {
		a.session.state = api.SessionMissing
	}
	a.mu.Unlock()
	poke(a.changed)
}

// progress records a long fetch's progress in the status.
func (a *Agent) progress(p fetch.Progress) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p.RequestID != "" && a.session.requestID != p.RequestID {
		a.session.requestID = p.RequestID
		a.session.state = api.SessionWaiting
		a.log.Info("waiting for an administrator to approve the token request", "request_id", p.RequestID,
			"approve_with", "condor_token_request_approve -reqid "+p.RequestID)
	}
}

// fetched records the end of a session fetch and plans a retry on failure.
func (a *Agent) fetched(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &a.session
	s.fetching = false
	s.requestID = ""
	if err == nil {
		s.failures, s.lastErr, s.lastFetch = 0, "", time.Now()
		s.next = time.Time{}
		return
	}
	s.failures++
	s.lastErr = err.Error()
	s.state = api.SessionFailed
	s.next = time.Now().Add(backoff(s.failures))
	a.log.Error("could not fetch the session token; will retry", "err", err, "failures", s.failures, "retry_at", s.next.Format(time.TimeOnly))
}

// backoff is exponential from backoffMin to backoffMax with full jitter on
// the upper half.
func backoff(failures int) time.Duration {
	d := backoffMin << min(failures-1, 20)
	d = min(d, backoffMax)
	return d/2 + rand.N(d/2+1)
}
