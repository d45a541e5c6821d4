package agent

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/token"
)

// The session-token policy of a pool, as a pure function: decide takes what
// the agent remembers of the pool's session token and what one pass sees
// (the store, the clock, the key generation, the answers of fetches and
// slot requests, a tool waiting at the gate) and gives what to remember,
// when to wake, and what to start. It does no I/O and reads no clock: the
// pool's loop (keeper.go) gathers its inputs and carries out its decision.
//
// Key generations are counted as the pool's key epoch + 1, so that 0 means
// "never".

// Backoff bounds for failed fetches.
const (
	backoffMin = time.Second
	backoffMax = 5 * time.Minute
	// rotationJitter spreads the refetches of every agent on a host after a
	// pool-wide key change, when verifyd grants no refetch slots, so they do
	// not reach the schedd together.
	rotationJitter = 3 * time.Second
	// maxSlotWait bounds how far off a slot verifyd grants is taken.
	maxSlotWait = time.Minute
	// slotLate: a pass this long after the agent's slot asks for a new
	// one (missedSlot). Above what a pass takes on an idle host, below a
	// slot's width at the default rate (10 ms).
	slotLate = 2 * time.Millisecond
)

// session is what the agent remembers of a pool's session token. Guarded
// by Agent.mu; changed only by decide. The state `tokend status` shows is
// derived from it and from the store (status).
type session struct {
	// The fetch in flight.
	fetching  bool
	requestID string // the request awaiting an administrator's approval
	// forUnknownKey: the planned or running fetch replaces a shown
	// unknown-key token; when it fails it is not retried (that token is
	// still shown) until the token's refresh or the next key change.
	forUnknownKey bool

	// The fetches that ended.
	failures  int // consecutive
	lastErr   string
	lastFetch time.Time

	// The plan.
	next     time.Time // the next fetch (refresh, retry, slot); zero: none planned
	iat, exp int64     // the shown token whose refresh next is (exp: effective)
	removed  bool      // the user removed it: not fetched until asked
	// The last pass saw it: shown; usable (shown, its key known); lost
	// for a key's sake (hidden rotated-key, or shown unknown-key).
	seen, usable, lost bool

	// Key generations (epoch + 1; 0 = never).
	passGen      uint64 // of the last pass
	usableGen    uint64 // the token was last seen usable (shown, its key known)
	unknownKeyAt uint64 // an unknown-key token was fetched, or refetched for
	keyGen       uint64 // a key change last made the token unusable

	// The refetch after a key change: paced by a slot, or by the gate.
	// keyFetch: the planned fetch is that refetch; while a fetch runs, a
	// key change came after it started and the refetch is still owed.
	keyFetch   bool
	slotGen    uint64    // the generation the last slot was asked in; 0: none
	slotWait   bool      // an answer is awaited; no fetch before it
	slotUrgent bool      // the last ask was urgent
	slotAt     time.Time // the slot next was planned at; zero: not a slot
	slotMissed bool      // asked again for a slot the pass came too late for
	gated      bool      // the gate is closed
}

// sessionView is the pool's session token as one pass finds it in the store.
type sessionView struct {
	Present bool         // a file of that name is in the store, shown or not
	Shown   bool         // the tools read a token from it
	Token   token.Token  // the shown token, else the latest hidden one
	Exp     int64        // Token's effective exp (SEC_TOKEN_MAX_AGE applied)
	Reason  token.Reason // shown: "" or unknown-key; hidden: why
}

// fetchResult is the end of a session fetch.
type fetchResult struct {
	tok *token.Token // nil on failure
	err error
}

// slotAsk asks verifyd for a refetch slot in key generation Gen.
type slotAsk struct {
	Gen    uint64
	Urgent bool
	Missed bool // the pass came too late for the slot granted: a new one
}

// slotAnswer is verifyd's answer to a slotAsk.
type slotAnswer struct {
	slotAsk
	At  time.Time // not before; valid when Err is nil
	Err error     // no slot: fall back to the jitter
}

// policyIn is what one pass gives the policy.
type policyIn struct {
	Now   time.Time
	View  sessionView
	Epoch uint64 // the pool's key epoch
	// RotatedAt: the last change every agent of the host saw at once (a
	// key change, verifyd back); refetches it causes are spread.
	RotatedAt time.Time
	Slots     bool // verifyd grants refetch slots (it answers, and is new enough)
	// What happened since the last pass.
	Done         *fetchResult
	RequestID    string // the running fetch awaits approval of this request
	Resume       bool   // a login: fetch again though the user removed it
	SlotAnswers  []slotAnswer
	ToolWaiting  bool   // a tool waits at the pool's gate
	UnknownKeyAt uint64 // a token fetched under the session name was unknown-key, at this generation
}

