package keywatch

import (
	"context"
	"time"
)

// Timing of the settle rule ([Settled]).
const (
	// Coalesce is how long after an event the first read waits, so that
	// the events of one write (create, modify, close) make one read.
	Coalesce = 2 * time.Millisecond
	// Confirm is how long after a read the next one comes. A snapshot
	// counts only when two reads Confirm apart agree: a key file caught
	// missing or half written during a copy never survives that. A change
	// therefore counts about Coalesce+Confirm (22 ms) after the last
	// write, well within 50 ms.
	Confirm = 20 * time.Millisecond
)

// Settled follows the key files as [Watcher.Run] does, but hands apply only
// settled snapshots: after an event (an event overflow, every Resync, and
// once at the start, for what changed before the watches existed), it
// reads a snapshot Coalesce later, then reads again every Confirm until
// two reads in a row agree (same), and applies the later one. A new event
// starts over; under a steady stream of events (longer than MaxDelay) the
// reads go on Confirm apart, so unrelated churn does not hold back a real
// change.
//
// apply receives the snapshot to keep (the caller compares it with what it
// holds, and drops it if it keeps its own); drop receives every other
// snapshot read, so that keys in them can be zeroed. read, same, apply and
// drop run on Settled's goroutine, one at a time. Settled returns when ctx
// is done, releasing the watches and dropping a reading it still holds.
func Settled[S any](ctx context.Context, w *Watcher, read func() S, same func(a, b S) bool, apply func(S), drop func(S)) {
	s := newSettle(func() S { w.rewatch(); return read() }, same, apply, drop, w.o.MaxDelay)
	s.event(time.Now())
	w.run(ctx, s)
	s.forget() // a reading not yet confirmed when ctx ended
}

// settle is the settle rule as a state machine: the watch loop (or a test,
// on a fake clock) tells it of events and calls fire when due.
type settle[S any] struct {
	read        func() S
	same        func(a, b S) bool
	apply, drop func(S)
	maxDelay    time.Duration

	a     S // the last read, not yet confirmed (when haveA)
	haveA bool
	since time.Time // first event not settled yet; zero when settled
	next  time.Time // next read; zero when settled
}

func newSettle[S any](read func() S, same func(a, b S) bool, apply, drop func(S), maxDelay time.Duration) *settle[S] {
	return &settle[S]{read: read, same: same, apply: apply, drop: drop, maxDelay: maxDelay}
}

// event: something may have changed. What was read before it no longer
// counts, unless events have kept coming for maxDelay: then the reads go
// on as planned.
func (s *settle[S]) event(now time.Time) {
	if s.since.IsZero() {
		s.since = now
	} else if now.Sub(s.since) >= s.maxDelay {
		return
	}
	s.forget()
	s.next = now.Add(Coalesce)
}

func (s *settle[S]) periodic(now time.Time) { s.event(now) }

func (s *settle[S]) due() time.Time { return s.next }

// fire reads, and applies when this read agrees with the one before.
func (s *settle[S]) fire(now time.Time) {
	b := s.read()
	switch {
	case s.haveA && s.same(s.a, b):
		s.forget()
		s.since, s.next = time.Time{}, time.Time{}
		s.apply(b)
		return
	case s.haveA:
		s.drop(s.a)
	}
	s.a, s.haveA = b, true
	s.next = now.Add(Confirm)
}

func (s *settle[S]) forget() {
	if s.haveA {
		s.drop(s.a)
		var zero S
		s.a, s.haveA = zero, false
	}
}
