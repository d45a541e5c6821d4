package verifyd

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// t0 is the fake clock's start.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

// withinRate fails the test unless every half-open window [a, a + k/rate)
// holds at most k of the slots, for every k: the densest window of k/rate
// starts at a slot, so it is enough to try each slot as a start.
func withinRate(t *testing.T, slots []time.Time, rate float64) {
	t.Helper()
	s := slices.Clone(slots)
	slices.SortFunc(s, time.Time.Compare)
	for k := 1; k <= len(s); k++ {
		w := time.Duration(float64(k) * float64(time.Second) / rate)
		j := 0
		for i := range s {
			j = max(j, i)
			for j < len(s) && s[j].Sub(s[i]) < w {
				j++
			}
			if n := j - i; n > k {
				t.Fatalf("%d slots in [%v, +%v): over %v per second (at most %d)", n, s[i].Sub(t0), w, rate, k)
			}
		}
	}
}

// grant asks for a slot and fails the test on an error or a slot before now.
func grant(t *testing.T, s *Schedule, uid uint32, gen uint64, urgent bool, now time.Time) time.Time {
	t.Helper()
	at, err := s.Grant(uid, gen, urgent, now)
	if err != nil {
		t.Fatalf("Grant(uid %d, gen %d, urgent %v) at %v: %v", uid, gen, urgent, now.Sub(t0), err)
	}
	if at.Before(now) {
		t.Fatalf("Grant(uid %d) at %v: slot %v is in the past", uid, now.Sub(t0), at.Sub(t0))
	}
	return at
}

// A lone agent goes at once; so does one after a quiet spell; one that asks
// just after another waits for the next tick.
func TestScheduleLoneAgent(t *testing.T) {
	s := NewSchedule(100)
	if s.Tick() != 10*time.Millisecond {
		t.Fatalf("tick %v at 100/s", s.Tick())
	}
	for _, urgent := range []bool{false, true} {
		s := NewSchedule(100)
		if at := grant(t, s, 1000, 1, urgent, t0); !at.Equal(t0) {
			t.Fatalf("lone agent (urgent %v): slot at +%v, want at once", urgent, at.Sub(t0))
		}
	}
	s.Grant(1000, 1, false, t0)
	if at := grant(t, s, 1001, 1, false, t0.Add(ms(3))); !at.Equal(t0.Add(ms(10))) {
		t.Fatalf("3 ms after another: +%v, want +10ms", at.Sub(t0))
	}
	// Quiet: the grid starts again at now.
	now := t0.Add(time.Second + ms(3.5))
	if at := grant(t, s, 1002, 1, false, now); !at.Equal(now) {
		t.Fatalf("after a quiet second: +%v, want at once (+%v)", at.Sub(t0), now.Sub(t0))
	}
	// A key change on a quiet host: at once too.
	now = now.Add(time.Minute)
	if at := grant(t, s, 1000, 2, false, now); !at.Equal(now) {
		t.Fatalf("next generation, lone: +%v, want at once", at.Sub(now))
	}
}

// N agents asking at the same moment: ordinary ones on all ticks but every
// urgentEvery-th, urgent ones on every tick, each uid once, within the rate.
func TestScheduleBurst(t *testing.T) {
	for _, n := range []int{1, 10, 1000} {
		for _, urgent := range []bool{false, true} {
			s := NewSchedule(100)
			var slots []time.Time
			seen := map[time.Time]uint32{}
			for uid := range uint32(n) {
				at := grant(t, s, uid, 7, urgent, t0)
				if other, dup := seen[at]; dup {
					t.Fatalf("n=%d: uids %d and %d share the slot +%v", n, other, uid, at.Sub(t0))
				}
				seen[at] = uid
				slots = append(slots, at)
			}
			withinRate(t, slots, 100)
			// The finish: N ticks for urgent ones, N·5/4 for ordinary ones.
			ticks := n - 1
			if !urgent {
				ticks += (n - 1) / (urgentEvery - 1)
			}
			if last := slices.MaxFunc(slots, time.Time.Compare); !last.Equal(t0.Add(time.Duration(ticks) * 10 * time.Millisecond)) {
				t.Fatalf("n=%d urgent=%v: last slot +%v, want +%v", n, urgent, last.Sub(t0), time.Duration(ticks)*10*time.Millisecond)
			}
			if !urgent {
				for _, at := range slots {
					if i := at.Sub(t0) / (10 * time.Millisecond); i%urgentEvery == urgentEvery-1 {
						t.Fatalf("n=%d: an ordinary request got tick %d, kept for urgent ones", n, i)
					}
				}
			}
		}
	}
}

