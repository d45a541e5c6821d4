package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/verifyd"
)

// slotsPhase computes verifyd's refetch schedule (verifyd.Schedule, the
// pure type the service uses) for simulated agents on a fake clock, at the
// default refetch_rate: no mounts, no processes, no root. The agents ask
// over the first 40 ms after the key change (about when they have hidden
// the stale token). With urgent ones, every tenth agent asks again as
// urgent when a tool comes to its gate, about one such tool every 100 ms
// over the first second; a note gives the worst case, the ten asking as
// urgent at the key change itself.
func (b *bench) slotsPhase() error {
	rate := config.DefaultRefetchRate
	window := 100 * time.Millisecond
	limit := int(rate * window.Seconds())
	for _, c := range []struct {
		n      int
		urgent bool
	}{{1000, false}, {100, true}} {
		sim, err := simulateSlots(rate, c.n, c.urgent, false)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("%d agents' slots (the schedule alone, no mounts)", c.n)
		if c.urgent {
			name = fmt.Sprintf("%d agents' slots, 1 in 10 urgent", c.n)
		}
		busiest := maxInWindow(sim.slots, window)
		b.add(row{section: secSlots, figure: name + ": busiest 100 ms",
			value: fmt.Sprintf("%d", busiest), baseline: fmt.Sprintf("%d at refetch_rate %v/s", limit, rate),
			ratio: ratio(float64(busiest) / float64(limit)),
			goal:  fmt.Sprintf("≤ %d (within the rate)", limit), verdict: verdict(float64(busiest), float64(limit))})
		ideal := time.Duration(float64(c.n) / rate * float64(time.Second))
		share := ideal * 5 / 4
		b.add(row{section: secSlots, figure: "  key change → last slot",
			value: dur(sim.last), baseline: dur(ideal) + " = N/rate", ratio: ratio(float64(sim.last) / float64(ideal)),
			goal: "≤ " + dur(share) + " (a fifth kept for urgent)", verdict: verdict(float64(sim.last), float64(share))})
		if c.urgent {
			b.add(row{section: secSlots, figure: "  longest wait of an urgent agent (a tool every ~100 ms)",
				value: dur(sim.urgentWait), baseline: dur(sim.tick) + " = 1/rate", ratio: ratio(float64(sim.urgentWait) / float64(sim.tick)),
				goal: "≤ " + dur(5*sim.tick), verdict: verdict(float64(sim.urgentWait), float64(5*sim.tick))})
			worst, err := simulateSlots(rate, c.n, true, true)
			if err != nil {
				return err
			}
			b.note("slots: %d agents, 10 of them urgent within the first 40 ms (far above their fifth of the rate): longest urgent wait %s, busiest 100 ms %d, last slot %s",
				c.n, dur(worst.urgentWait), maxInWindow(worst.slots, window), dur(worst.last))
		}
		bucket := window
		if c.n > 200 {
			bucket = time.Second
		}
		b.note("slots: %d agents' schedule computed in %s (%s a grant); slots per %s: %v",
			c.n, dur(sim.took), dur(sim.took/time.Duration(sim.grants)), dur(bucket), histogram(sim.slots, sim.t0, bucket))
	}
	return nil
}

// slotSim is one simulated schedule.
type slotSim struct {
	t0         time.Time     // the key change
	slots      []time.Time   // every agent's final slot
	last       time.Duration // key change to the last slot
	urgentWait time.Duration // longest from an urgent ask to its slot
	tick       time.Duration
	took       time.Duration // computing it
	grants     int
}

// simulateSlots asks a schedule at rate for n agents' slots over the first
// 40 ms after a key change. With urgent, every tenth agent asks again as
// urgent, one every 103 ms from 45 ms on (a tool comes to its gate), or,
// with atOnce, asks as urgent the first time.
func simulateSlots(rate float64, n int, urgent, atOnce bool) (slotSim, error) {
	s := verifyd.NewSchedule(rate)
	sim := slotSim{t0: time.Unix(1_700_000_000, 0), tick: s.Tick()}
	final := map[uint32]time.Time{}
	type ask struct {
		uid    uint32
		at     time.Time
		urgent bool
	}
	var asks []ask
	for i := range n {
		tenth := urgent && i%10 == 9
		asks = append(asks, ask{uint32(10000 + i), sim.t0.Add(time.Duration(i) * 40 * time.Millisecond / time.Duration(n)), tenth && atOnce})
		if tenth && !atOnce {
			asks = append(asks, ask{uint32(10000 + i), sim.t0.Add(45*time.Millisecond + time.Duration(i/10)*103*time.Millisecond), true})
		}
	}
	slices.SortStableFunc(asks, func(a, b ask) int { return a.at.Compare(b.at) })
	took := time.Now()
	for _, a := range asks {
		at, err := s.Grant(a.uid, 2, a.urgent, a.at)
		if err != nil {
			return sim, err
		}
		if a.urgent {
			sim.urgentWait = max(sim.urgentWait, at.Sub(a.at))
		}
		final[a.uid] = at
	}
	sim.took, sim.grants = time.Since(took), len(asks)
	for _, at := range final {
		sim.slots = append(sim.slots, at)
		sim.last = max(sim.last, at.Sub(sim.t0))
	}
	return sim, nil
}

// slotsOnly reports whether only the slots phase is asked for: it needs no
// root, no FUSE and no verifyd process, so the run skips their setup.
func slotsOnly(only string) bool {
	return only != "" && !slices.ContainsFunc(strings.Split(only, ","), func(p string) bool { return p != "slots" })
}
