package agent

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/token"
)

// The policy's transitions on a fake clock: each case is a run of passes,
// each pass the inputs the loop would gather at t0 + at and what must come
// of them. The jitters draw the middle of their range.

var t0 = time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)

const (
	testInterval = time.Minute
	never        = time.Duration(-1) // no fetch planned
)

// sessionTok is a session token issued at t0 + iat, for an hour.
func sessionTok(iat time.Duration) token.Token {
	at := t0.Add(iat).Unix()
	return token.Token{Alg: "HS256", Kid: "POOL", Iss: "cm.example", Sub: "u@cm.example", Iat: at, Exp: at + 3600}
}

func shownView(t token.Token) sessionView {
	return sessionView{Present: true, Shown: true, Token: t, Exp: t.Exp}
}

func unknownView(t token.Token) sessionView {
	v := shownView(t)
	v.Reason = token.UnknownKey
	return v
}

func hiddenView(t token.Token, r token.Reason) sessionView {
	return sessionView{Present: true, Token: t, Reason: r}
}

var (
	tokA     = sessionTok(0)
	tokB     = sessionTok(10 * time.Second)
	tokC     = sessionTok(20 * time.Second)
	refreshA = 40 * time.Minute // two thirds into tokA's hour
	errAway  = errors.New("SECMAN:2007: the schedd is away")
)

func ok(t token.Token) *fetchResult { return &fetchResult{tok: &t} }
func failed() *fetchResult          { return &fetchResult{err: errAway} }

// pass is one pass: its inputs (Now is set from at) and what must come of
// them.
type pass struct {
	at time.Duration
	in policyIn
	// want:
	state    string        // as tokend status shows it
	fetch    bool          // a fetch starts
	next     time.Duration // the planned fetch, from t0; never: none
	gate     gateAction
	ask      *slotAsk
	failures int
}