// Urgent requests behind a long ordinary queue, coming no faster than
// their share of the rate, go within urgentEvery ticks, and the whole stays within
// the rate.
func TestScheduleUrgentBehindQueue(t *testing.T) {
	s := NewSchedule(100)
	var slots []time.Time
	for uid := range uint32(1000) {
		slots = append(slots, grant(t, s, uid, 3, false, t0))
	}
	queueEnd := slices.MaxFunc(slots, time.Time.Compare)
	for i, uid := 0, uint32(5000); i < 300; i, uid = i+1, uid+1 {
		now := t0.Add(ms((urgentEvery*10 + 3) * float64(i))) // a little slower than their share
		at := grant(t, s, uid, 3, true, now)
		if wait := at.Sub(now); wait > urgentEvery*s.Tick() {
			t.Fatalf("urgent request at +%v behind the queue waits %v; want at most %v", now.Sub(t0), wait, urgentEvery*s.Tick())
		}
		slots = append(slots, at)
	}
	withinRate(t, slots, 100)
	// The urgent ones took ticks kept for them: the ordinary queue did not move.
	if got := slices.MaxFunc(slots[:1000], time.Time.Compare); !got.Equal(queueEnd) {
		t.Fatalf("the ordinary queue moved: %v, was %v", got, queueEnd)
	}
}

// Agents arriving over time, one in ten urgent, at several rates: within
// the rate; an urgent one waits at most urgentEvery ticks for each urgent slot
// still ahead of it, and itself; the ordinary ones finish within their
// share.
func TestScheduleArrivals(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, rate := range []float64{1, 3, 100, 1000, 100000} {
		s := NewSchedule(rate)
		n := 1000
		var slots []time.Time
		now := t0
		var urgents []time.Time
		for uid := range uint32(n) {
			now = now.Add(time.Duration(r.ExpFloat64() * float64(time.Second) / rate / 2)) // twice the rate on average
			urgent := r.IntN(10) == 0
			at := grant(t, s, uid, 1, urgent, now)
			if urgent {
				ahead := 0
				for _, u := range urgents {
					if !u.Before(now) {
						ahead++
					}
				}
				if bound := time.Duration(urgentEvery*(ahead+1)) * s.Tick(); at.Sub(now) > bound {
					t.Fatalf("rate %v: urgent request with %d ahead waits %v; want at most %v", rate, ahead, at.Sub(now), bound)
				}
				urgents = append(urgents, at)
			}
			slots = append(slots, at)
		}
		withinRate(t, slots, rate)
		// Requests come twice as fast as they are served: the queue never
		// drains, and ends within the ordinary share of the rate.
		last := slices.MaxFunc(slots, time.Time.Compare)
		if bound := time.Duration(n*urgentEvery/(urgentEvery-1)+1) * s.Tick(); last.Sub(t0) > bound {
			t.Fatalf("rate %v: the last slot is %v after the start; want at most %v", rate, last.Sub(t0), bound)
		}
	}
}

