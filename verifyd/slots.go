package verifyd

import (
	"errors"
	"math"
	"slices"
	"time"
)

// urgentEvery: one tick in this many is kept for urgent requests (a fifth
// of the rate), so that a tool waiting at an agent's gate goes within
// urgentEvery ticks however long the queue of ordinary refetches is.
const urgentEvery = 5

// ErrStaleGeneration is Grant's answer to a request for a key generation
// older than one it has already scheduled: those slots are cancelled.
var ErrStaleGeneration = errors.New("verifyd: a refetch slot for a key generation that is over")

// Schedule hands out the host's refetch slots: the times at which agents
// whose session token a key change made unusable may fetch a fresh one, so
// that a host's agents reach the schedd at no more than rate fetches per
// second, in any window. It is pure (the time is an argument) and not safe
// for concurrent use.
//
// Slots lie on a grid of ticks 1/rate apart (rounded up to the
// nanosecond), so two slots are never closer than 1/rate and any half-open
// window of k/rate holds at most k of them. When every slot given so far
// is in the past, the grid starts again at max(now, last slot + 1/rate): a
// lone agent goes at once. Otherwise a request gets the first free tick at
// or after now; an ordinary one skips every fifth tick (ticks 4, 9, 14, ...
// of the grid), which only urgent requests may take. So a backlog of
// ordinary refetches runs at four fifths of the rate (N agents finish
// within N/(0.8·rate)), urgent ones run at the full rate among themselves,
// and an urgent request behind any number of ordinary ones waits at most
// five ticks for itself and five for each urgent slot still ahead of it
// (50 ms at 100 per second while urgent requests keep to their fifth).
//
// There is one slot per uid and key generation: asking again returns the
// same slot, except that an urgent request of a uid holding an ordinary
// slot still to come moves it to the first free tick (never later). The
// first request for a newer generation cancels every slot not yet reached
// (their agents ask again for the new generation); slots at or before now
// count as used and keep their place on the grid.
type Schedule struct {
	tick   time.Duration
	gen    uint64
	anchor time.Time       // tick i is at anchor + i·tick
	used   []int64         // ticks taken, ascending; those long past are dropped
	slots  map[uint32]slot // this generation's, by uid
}

type slot struct {
	at     time.Time
	tick   int64 // on the current grid while at is after now
	urgent bool
	missed bool // Missed gave it: it is not given again
}

// NewSchedule returns an empty schedule of rate slots per second. rate must
// be positive and finite ([New] checks the configured one).
func NewSchedule(rate float64) *Schedule {
	if !(rate > 0) || math.IsInf(rate, 0) {
		panic("verifyd: refetch rate must be positive")
	}
	tick := time.Duration(math.Ceil(float64(time.Second) / rate))
	return &Schedule{tick: max(tick, 1), slots: map[uint32]slot{}}
}

// Tick is the least time between two slots: 1/rate, rounded up to the
// nanosecond.
func (s *Schedule) Tick() time.Duration { return s.tick }

// Generation is the key generation whose slots the schedule holds (0 before
// the first Grant).
func (s *Schedule) Generation() uint64 { return s.gen }

// Grant returns the time from which uid may refetch for key generation
// gen: now or later. urgent says a tool is waiting for the fresh token. A
// generation older than the schedule's gets [ErrStaleGeneration]; a newer
// one cancels the slots of the older one that are still to come.
func (s *Schedule) Grant(uid uint32, gen uint64, urgent bool, now time.Time) (time.Time, error) {
	switch {
	case gen < s.gen:
		return time.Time{}, ErrStaleGeneration
	case gen > s.gen:
		s.cancel(now)
		s.gen = gen
		clear(s.slots)
	}
	s.prune(now)
	sl, ok := s.slots[uid]
	if ok {
		if !urgent || sl.urgent || !sl.at.After(now) {
			return sl.at, nil
		}
		// A tool is now waiting behind an ordinary slot: move it up. Its
		// tick is free while the search runs, so the new one is never
		// later.
		s.release(sl.tick)
	}
	return s.give(uid, urgent, sl.missed, now), nil
}

// Missed is Grant for an agent that could not start at the slot it was
// given (its host kept it busy): starting late, it would start next to the
// slots after its own, above the rate. When it is more than a tick late,
// it gets a new slot, the first free tick from now; its old tick stays
// used. Otherwise, and for a slot Missed gave already, its slot is the
// same. Without a slot in gen, it is Grant.
func (s *Schedule) Missed(uid uint32, gen uint64, urgent bool, now time.Time) (time.Time, error) {
	sl, ok := s.slots[uid]
	if gen != s.gen || !ok {
		return s.Grant(uid, gen, urgent, now)
	}
	if sl.missed || now.Sub(sl.at) <= s.tick {
		return sl.at, nil
	}
	s.prune(now)
	return s.give(uid, urgent || sl.urgent, true, now), nil
}

// give takes the first free tick from now for uid's slot.
func (s *Schedule) give(uid uint32, urgent, missed bool, now time.Time) time.Time {
	i := s.free(now, urgent)
	s.take(i)
	at := s.at(i)
	s.slots[uid] = slot{at: at, tick: i, urgent: urgent, missed: missed}
	return at
}

func (s *Schedule) at(i int64) time.Time { return s.anchor.Add(time.Duration(i) * s.tick) }

// free returns the first tick at or after now that an urgent (or ordinary)
// request may take, starting the grid again when every slot is past.
func (s *Schedule) free(now time.Time, urgent bool) int64 {
	if n := len(s.used); n == 0 || s.at(s.used[n-1]).Before(now) {
		start := now
		if n > 0 {
			start = later(now, s.at(s.used[n-1]).Add(s.tick))
		}
		s.anchor, s.used = start, s.used[:0]
		return 0
	}
	var i int64
	if d := now.Sub(s.anchor); d > 0 {
		i = int64((d + s.tick - 1) / s.tick)
	}
	k, _ := slices.BinarySearch(s.used, i)
	for ; ; i++ {
		if k < len(s.used) && s.used[k] == i {
			k++
			continue
		}
		if urgent || i%urgentEvery != urgentEvery-1 {
			return i
		}
	}
}

func (s *Schedule) take(i int64) {
	k, _ := slices.BinarySearch(s.used, i)
	s.used = slices.Insert(s.used, k, i)
}

func (s *Schedule) release(i int64) {
	if k, ok := slices.BinarySearch(s.used, i); ok {
		s.used = slices.Delete(s.used, k, k+1)
	}
}

// cancel frees the ticks after now: their slots were not used yet.
func (s *Schedule) cancel(now time.Time) {
	s.used = slices.DeleteFunc(s.used, func(i int64) bool { return s.at(i).After(now) })
}

// prune drops the ticks that can no longer hold back a new one (a tick
// after them would be at or before now anyway); the last tick is always
// kept, so a new grid starts at least a tick after it.
func (s *Schedule) prune(now time.Time) {
	k := 0
	for k < len(s.used)-1 && !s.at(s.used[k]).Add(s.tick).After(now) {
		k++
	}
	s.used = slices.Delete(s.used, 0, k)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
