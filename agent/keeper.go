package agent

import (
	"cmp"
	"context"
	"sync"
	"time"

	"github.com/tokend/tokend/agent/fetch"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/store"
	"github.com/tokend/tokend/token"
)

// keep is the agent's main loop, one wake-up channel (a.changed) and a
// timer: re-check tokens when anything changes (a token, a key, the end of
// a fetch, a slot granted, a tool waiting at a gate), on a timer, and at the
// next expiry; then ask each pool's policy (policy.go) what to do about its
// session token and do it. The pools' fetches run in parallel: one that
// hangs or fails holds back no other.
func (a *Agent) keep(ctx context.Context) {
	var running sync.WaitGroup // fetches, slot requests, gate watchers: they end with ctx
	defer running.Wait()
	defer a.openGates()
	timer := time.NewTimer(0)
	defer timer.Stop()
	rc := &rechecks{seen: map[uint64]uint64{}}
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.changed:
		case <-timer.C:
		}
		wake := a.pass(ctx, rc, func(p *pool, d decision) { a.act(ctx, &running, p, d) })
		timer.Reset(max(time.Until(wake), 0))
	}
}

// pass runs one check pass, then each pool's policy; act carries out a
// pool's decision. It returns when the next pass must run at the latest.
func (a *Agent) pass(ctx context.Context, rc *rechecks, act func(*pool, decision)) time.Time {
	// What happened is taken before the checks: a fetch reported done
	// stored its token before, so this pass judges it.
	ins := a.takeInboxes()
	a.validateAll(ctx)
	now := time.Now()
	wake := a.recheckRemembered(ctx, rc, now)
	infos := a.store.Infos()
	wake = earliest(wake, a.expiryWake(infos))
	for i, p := range a.pools {
		in := ins[i]
		in.Now = now
		in.View = a.sessionView(p, infos)
		in.Epoch = p.epoch.Load()
		in.Slots = p.slotsUp()
		a.mu.Lock()
		var d decision
		p.session, d = p.policy.decide(p.session, in)
		a.mu.Unlock()
		act(p, d)
		wake = earliest(wake, d.Wake)
	}
	return wake
}

// inbox is what happened to a pool between two passes. Guarded by Agent.mu.
type inbox struct {
	done         *fetchResult
	requestID    string
	resume       bool
	unknownKeyAt uint64
	slots        []slotAnswer
	waitingAt    gate // the gate a tool arrived at
	rotatedAt    time.Time
}

// deliver records something that happened to p and wakes the loop.
func (a *Agent) deliver(p *pool, f func(*inbox)) {
	a.mu.Lock()
	f(&p.inbox)
	a.mu.Unlock()
	poke(a.changed)
}

// takeInboxes returns each pool's inputs from what happened since the last
// pass.
func (a *Agent) takeInboxes() []policyIn {
	a.mu.Lock()
	defer a.mu.Unlock()
	ins := make([]policyIn, len(a.pools))
	for i, p := range a.pools {
		ib := &p.inbox
		ins[i] = policyIn{
			Done:         ib.done,
			RequestID:    ib.requestID,
			Resume:       ib.resume,
			SlotAnswers:  ib.slots,
			ToolWaiting:  ib.waitingAt != nil && ib.waitingAt == p.gate,
			UnknownKeyAt: ib.unknownKeyAt,
			RotatedAt:    ib.rotatedAt,
		}
		if ib.done != nil {
			ib.requestID = ""
		}
		ib.done, ib.resume, ib.slots = nil, false, nil
	}
	return ins
}

// sessionView finds p's session token in infos: the shown one, else the
// latest hidden one.
func (a *Agent) sessionView(p *pool, infos []store.Info) sessionView {
	var shown, hidden *store.Info
	for i := range infos {
		switch in := &infos[i]; {
		case in.Name != p.cfg.SessionToken:
		case !in.Hidden:
			shown = cmp.Or(shown, in)
		case hidden == nil || in.ID > hidden.ID:
			hidden = in
		}
	}
	v := sessionView{Present: a.store.Has(p.cfg.SessionToken)}
	if in := cmp.Or(shown, hidden); in != nil {
		v.Present, v.Shown, v.Token, v.Reason = true, !in.Hidden, in.Token, in.Reason
		v.Exp = a.router.Effective(in.Token).Exp
	}
	return v
}

// act carries out a pool's decision: its log lines, its gate, a slot
// request, the fetch.
func (a *Agent) act(ctx context.Context, running *sync.WaitGroup, p *pool, d decision) {
	for _, n := range d.Notes {
		a.log.Log(ctx, n.level, n.msg, append([]any{"pool", p.cfg.Name, "name", p.cfg.SessionToken}, n.args...)...)
	}
	switch d.Gate {
	case gateClose:
		a.closeGate(ctx, running, p)
	case gateOpen:
		a.openGate(p)
	}
	if d.Ask != nil {
		ask := *d.Ask
		running.Go(func() { a.askSlot(ctx, p, ask) })
	}
	if d.Fetch {
		running.Go(func() {
			t, err := a.fetchInto(ctx, p, p.cfg.SessionToken, fetch.Request{}, a.progress(p))
			a.deliver(p, func(ib *inbox) { ib.done = &fetchResult{t, err} })
		})
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
	raws, toks := make([][]byte, len(cands)), make([]*token.Token, len(cands))
	for i := range cands {
		raws[i], toks[i] = cands[i].Raw.Bytes(), &cands[i].Token
	}
	// All at once: at a key change every agent of the host checks every
	// token, and one request to verifyd per pool instead of one per token
	// is what keeps a host of a hundred agents quick.
	verdicts := a.router.CheckAll(ctx, raws, toks)
	for i, c := range cands {
		c.Raw.Wipe()
		v := verdicts[i]
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

// resumeSession fetches the session tokens again for a new login, though
// the user removed the last ones: a login starts with fresh tokens.
func (a *Agent) resumeSession() {
	for _, p := range a.pools {
		a.deliver(p, func(ib *inbox) { ib.resume = true })
	}
}

// progress reports a long fetch's progress to p's policy: a request that
// awaits an administrator's approval.
func (a *Agent) progress(p *pool) func(fetch.Progress) {
	return func(pr fetch.Progress) {
		if pr.RequestID != "" {
			a.deliver(p, func(ib *inbox) { ib.requestID = pr.RequestID })
		}
	}
}