func TestPolicy(t *testing.T) {
	// valid: a pool whose session token tokA was fetched at t0 and is
	// shown, in key epoch 0.
	valid := []pass{
		{at: 0, in: policyIn{}, state: api.SessionFetching, fetch: true, next: 0},
		{at: time.Second, in: policyIn{Done: ok(tokA), View: shownView(tokA)}, state: api.SessionValid, next: refreshA},
	}
	rotated := hiddenView(tokA, token.RotatedKey)
	// A key change at t0 + 5m hid tokA (every agent saw it).
	keyChange := policyIn{View: rotated, Epoch: 1, RotatedAt: t0.Add(5 * time.Minute)}
	with := func(in policyIn, f func(*policyIn)) policyIn { f(&in); return in }
	slotted := func(in policyIn) policyIn { return with(in, func(in *policyIn) { in.Slots = true }) }
	waiting := func(in policyIn) policyIn { return with(in, func(in *policyIn) { in.ToolWaiting = true }) }
	answer := func(gen uint64, urgent bool, at time.Duration, err error) []slotAnswer {
		return []slotAnswer{{slotAsk{Gen: gen, Urgent: urgent}, t0.Add(at), err}}
	}
	jitter := rotationJitter / 2

	cases := []struct {
		name   string
		noGate bool // the request method, or fetch.wait = 0
		passes []pass
	}{
		{name: "missing: fetched at once, valid when the fetch ends", passes: valid},
		{name: "missing, the fetch fails: backoff, then again", passes: []pass{
			valid[0],
			{at: time.Second, in: policyIn{Done: failed()}, state: api.SessionFailed, next: time.Second + 750*time.Millisecond, failures: 1},
			{at: 1500 * time.Millisecond, state: api.SessionFailed, next: time.Second + 750*time.Millisecond, failures: 1},
			{at: time.Second + 750*time.Millisecond, state: api.SessionFetching, fetch: true, next: time.Second + 750*time.Millisecond, failures: 1},
			{at: 2 * time.Second, in: policyIn{Done: failed()}, state: api.SessionFailed, next: 3500 * time.Millisecond, failures: 2},
			{at: 3500 * time.Millisecond, state: api.SessionFetching, fetch: true, next: 3500 * time.Millisecond, failures: 2},
			{at: 4 * time.Second, in: policyIn{Done: ok(tokA), View: shownView(tokA)}, state: api.SessionValid, next: refreshA},
		}},
		{name: "valid: nothing until the refresh is due; a failed refresh keeps the token, backs off", passes: append(valid[:2:2],
			pass{at: 10 * time.Minute, in: policyIn{View: shownView(tokA)}, state: api.SessionValid, next: refreshA},
			pass{at: refreshA, in: policyIn{View: shownView(tokA)}, state: api.SessionFetching, fetch: true, next: refreshA},
			pass{at: refreshA + time.Second, in: policyIn{View: shownView(tokA), Done: failed()}, state: api.SessionValid,
				next: refreshA + time.Second + 750*time.Millisecond, failures: 1},
			pass{at: refreshA + 2*time.Second, in: policyIn{View: shownView(tokA)}, state: api.SessionFetching, fetch: true,
				next: refreshA + time.Second + 750*time.Millisecond, failures: 1},
			pass{at: refreshA + 3*time.Second, in: policyIn{View: shownView(tokB), Done: ok(tokB)}, state: api.SessionValid,
				next: 10*time.Second + refreshA},
		)},
		{name: "a fetched token hidden at its first check is a failed fetch: backoff, no loop", passes: []pass{
			valid[0],
			{at: time.Second, in: policyIn{Done: ok(tokA), View: rotated}, state: api.SessionFailed, next: time.Second + 750*time.Millisecond, failures: 1},
			{at: 1100 * time.Millisecond, in: policyIn{View: rotated}, state: api.SessionFailed, next: time.Second + 750*time.Millisecond, failures: 1},
			{at: time.Second + 750*time.Millisecond, in: policyIn{View: rotated}, state: api.SessionFetching, fetch: true,
				next: time.Second + 750*time.Millisecond, failures: 1},
			{at: 2 * time.Second, in: policyIn{Done: ok(tokB), View: hiddenView(tokB, token.RotatedKey)}, state: api.SessionFailed,
				next: 3500 * time.Millisecond, failures: 2},
		}},
		{name: "rotated, no slots: the gate closes, the refetch is jittered, a tool waiting makes it go at once", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: keyChange, state: api.SessionMissing, gate: gateClose, next: 5*time.Minute + jitter},
			pass{at: 5*time.Minute + 100*time.Millisecond, in: keyChange, state: api.SessionMissing, next: 5*time.Minute + jitter},
			pass{at: 5*time.Minute + 200*time.Millisecond, in: waiting(keyChange), state: api.SessionFetching, fetch: true,
				next: 5*time.Minute + 200*time.Millisecond},
			pass{at: 5*time.Minute + 300*time.Millisecond, in: with(keyChange, func(in *policyIn) { in.Done, in.View = ok(tokB), shownView(tokB) }),
				state: api.SessionValid, gate: gateOpen, next: 10*time.Second + refreshA},
		)},
		{name: "rotated, no slots, nobody waits: fetched after the jitter", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: keyChange, state: api.SessionMissing, gate: gateClose, next: 5*time.Minute + jitter},
			pass{at: 5*time.Minute + jitter, in: keyChange, state: api.SessionFetching, fetch: true, next: 5*time.Minute + jitter},
			pass{at: 5*time.Minute + jitter + time.Second, in: with(keyChange, func(in *policyIn) { in.Done, in.View = ok(tokB), shownView(tokB) }),
				state: api.SessionValid, gate: gateOpen, next: 10*time.Second + refreshA},
		)},
		{name: "rotated, slot granted: fetched at the slot, not before", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: slotted(keyChange), state: api.SessionMissing, gate: gateClose, ask: &slotAsk{Gen: 2, Urgent: false}, next: never},
			pass{at: 5*time.Minute + 10*time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.SlotAnswers = answer(2, false, 5*time.Minute+300*time.Millisecond, nil) }),
				state: api.SessionMissing, next: 5*time.Minute + 300*time.Millisecond},
			pass{at: 5*time.Minute + 200*time.Millisecond, in: slotted(keyChange), state: api.SessionMissing, next: 5*time.Minute + 300*time.Millisecond},
			pass{at: 5*time.Minute + 300*time.Millisecond, in: slotted(keyChange), state: api.SessionFetching, fetch: true, next: 5*time.Minute + 300*time.Millisecond},
			pass{at: 5*time.Minute + 400*time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.Done, in.View = failed(), rotated }),
				state: api.SessionFailed, gate: gateOpen, next: 5*time.Minute + 1150*time.Millisecond, failures: 1},
			// The retry: backoff, no slot, the gate stays open.
			pass{at: 5*time.Minute + 1150*time.Millisecond, in: slotted(keyChange), state: api.SessionFetching, fetch: true,
				next: 5*time.Minute + 1150*time.Millisecond, failures: 1},
			pass{at: 5*time.Minute + 1200*time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.Done, in.View = failed(), rotated }),
				state: api.SessionFailed, next: 5*time.Minute + 2700*time.Millisecond, failures: 2},
		)},
		{name: "rotated, a lone agent's slot is now: fetched at once", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: slotted(keyChange), state: api.SessionMissing, gate: gateClose, ask: &slotAsk{Gen: 2, Urgent: false}, next: never},
			pass{at: 5*time.Minute + time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.SlotAnswers = answer(2, false, 5*time.Minute, nil) }),
				state: api.SessionFetching, fetch: true, next: 5*time.Minute + time.Millisecond},
		)},
		{name: "a slot further off than maxSlotWait is taken at maxSlotWait", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: slotted(keyChange), state: api.SessionMissing, gate: gateClose, ask: &slotAsk{Gen: 2, Urgent: false}, next: never},
			pass{at: 5*time.Minute + time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.SlotAnswers = answer(2, false, 2*time.Hour, nil) }),
				state: api.SessionMissing, next: 5*time.Minute + time.Millisecond + maxSlotWait},
		)},
		{name: "tool waiting: the slot is asked again, urgent, and the earlier one taken", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: slotted(keyChange), state: api.SessionMissing, gate: gateClose, ask: &slotAsk{Gen: 2, Urgent: false}, next: never},
			pass{at: 5*time.Minute + time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.SlotAnswers = answer(2, false, 5*time.Minute+900*time.Millisecond, nil) }),
				state: api.SessionMissing, next: 5*time.Minute + 900*time.Millisecond},
			pass{at: 5*time.Minute + 100*time.Millisecond, in: waiting(slotted(keyChange)), state: api.SessionMissing, ask: &slotAsk{Gen: 2, Urgent: true},
				next: 5*time.Minute + 900*time.Millisecond},
			pass{at: 5*time.Minute + 110*time.Millisecond, in: waiting(slotted(keyChange)), state: api.SessionMissing, next: 5*time.Minute + 900*time.Millisecond},
			pass{at: 5*time.Minute + 120*time.Millisecond, in: with(waiting(slotted(keyChange)), func(in *policyIn) { in.SlotAnswers = answer(2, true, 5*time.Minute+150*time.Millisecond, nil) }),
				state: api.SessionMissing, next: 5*time.Minute + 150*time.Millisecond},
			pass{at: 5*time.Minute + 150*time.Millisecond, in: waiting(slotted(keyChange)), state: api.SessionFetching, fetch: true, next: 5*time.Minute + 150*time.Millisecond},
		)},
		{name: "tool waiting before verifyd answers: asked again urgent, no fetch before an answer", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: slotted(keyChange), state: api.SessionMissing, gate: gateClose, ask: &slotAsk{Gen: 2, Urgent: false}, next: never},
			pass{at: 5*time.Minute + 10*time.Millisecond, in: waiting(slotted(keyChange)), state: api.SessionMissing, ask: &slotAsk{Gen: 2, Urgent: true}, next: never},
			pass{at: 5*time.Minute + 20*time.Millisecond, in: with(waiting(slotted(keyChange)), func(in *policyIn) { in.SlotAnswers = answer(2, false, 5*time.Minute+800*time.Millisecond, nil) }),
				state: api.SessionMissing, next: 5*time.Minute + 800*time.Millisecond},
			pass{at: 5*time.Minute + 30*time.Millisecond, in: with(waiting(slotted(keyChange)), func(in *policyIn) { in.SlotAnswers = answer(2, true, 5*time.Minute+29*time.Millisecond, nil) }),
				state: api.SessionFetching, fetch: true, next: 5*time.Minute + 30*time.Millisecond},
		)},
		{name: "slot missed (the pass came late): asked again once, fetched at the new slot even if late again", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: slotted(keyChange), state: api.SessionMissing, gate: gateClose, ask: &slotAsk{Gen: 2}, next: never},
			pass{at: 5*time.Minute + time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.SlotAnswers = answer(2, false, 5*time.Minute+100*time.Millisecond, nil) }),
				state: api.SessionMissing, next: 5*time.Minute + 100*time.Millisecond},
			pass{at: 5*time.Minute + 150*time.Millisecond, in: slotted(keyChange), state: api.SessionMissing, ask: &slotAsk{Gen: 2, Missed: true}, next: never},
			pass{at: 5*time.Minute + 160*time.Millisecond, in: slotted(keyChange), state: api.SessionMissing, next: never},
			pass{at: 5*time.Minute + 170*time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.SlotAnswers = answer(2, false, 5*time.Minute+300*time.Millisecond, nil) }),
				state: api.SessionMissing, next: 5*time.Minute + 300*time.Millisecond},
			pass{at: 5*time.Minute + 320*time.Millisecond, in: slotted(keyChange), state: api.SessionFetching, fetch: true, next: 5*time.Minute + 300*time.Millisecond},
		)},
		{name: "a pass within slotLate of the slot fetches", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: slotted(keyChange), state: api.SessionMissing, gate: gateClose, ask: &slotAsk{Gen: 2}, next: never},
			pass{at: 5*time.Minute + time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.SlotAnswers = answer(2, false, 5*time.Minute+100*time.Millisecond, nil) }),
				state: api.SessionMissing, next: 5*time.Minute + 100*time.Millisecond},
			pass{at: 5*time.Minute + 100*time.Millisecond + slotLate, in: slotted(keyChange), state: api.SessionFetching, fetch: true, next: 5*time.Minute + 100*time.Millisecond},
		)},
		{name: "verifyd without slots (404): the jitter; a tool waiting goes at once", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: slotted(keyChange), state: api.SessionMissing, gate: gateClose, ask: &slotAsk{Gen: 2, Urgent: false}, next: never},
			pass{at: 5*time.Minute + time.Millisecond, in: with(keyChange, func(in *policyIn) { in.SlotAnswers = answer(2, false, 0, errors.New("404")) }),
				state: api.SessionMissing, next: 5*time.Minute + time.Millisecond + jitter},
			pass{at: 5*time.Minute + 500*time.Millisecond, in: waiting(keyChange), state: api.SessionFetching, fetch: true, next: 5*time.Minute + 500*time.Millisecond},
		)},
		{name: "verifyd goes away before it answers: the jitter", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: slotted(keyChange), state: api.SessionMissing, gate: gateClose, ask: &slotAsk{Gen: 2, Urgent: false}, next: never},
			pass{at: 5*time.Minute + 100*time.Millisecond, in: keyChange, state: api.SessionMissing, next: 5*time.Minute + 100*time.Millisecond + jitter},
		)},
		{name: "a new key generation cancels the slot not yet used: asked again, the old answer ignored", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: slotted(keyChange), state: api.SessionMissing, gate: gateClose, ask: &slotAsk{Gen: 2, Urgent: false}, next: never},
			pass{at: 5*time.Minute + time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.SlotAnswers = answer(2, false, 5*time.Minute+900*time.Millisecond, nil) }),
				state: api.SessionMissing, next: 5*time.Minute + 900*time.Millisecond},
			pass{at: 5*time.Minute + 100*time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) { in.Epoch = 2 }), state: api.SessionMissing,
				ask: &slotAsk{Gen: 3, Urgent: false}, next: never},
			pass{at: 5*time.Minute + 110*time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) {
				in.Epoch, in.SlotAnswers = 2, answer(2, false, 5*time.Minute+110*time.Millisecond, nil)
			}), state: api.SessionMissing, next: never},
			pass{at: 5*time.Minute + 120*time.Millisecond, in: with(slotted(keyChange), func(in *policyIn) {
				in.Epoch, in.SlotAnswers = 2, answer(3, false, 5*time.Minute+200*time.Millisecond, nil)
			}), state: api.SessionMissing, next: 5*time.Minute + 200*time.Millisecond},
		)},
		{name: "rotated while a refresh runs: the gate closes; its token, hidden at the first check, is refetched at the key change's pace", passes: append(valid[:2:2],
			pass{at: refreshA, in: policyIn{View: shownView(tokA)}, state: api.SessionFetching, fetch: true, next: refreshA},
			pass{at: refreshA + time.Second, in: slotted(with(keyChange, func(in *policyIn) { in.RotatedAt = t0.Add(refreshA) })),
				state: api.SessionFetching, gate: gateClose, next: refreshA},
			pass{at: refreshA + 2*time.Second, in: slotted(with(keyChange, func(in *policyIn) { in.Done, in.View = ok(tokB), hiddenView(tokB, token.RotatedKey) })),
				state: api.SessionFailed, ask: &slotAsk{Gen: 2, Urgent: false}, next: never, failures: 1},
			pass{at: refreshA + 2*time.Second + 10*time.Millisecond, in: slotted(with(keyChange, func(in *policyIn) {
				in.View, in.SlotAnswers = hiddenView(tokB, token.RotatedKey), answer(2, false, refreshA+2*time.Second+10*time.Millisecond, nil)
			})), state: api.SessionFetching, fetch: true, next: refreshA + 2*time.Second + 10*time.Millisecond, failures: 1},
			pass{at: refreshA + 3*time.Second, in: slotted(with(keyChange, func(in *policyIn) { in.Done, in.View = ok(tokC), shownView(tokC) })),
				state: api.SessionValid, gate: gateOpen, next: 20*time.Second + refreshA},
		)},
		{name: "rotated while a refresh runs that then fails: the gate stays closed, the refetch follows", passes: append(valid[:2:2],
			pass{at: refreshA, in: policyIn{View: shownView(tokA)}, state: api.SessionFetching, fetch: true, next: refreshA},
			pass{at: refreshA + time.Second, in: with(keyChange, func(in *policyIn) { in.RotatedAt = t0.Add(refreshA + time.Second) }),
				state: api.SessionFetching, gate: gateClose, next: refreshA},
			pass{at: refreshA + 2*time.Second, in: with(keyChange, func(in *policyIn) { in.RotatedAt, in.Done = t0.Add(refreshA+time.Second), failed() }),
				state: api.SessionFailed, next: refreshA + 2*time.Second + jitter, failures: 1},
			pass{at: refreshA + 2*time.Second + jitter, in: keyChange, state: api.SessionFetching, fetch: true, next: refreshA + 2*time.Second + jitter, failures: 1},
			pass{at: refreshA + 5*time.Second, in: with(keyChange, func(in *policyIn) { in.Done = failed() }),
				state: api.SessionFailed, gate: gateOpen, next: refreshA + 5*time.Second + 1500*time.Millisecond, failures: 2},
		)},
		{name: "the key change seen a pass after the hide: still one gate, the fetch already running", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: policyIn{View: rotated}, state: api.SessionFetching, fetch: true, next: 5 * time.Minute},
			pass{at: 5*time.Minute + 10*time.Millisecond, in: keyChange, state: api.SessionFetching, gate: gateClose, next: 5 * time.Minute},
			pass{at: 5*time.Minute + 20*time.Millisecond, in: keyChange, state: api.SessionFetching, next: 5 * time.Minute},
			pass{at: 5*time.Minute + 30*time.Millisecond, in: with(keyChange, func(in *policyIn) { in.Done, in.View = ok(tokB), shownView(tokB) }),
				state: api.SessionValid, gate: gateOpen, next: 10*time.Second + refreshA},
		)},
		{name: "a pool failing since before the key change: no gate, its backoff kept", passes: []pass{
			valid[0], valid[1],
			{at: time.Minute, in: policyIn{View: hiddenView(tokA, token.Expired)}, state: api.SessionFetching, fetch: true, next: time.Minute},
			{at: time.Minute + time.Second, in: policyIn{View: hiddenView(tokA, token.Expired), Done: failed()}, state: api.SessionFailed,
				next: time.Minute + 1750*time.Millisecond, failures: 1},
			{at: time.Minute + 1500*time.Millisecond, in: with(keyChange, func(in *policyIn) { in.View = hiddenView(tokA, token.RotatedKey) }),
				state: api.SessionFailed, next: time.Minute + 1750*time.Millisecond, failures: 1},
		}},
		{name: "unknown key after a rotation to a new key name: gate, fetched at once; a failure is not retried", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: policyIn{View: unknownView(tokA), Epoch: 1}, state: api.SessionFetching, gate: gateClose, fetch: true, next: 5 * time.Minute},
			pass{at: 5*time.Minute + time.Second, in: policyIn{View: unknownView(tokA), Epoch: 1, Done: failed()}, state: api.SessionValid, gate: gateOpen,
				next: refreshA, failures: 1},
			pass{at: 6 * time.Minute, in: policyIn{View: unknownView(tokA), Epoch: 1}, state: api.SessionValid, next: refreshA, failures: 1},
			// The next key change: once more.
			pass{at: 7 * time.Minute, in: policyIn{View: unknownView(tokA), Epoch: 2}, state: api.SessionFetching, fetch: true, next: 7 * time.Minute, failures: 1},
		)},
		{name: "unknown key from the start: fetched once per key generation, no gate", passes: []pass{
			valid[0],
			{at: time.Second, in: policyIn{Done: ok(tokA), View: unknownView(tokA), UnknownKeyAt: 1}, state: api.SessionValid, next: refreshA},
			{at: time.Minute, in: policyIn{View: unknownView(tokA)}, state: api.SessionValid, next: refreshA},
			{at: 2 * time.Minute, in: policyIn{View: unknownView(tokA), Epoch: 1}, state: api.SessionFetching, fetch: true, next: 2 * time.Minute},
			{at: 2*time.Minute + time.Second, in: policyIn{View: unknownView(tokB), Epoch: 1, Done: ok(tokB), UnknownKeyAt: 2}, state: api.SessionValid,
				next: 10*time.Second + refreshA},
		}},
		{name: "removed by the user: not fetched until a login asks", passes: append(valid[:2:2],
			pass{at: time.Minute, state: api.SessionRemoved, next: never},
			pass{at: 2 * time.Minute, in: policyIn{Epoch: 1, RotatedAt: t0.Add(2 * time.Minute)}, state: api.SessionRemoved, next: never},
			pass{at: 3 * time.Minute, in: policyIn{Resume: true}, state: api.SessionFetching, fetch: true, next: 3 * time.Minute},
		)},
		{name: "removed by the user, then tokend fetch: valid again", passes: append(valid[:2:2],
			pass{at: time.Minute, state: api.SessionRemoved, next: never},
			pass{at: 2 * time.Minute, in: policyIn{View: shownView(tokC)}, state: api.SessionValid, next: 20*time.Second + refreshA},
		)},
		{name: "removed by the user while gated: the gate opens", passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: policyIn{View: unknownView(tokA), Epoch: 1, Slots: true}, state: api.SessionValid, gate: gateClose,
				ask: &slotAsk{Gen: 2, Urgent: false}, next: never},
			pass{at: 5*time.Minute + 10*time.Millisecond, in: policyIn{Epoch: 1, Slots: true}, state: api.SessionRemoved, gate: gateOpen, next: never},
			pass{at: 5*time.Minute + 20*time.Millisecond, in: policyIn{Epoch: 1, Slots: true, SlotAnswers: answer(2, false, 5*time.Minute, nil)},
				state: api.SessionRemoved, next: never},
		)},
		{name: "a token hidden for another reason than a key: fetched again, no gate", passes: append(valid[:2:2],
			pass{at: time.Hour, in: policyIn{View: hiddenView(tokA, token.Expired)}, state: api.SessionFetching, fetch: true, next: time.Hour},
		)},
		{name: "waiting for approval (request method): no gate, ever", noGate: true, passes: append(valid[:2:2],
			pass{at: 5 * time.Minute, in: keyChange, state: api.SessionMissing, next: 5*time.Minute + jitter},
			pass{at: 5*time.Minute + jitter, in: keyChange, state: api.SessionFetching, fetch: true, next: 5*time.Minute + jitter},
			pass{at: 6 * time.Minute, in: with(keyChange, func(in *policyIn) { in.RequestID = "4242" }), state: api.SessionWaiting, next: 5*time.Minute + jitter},
			pass{at: 7 * time.Minute, in: with(keyChange, func(in *policyIn) { in.RequestID = "4242" }), state: api.SessionWaiting, next: 5*time.Minute + jitter},
			pass{at: 8 * time.Minute, in: with(keyChange, func(in *policyIn) { in.Done, in.View = ok(tokB), shownView(tokB) }), state: api.SessionValid,
				next: 10*time.Second + refreshA},
		)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pol := &policy{margin: 30 * time.Second, interval: testInterval, gate: !c.noGate,
				rand: func(n time.Duration) time.Duration { return n / 2 }}
			var s session
			for i, p := range c.passes {
				in := p.in
				in.Now = t0.Add(p.at)
				var d decision
				s, d = pol.decide(s, in)
				where := fmt.Sprintf("pass %d at +%v", i, p.at)
				if got := s.status(in.View.Shown); got != p.state {
					t.Fatalf("%s: state %s, want %s (%+v)", where, got, p.state, s)
				}
				if d.Fetch != p.fetch {
					t.Fatalf("%s: fetch %v, want %v (%+v)", where, d.Fetch, p.fetch, s)
				}
				next := never
				if !s.next.IsZero() {
					next = s.next.Sub(t0)
				}
				if next != p.next {
					t.Fatalf("%s: next fetch at +%v, want +%v (%+v)", where, next, p.next, s)
				}
				if d.Gate != p.gate {
					t.Fatalf("%s: gate %v, want %v (%+v)", where, d.Gate, p.gate, s)
				}
				if (d.Ask == nil) != (p.ask == nil) || d.Ask != nil && *d.Ask != *p.ask {
					t.Fatalf("%s: slot asked %+v, want %+v", where, d.Ask, p.ask)
				}
				if s.failures != p.failures {
					t.Fatalf("%s: %d failures, want %d", where, s.failures, p.failures)
				}
				// The loop wakes at the plan, or the periodic check.
				wake := in.Now.Add(testInterval)
				if !s.fetching && !s.next.IsZero() && s.next.Before(wake) {
					wake = s.next
				}
				if !d.Wake.Equal(wake) {
					t.Fatalf("%s: wakes at +%v, want +%v", where, d.Wake.Sub(t0), wake.Sub(t0))
				}
				if d.Fetch && !d.Wake.After(in.Now) {
					t.Fatalf("%s: a fetch started and the loop wakes at once: a tight loop", where)
				}
			}
		})
	}
}