// gateAction says what to do with the pool's gate.
type gateAction int

const (
	gateKeep gateAction = iota
	gateClose
	gateOpen
)

// note is a log line the policy asks for.
type note struct {
	level slog.Level
	msg   string
	args  []any
}

// decision is what the pool's loop carries out.
type decision struct {
	Wake  time.Time // the latest moment to run the next pass
	Fetch bool      // start the session fetch now
	Ask   *slotAsk  // ask verifyd for a refetch slot
	Gate  gateAction
	Notes []note
}

// policy is a pool's fixed settings.
type policy struct {
	margin   time.Duration // the expiry margin
	interval time.Duration // the periodic check
	// gate: the pool may hold the first looks at its session token while
	// it is refetched after a key change (not for the request method,
	// whose fetch waits for a person; not when fetch.wait is 0).
	gate bool
	// rand draws a uniform duration in [0, n): the jitters.
	rand func(n time.Duration) time.Duration
}

// decide is the session-token policy of one pool at one pass.
func (pol *policy) decide(s session, in policyIn) (session, decision) {
	var d decision
	gen := in.Epoch + 1
	if in.Resume {
		s.removed = false
	}
	s.unknownKeyAt = max(s.unknownKeyAt, in.UnknownKeyAt)
	if s.fetching && in.RequestID != "" && in.RequestID != s.requestID {
		s.requestID = in.RequestID
		d.note(slog.LevelInfo, "waiting for an administrator to approve the token request", "request_id", in.RequestID,
			"approve_with", "condor_token_request_approve -reqid "+in.RequestID)
	}
	if in.Done != nil && s.fetching {
		pol.ended(&s, in, &d)
	}

	v := in.View
	usable := v.Shown && v.Reason != token.UnknownKey
	if usable {
		s.usableGen = gen
	}
	if v.Shown {
		s.removed = false // a token under its name again (tokend fetch, a write)
	}
	if s.gated && usable {
		// The fresh token is in the store (or the old one came back).
		s.gated, d.Gate = false, gateOpen
	}
	// A key change made the token unusable: the last pass saw it usable
	// (or lost already, in the generation it was usable in: the check
	// saw the new key before the key change was reported), and in this
	// generation it is lost for a key's sake. Once per generation:
	// retries never count. (An unknown-key token counts when it is to be
	// refetched: not when this generation's fetch brought it.)
	keyLost := v.Shown && v.Reason == token.UnknownKey && s.unknownKeyAt != gen ||
		!v.Shown && v.Present && v.Reason == token.RotatedKey
	keyChange := keyLost && !s.removed && s.keyGen != gen && s.usableGen != gen &&
		(s.usable || s.lost && s.usableGen != 0 && s.usableGen == s.passGen)
	if keyChange {
		s.keyGen = gen
		if pol.gate && !s.gated {
			s.gated, d.Gate = true, gateClose
		}
		if s.fetching {
			s.keyFetch = true // owed once the running fetch ends
		}
		d.note(slog.LevelInfo, "a key change made the session token unusable; fetching a fresh one", "reason", string(v.Reason), "gate", s.gated, "slot", in.Slots)
	}

	if !s.fetching {
		pol.plan(&s, in, keyChange, &d)
		pol.pace(&s, in, &d)
	}
	s.seen, s.usable, s.lost = v.Shown, usable, keyLost
	s.passGen = gen

	if !s.fetching && !s.removed && !s.next.IsZero() && !in.Now.Before(s.next) && !pol.missedSlot(&s, in, &d) {
		s.fetching, d.Fetch = true, true
		s.keyFetch, s.slotWait = false, false
	}
	d.Wake = in.Now.Add(pol.interval)
	if !s.fetching && !s.next.IsZero() {
		d.Wake = earliest(d.Wake, s.next)
	}
	return s, d
}