// One uid, one slot per generation: asking again returns it; an urgent ask
// moves an ordinary slot still to come up, never back.
func TestScheduleSameUID(t *testing.T) {
	s := NewSchedule(100)
	for uid := range uint32(20) {
		grant(t, s, uid, 1, false, t0)
	}
	first := grant(t, s, 100, 1, false, t0)
	if again := grant(t, s, 100, 1, false, t0.Add(ms(1))); !again.Equal(first) {
		t.Fatalf("asking again: %v, then %v", first.Sub(t0), again.Sub(t0))
	}
	now := t0.Add(ms(12))
	up := grant(t, s, 100, 1, true, now)
	if !up.Before(first) || up.Sub(now) > urgentEvery*s.Tick() {
		t.Fatalf("urgent ask at +%v: slot %v (was %v)", now.Sub(t0), up.Sub(t0), first.Sub(t0))
	}
	// Urgent again, or ordinary again: the same slot.
	for _, urgent := range []bool{true, false} {
		if again := grant(t, s, 100, 1, urgent, now.Add(ms(1))); !again.Equal(up) {
			t.Fatalf("asking again (urgent %v): %v, want %v", urgent, again.Sub(t0), up.Sub(t0))
		}
	}
	// The freed tick goes to the next one who asks.
	if at := grant(t, s, 101, 1, false, now.Add(ms(2))); !at.Equal(first) {
		t.Fatalf("the next ordinary request got %v, want the freed %v", at.Sub(t0), first.Sub(t0))
	}
	// A slot in the past is the same slot still: no second fetch slot.
	later := t0.Add(time.Hour)
	if at, err := s.Grant(100, 1, true, later); err != nil || !at.Equal(up) {
		t.Fatalf("asking after the slot passed: %v, %v; want the same %v", at.Sub(t0), err, up.Sub(t0))
	}
	// An urgent ask never moves a slot that is already urgent or at hand.
	s2 := NewSchedule(100)
	a := grant(t, s2, 1, 1, false, t0)
	if b := grant(t, s2, 1, 1, true, t0); !b.Equal(a) {
		t.Fatalf("urgent ask of a slot that is now: %v, want %v", b.Sub(t0), a.Sub(t0))
	}
}

// A second key change during a schedule: the slots still to come are
// cancelled, those reached are kept; the new generation's agents get the
// first ticks after them; a request for the old generation is refused.
func TestScheduleSecondKeyChange(t *testing.T) {
	for _, urgent := range []bool{false, true} {
		s := NewSchedule(100)
		var old []time.Time
		for uid := range uint32(100) {
			old = append(old, grant(t, s, uid, 4, false, t0))
		}
		change := t0.Add(ms(305))
		var used []time.Time
		for _, at := range old {
			if !at.After(change) {
				used = append(used, at)
			}
		}
		var fresh []time.Time
		for uid := range uint32(100) {
			fresh = append(fresh, grant(t, s, uid, 5, urgent, change))
		}
		// The new slots start at the first tick after the change: the
		// cancelled ones are free again.
		first := slices.MinFunc(fresh, time.Time.Compare)
		if want := t0.Add(ms(310)); !first.Equal(want) {
			t.Fatalf("urgent %v: first slot of the new generation +%v, want +%v", urgent, first.Sub(t0), want.Sub(t0))
		}
		withinRate(t, append(used, fresh...), 100)
		if _, err := s.Grant(7, 4, false, change.Add(ms(1))); !errors.Is(err, ErrStaleGeneration) {
			t.Fatalf("a request for the old generation: %v, want ErrStaleGeneration", err)
		}
		if s.Generation() != 5 {
			t.Fatalf("generation %d, want 5", s.Generation())
		}
		// Asking again in the new generation returns the new slot.
		if at := grant(t, s, 3, 5, false, change.Add(ms(1))); !at.Equal(fresh[3]) {
			t.Fatalf("uid 3 asking again: %v, want %v", at.Sub(t0), fresh[3].Sub(t0))
		}
	}
	// A key change once every slot was used: the grid starts again, a
	// tick after the last slot at the earliest.
	s := NewSchedule(100)
	a := grant(t, s, 1, 1, false, t0)
	if b := grant(t, s, 1, 2, false, t0.Add(ms(4))); !b.Equal(a.Add(ms(10))) {
		t.Fatalf("a key change 4 ms after the last slot: +%v, want +10ms", b.Sub(t0))
	}
	// A newer generation, the same uid, once that slot has passed too.
	if c := grant(t, s, 1, 9, true, t0.Add(time.Second)); !c.Equal(t0.Add(time.Second)) {
		t.Fatalf("generation 9: %v", c.Sub(t0))
	}
	if _, err := s.Grant(1, 8, true, t0.Add(time.Second)); !errors.Is(err, ErrStaleGeneration) {
		t.Fatalf("generation 8 after 9: %v", err)
	}
}

