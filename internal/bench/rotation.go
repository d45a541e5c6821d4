package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/tokend/tokend/internal/testenv/proc"
	"github.com/tokend/tokend/verifyapi"
)

// rotation starts an agent following verifyd and rotates the pool key
// under it a few times, timing the key change to the stale tokens gone from
// the directory, as the user's read sequence sees it.
func (b *bench) rotation() error {
	users, err := b.users(1)
	if err != nil {
		return err
	}
	hs, err := b.homes("rotation", users)
	if err != nil {
		return err
	}
	h := hs[0]
	if err := h.writeConfig(b.verifyd.Sock, nil); err != nil {
		return err
	}
	a, err := b.startServing(h)
	if err != nil {
		return err
	}
	fresh, err := b.rotationLatency(a, h)
	if err != nil {
		return err
	}
	if err := b.stopAgent(a); err != nil {
		return err
	}
	jitter, err := b.freshWithoutSlots(users)
	if err != nil {
		return err
	}
	worst := slices.Max(fresh)
	b.add(row{section: secRotation, figure: "key change → fresh session token, lone agent (verifyd's slot)",
		value:    fmt.Sprintf("%s (max %s)", dur(medianDur(fresh)), dur(worst)),
		baseline: fmt.Sprintf("%s (max %s) verifyd without slots (jitter)", dur(medianDur(jitter)), dur(slices.Max(jitter))),
		ratio:    ratio(float64(medianDur(fresh)) / float64(medianDur(jitter))),
		goal:     "≤ 200 ms", verdict: verdict(float64(worst), float64(200*time.Millisecond))})
	b.note("rotation: fresh session token from the agents' logs (millisecond precision), %d rotations each; the baseline is the same "+
		"agent against a verifyd of the first release (internal/testenv/verifydv1: no refetch slots, so the random 0–3 s jitter); "+
		"with slots: %s; without: %s", rotationRuns, durs(fresh), durs(jitter))
	return nil
}

// freshWithoutSlots times key change → fresh session token for an agent
// whose verifyd grants no refetch slots.
func (b *bench) freshWithoutSlots(users []proc.User) ([]time.Duration, error) {
	sock, stop, err := b.startOldVerifyd("rotation")
	if err != nil {
		return nil, err
	}
	defer stop()
	hs, err := b.homes("rotation-old", users)
	if err != nil {
		return nil, err
	}
	h := hs[0]
	if err := h.writeConfig(sock, nil); err != nil {
		return nil, err
	}
	a, err := b.startServing(h)
	if err != nil {
		return nil, err
	}
	var fresh []time.Duration
	for range rotationRuns {
		at, _, err := b.rotate(hs)
		if err != nil {
			return nil, err
		}
		ft, err := a.waitLog("token fetched", at, 20*time.Second)
		if err != nil {
			return nil, err
		}
		fresh = append(fresh, ft.Sub(at))
	}
	return fresh, b.stopAgent(a)
}

// rotationRuns is how many rotations are timed with one agent.
const rotationRuns = 5

// rotationLatency rotates the pool key a few times under a running agent
// and times, for each, verifyd noticing it (its generation moves: the
// baseline) and the stale tokens leaving the directory.
// It returns the times from each key change to the fresh session token.
func (b *bench) rotationLatency(a *agent, h *home) ([]time.Duration, error) {
	const section = secRotation
	c := verifyapi.NewClient(b.verifyd.Sock)
	defer c.Close()
	var gone, seen, fresh []time.Duration
	for i := range rotationRuns {
		toks, err := h.signN(1)
		if err != nil {
			return nil, err
		}
		if err := b.putTokens(h, fmt.Sprintf("stale%d", i), toks); err != nil {
			return nil, err
		}
		gen, err := c.Generation(context.Background())
		if err != nil {
			return nil, err
		}
		w, err := b.startWatch(h.u, h.tokens, "gone", 10*time.Second)
		if err != nil {
			return nil, err
		}
		genAt := make(chan time.Duration, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for {
				g, err := c.WaitChange(ctx, gen)
				if err != nil {
					genAt <- -1
					return
				}
				if g != gen {
					genAt <- monotonic()
					return
				}
			}
		}()
		at, t0, err := b.rotate([]*home{h})
		if err != nil {
			w.kill()
			return nil, err
		}
		t1, err := w.wait()
		if err != nil {
			return nil, err
		}
		tg := <-genAt
		if tg < 0 {
			return nil, fmt.Errorf("verifyd's generation did not move after the rotation")
		}
		gone, seen = append(gone, t1-t0), append(seen, tg-t0)
		ft, err := a.waitLog("token fetched", at, 20*time.Second)
		if err != nil {
			return nil, err
		}
		fresh = append(fresh, ft.Sub(at))
	}
	mGone, mSeen := medianDur(gone), medianDur(seen)
	worst := slices.Max(gone)
	b.add(row{section: section, figure: "key change → stale tokens gone from the directory",
		value:    fmt.Sprintf("%s (max %s)", dur(mGone), dur(worst)),
		baseline: dur(mSeen) + " verifyd's generation moves", ratio: ratio(float64(mGone) / float64(mSeen)),
		goal: "< 1 s", verdict: verdict(float64(worst), float64(time.Second-1))})
	b.note("rotation: %d rotations by rename (the embedded issuer's key copy first, then verifyd's); \"gone\" is when the "+
		"owner's read sequence, polled every 0.2 ms, no longer finds any token shown before the change", rotationRuns)
	return fresh, nil
}