// ended takes the end of the session fetch. A success counts once the
// pass's checks have seen the token shown: one hidden at once is a failed
// fetch, so a pool that signs with a key this host cannot verify backs off
// rather than fetching in a loop.
//
// A fetch that started before a key change (owed: its refetch is still to
// come) and fails leaves the gate closed and the refetch at the key
// change's pace; any other end opens the gate: the fresh token is in the
// store, or none will come.
func (pol *policy) ended(s *session, in policyIn, d *decision) {
	now := in.Now
	s.fetching, s.requestID = false, ""
	once := s.forUnknownKey
	s.forUnknownKey = false
	owed := s.keyFetch
	openGate := func() {
		s.keyFetch = false
		if s.gated {
			s.gated, d.Gate = false, gateOpen
		}
	}
	if r := in.Done; r.err == nil {
		s.lastFetch = now
		s.next = time.Time{}
		s.iat = 0 // plan the new token's refresh, whatever its claims
		v := in.View
		if v.Present && !v.Shown && r.tok != nil && v.Token == *r.tok {
			why := fmt.Sprintf("the fetched token was hidden at its first check (%s): is the pool's signing key in sync?", v.Reason)
			if owed {
				s.failures, s.lastErr = s.failures+1, why
				pol.keyPlan(s, in, d)
				d.note(slog.LevelInfo, "the session token fetched before the key change was hidden at its first check; fetching a fresh one", "reason", string(v.Reason))
				return
			}
			openGate()
			pol.failed(s, now, why)
			d.note(slog.LevelError, "the fetched session token was hidden at its first check; will retry", "reason", string(v.Reason),
				"failures", s.failures, "retry_at", s.next.Format(time.TimeOnly))
			return
		}
		// Shown, or replaced meanwhile (a write, tokend fetch).
		openGate()
		s.failures, s.lastErr = 0, ""
		return
	}
	err := in.Done.err
	if owed {
		s.failures, s.lastErr = s.failures+1, err.Error()
		pol.keyPlan(s, in, d)
		d.note(slog.LevelError, "could not fetch the session token; fetching again for the key change", "err", err, "failures", s.failures)
		return
	}
	openGate()
	if once {
		// The unknown-key token is still shown: keep it until its
		// refresh, or the next key change.
		s.failures++
		s.lastErr = err.Error()
		s.next, s.iat = time.Time{}, 0
		d.note(slog.LevelError, "could not fetch a session token to replace the unknown-key one; keeping it", "err", err)
		return
	}
	pol.failed(s, now, err.Error())
	d.note(slog.LevelError, "could not fetch the session token; will retry", "err", err, "failures", s.failures, "retry_at", s.next.Format(time.TimeOnly))
}

// failed counts a failed fetch and plans its retry after a backoff.
func (pol *policy) failed(s *session, now time.Time, why string) {
	s.failures++
	s.lastErr = why
	s.next = now.Add(pol.backoff(s.failures))
}

// plan updates the planned fetch from what the pass sees.
func (pol *policy) plan(s *session, in policyIn, keyChange bool, d *decision) {
	v := in.View
	gen := in.Epoch + 1
	switch {
	case !v.Shown && (s.removed || s.seen && !v.Present):
		// The user removed it (tokend rm, rm, tokend wipe): they asked
		// for no token; `tokend fetch` or a login brings one back. (A
		// hidden token leaves its file behind, invisible, and is
		// fetched again.)
		if s.gated {
			s.gated, d.Gate = false, gateOpen
		}
		s.removed = true
		s.next, s.iat, s.exp = time.Time{}, 0, 0
		s.forUnknownKey, s.keyFetch, s.slotWait = false, false, false
	case !v.Shown:
		// Missing (hidden, or never fetched): fetch when it just went,
		// or when nothing is planned; a failed fetch keeps its backoff.
		s.forUnknownKey = false
		s.iat, s.exp = 0, 0
		switch {
		case keyChange:
			pol.keyPlan(s, in, d)
		case s.keyFetch:
			// The refetch after a key change keeps its pace.
		case s.seen || s.next.IsZero():
			s.next = pol.soon(in)
		}
	default:
		if s.iat != v.Token.Iat || s.exp != v.Exp || !s.seen {
			// A new session token (or a new max age): plan its refresh
			// once (the jitter must not move at every pass).
			s.iat, s.exp = v.Token.Iat, v.Exp
			s.next, s.keyFetch, s.slotWait = time.Time{}, false, false
			if v.Exp != 0 {
				s.next = pol.refreshAt(v.Token.Iat, v.Exp, in.Now)
			}
		}
		if v.Reason == token.UnknownKey && s.unknownKeyAt != gen {
			// The pool has no key of its kid: a fresh token may have
			// one. Once per key generation; the fresh one replaces it.
			s.unknownKeyAt, s.forUnknownKey = gen, true
			switch {
			case keyChange:
				pol.keyPlan(s, in, d)
			case s.keyFetch:
				// Paced already (owed by a fetch that ran at the key change).
			default:
				s.next = pol.soon(in)
			}
			d.note(slog.LevelInfo, "the pool has no key for the session token's kid; fetching a fresh one", "token", &v.Token)
		}
	}
}

// keyPlan plans the refetch after a key change made the token unusable:
// at a slot verifyd grants, else at once when a tool waits at the gate,
// else after the jitter.
func (pol *policy) keyPlan(s *session, in policyIn, d *decision) {
	s.keyFetch = true
	s.next = time.Time{}
	if in.Slots {
		pol.ask(s, in, d)
		return
	}
	s.next = pol.soon(in)
	if s.gated && in.ToolWaiting {
		s.next = in.Now
	}
}