// The rate is rounded so that slots are never closer than 1/rate.
func TestScheduleTick(t *testing.T) {
	for rate, want := range map[float64]time.Duration{1: time.Second, 3: 333333334, 100: 10 * time.Millisecond, 100000: 10 * time.Microsecond, 7e9: 1} {
		if got := NewSchedule(rate).Tick(); got != want {
			t.Errorf("rate %v: tick %v, want %v", rate, got, want)
		}
	}
	for _, bad := range []float64{0, -1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewSchedule(%v) did not panic", bad)
				}
			}()
			NewSchedule(bad)
		}()
	}
}

// An agent that could not start at its slot asks again (Missed): more than
// a tick late, it gets the first free tick from now, behind the queue, and
// its old tick stays used; within a tick, or a second time, it keeps its
// slot. No window goes over the rate.
func TestScheduleMissed(t *testing.T) {
	s := NewSchedule(100)
	var all []time.Time
	for uid := range uint32(10) {
		all = append(all, grant(t, s, uid, 1, false, t0)) // ticks 0-3, 5-8, 10, 11 (4 and 9 kept for urgent)
	}
	if last := all[9]; !last.Equal(t0.Add(ms(110))) {
		t.Fatalf("the tenth ordinary slot is at %v, want 110ms", last.Sub(t0))
	}
	// uid 1 (tick 1, 10 ms) is 5 ms late: less than a tick, it goes.
	if at, err := s.Missed(1, 1, false, t0.Add(ms(15))); err != nil || !at.Equal(all[1]) {
		t.Fatalf("Missed less than a tick late: %v, %v; want its slot %v", at.Sub(t0), err, all[1].Sub(t0))
	}
	// uid 0 (tick 0) is 25 ms late: a new slot, the first free ordinary
	// tick after the queue.
	at, err := s.Missed(0, 1, false, t0.Add(ms(25)))
	if err != nil || !at.Equal(t0.Add(ms(120))) {
		t.Fatalf("Missed 25 ms late: %v, %v; want 120ms", at.Sub(t0), err)
	}
	all = append(all, at)
	withinRate(t, all, 100)
	// Asked again, late again: the same slot; no third one.
	if again, err := s.Missed(0, 1, false, t0.Add(ms(200))); err != nil || !again.Equal(at) {
		t.Fatalf("Missed a second time: %v, %v; want %v", again.Sub(t0), err, at.Sub(t0))
	}
	if again := grant(t, s, 0, 1, false, t0.Add(ms(30))); !again.Equal(at) {
		t.Fatalf("Grant after Missed: %v, want %v", again.Sub(t0), at.Sub(t0))
	}
	// A newcomer queues behind the missed slot.
	if next := grant(t, s, 50, 1, false, t0.Add(ms(30))); !next.Equal(t0.Add(ms(130))) {
		t.Fatalf("a newcomer after the missed slot: %v, want 130ms", next.Sub(t0))
	}
	// Missed without a slot is Grant; for an older generation, an error.
	if at, err := s.Missed(60, 1, false, t0.Add(ms(30))); err != nil || !at.Equal(t0.Add(ms(150))) {
		t.Fatalf("Missed without a slot: %v, %v; want a new one at 150ms (140 is kept for urgent)", at.Sub(t0), err)
	}
	if _, err := s.Missed(1, 0, false, t0.Add(ms(30))); !errors.Is(err, ErrStaleGeneration) {
		t.Fatalf("Missed for an older generation: %v", err)
	}
}