// ask asks for a slot in this generation; urgent when a tool waits.
func (pol *policy) ask(s *session, in policyIn, d *decision) {
	if s.slotGen != in.Epoch+1 {
		s.slotMissed = false
	}
	s.slotGen, s.slotWait, s.slotUrgent = in.Epoch+1, true, in.ToolWaiting
	d.Ask = &slotAsk{Gen: s.slotGen, Urgent: s.slotUrgent}
}

// missedSlot asks for a new slot instead of fetching when the pass comes
// more than slotLate after the slot verifyd granted (the host kept the
// agent busy): starting late, the fetch would start next to the slots
// after it, above the host's rate. verifyd gives a new slot, or the same
// one when the agent is less than a tick late; once per generation, then
// the agent goes whatever the time.
func (pol *policy) missedSlot(s *session, in policyIn, d *decision) bool {
	if !s.keyFetch || !in.Slots || s.slotAt.IsZero() || s.slotMissed || d.Ask != nil || in.Now.Sub(s.slotAt) <= slotLate {
		return false
	}
	s.slotMissed, s.slotWait, s.next = true, true, time.Time{}
	d.Ask = &slotAsk{Gen: s.slotGen, Urgent: s.slotUrgent, Missed: true}
	return true
}

// pace keeps a planned key-change refetch on its slot: it takes verifyd's
// answers, asks again when a tool starts waiting (urgent) or a new key
// generation cancelled the slot, and goes at once for a waiting tool when
// there are no slots.
func (pol *policy) pace(s *session, in policyIn, d *decision) {
	if !s.keyFetch {
		return
	}
	gen := in.Epoch + 1
	for _, a := range in.SlotAnswers {
		if a.Gen != s.slotGen {
			continue // superseded: a new generation cancelled it
		}
		if a.Urgent == s.slotUrgent {
			s.slotWait = false
		}
		at := in.Now
		if a.Err != nil {
			at = pol.soon(in)
			if s.gated && in.ToolWaiting {
				at = in.Now
			}
		} else if a.At.After(at) {
			at = earliest(a.At, in.Now.Add(maxSlotWait))
		}
		if s.next.IsZero() || at.Before(s.next) {
			s.next, s.slotAt = at, a.At // a.At is zero for no slot
		}
	}
	switch {
	case in.Slots && d.Ask == nil && s.slotGen != gen:
		// A new key generation cancels the slots not yet used.
		s.next = time.Time{}
		pol.ask(s, in, d)
	case in.Slots && d.Ask == nil && in.ToolWaiting && !s.slotUrgent:
		pol.ask(s, in, d)
	case !in.Slots && s.slotWait:
		// verifyd went away before it answered.
		s.slotWait = false
		s.next = pol.soon(in)
	}
	if s.gated && in.ToolWaiting && !in.Slots {
		s.next = in.Now
	}
}

// soon is when to fetch a session token that is needed now: at once, or,
// just after a change every agent on the host saw at once, after a random
// jitter (drawn from now, not from the change: agents learn of it at
// different moments, and drawing from the change would bunch up everyone
// who learnt late).
func (pol *policy) soon(in policyIn) time.Time {
	if at := in.RotatedAt; !at.IsZero() && in.Now.Sub(at) < rotationJitter {
		return in.Now.Add(pol.rand(rotationJitter))
	}
	return in.Now
}

// refreshAt is about two thirds into a token's life, jittered by a tenth
// of its life, and always before the expiry margin.
func (pol *policy) refreshAt(iat, exp int64, now time.Time) time.Time {
	start, end := time.Unix(iat, 0), time.Unix(exp, 0)
	life := end.Sub(start)
	if life <= 0 {
		return now
	}
	at := start.Add(life * 2 / 3)
	if j := life / 10; j > 0 {
		at = at.Add(pol.rand(j) - j/2)
	}
	return earliest(at, end.Add(-pol.margin-time.Second))
}

// backoff is exponential from backoffMin to backoffMax with full jitter on
// the upper half.
func (pol *policy) backoff(failures int) time.Duration {
	d := backoffMin << min(failures-1, 20)
	d = min(d, backoffMax)
	return d/2 + pol.rand(d/2+1)
}

func (d *decision) note(level slog.Level, msg string, args ...any) {
	d.Notes = append(d.Notes, note{level, msg, args})
}

// status is the state `tokend status` shows, derived: shown says whether
// the store shows the session token now.
func (s *session) status(shown bool) string {
	switch {
	case s.fetching && s.requestID != "":
		return api.SessionWaiting
	case s.fetching:
		return api.SessionFetching
	case shown:
		return api.SessionValid
	case s.removed:
		return api.SessionRemoved
	case s.failures > 0:
		return api.SessionFailed
	}
	return api.SessionMissing
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
