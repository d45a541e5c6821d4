package keywatch

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv"
)

// The settle rule on a fake clock: a key file whose content changes at
// given times (each change an event, unless silent: a missed event), the
// rule driven exactly as the watch loop drives it, and a caller that bumps
// its generation whenever an applied snapshot differs from what it holds.

type change struct {
	at      time.Duration
	content string // "" is a missing file
	silent  bool   // no event (lost, or a write inotify does not report)
}

type applied struct {
	at      time.Duration
	content string
}

type sim struct {
	changes []change
	now     time.Duration
	held0   string // the content at time 0
	held    string // what the caller holds
	gen     int
	applied []applied
	reads   int
	drops   int
}

func (w *sim) content() string {
	c := w.held0
	for _, ch := range w.changes {
		if ch.at <= w.now {
			c = ch.content
		}
	}
	return c
}

// run plays changes over initial (held and settled at time 0) until the
// rule has nothing left to do, and at least until the last change.
func run(t *testing.T, initial string, maxDelay time.Duration, changes ...change) *sim {
	t.Helper()
	w := &sim{changes: changes, held: initial, held0: initial}
	start := time.Unix(1_000_000, 0)
	s := newSettle(
		func() string { w.reads++; return w.content() },
		func(a, b string) bool { return a == b },
		func(c string) {
			w.applied = append(w.applied, applied{w.now, c})
			if c != w.held {
				w.held = c
				w.gen++
			}
		},
		func(string) { w.drops++ },
		maxDelay,
	)
	events := []time.Duration{}
	for _, ch := range changes {
		if !ch.silent {
			events = append(events, ch.at)
		}
	}
	for steps := 0; ; steps++ {
		if steps > 100000 {
			t.Fatal("the settle rule never settles")
		}
		due := time.Duration(-1)
		if d := s.due(); !d.IsZero() {
			due = d.Sub(start)
		}
		switch {
		case len(events) > 0 && (due < 0 || events[0] <= due):
			w.now = events[0]
			events = events[1:]
			s.event(start.Add(w.now))
		case due >= 0:
			w.now = due
			s.fire(start.Add(w.now))
		default:
			if w.reads != len(w.applied)+w.drops {
				t.Fatalf("%d snapshots read, %d applied and %d dropped: each must be one or the other", w.reads, len(w.applied), w.drops)
			}
			return w
		}
	}
}

const ms = time.Millisecond

func (w *sim) String() string { return fmt.Sprintf("applied %v, generation %d", w.applied, w.gen) }

// appliedContent reports whether content was ever applied.
func (w *sim) appliedContent(content string) bool {
	return slices.ContainsFunc(w.applied, func(a applied) bool { return a.content == content })
}

func TestSettleHalfWritten(t *testing.T) {
	// A key written in two halves 5 ms apart: one change, to the whole key.
	w := run(t, "K1", 200*ms, change{at: 0, content: "K2-half"}, change{at: 5 * ms, content: "K2"})
	if w.gen != 1 || w.held != "K2" || w.appliedContent("K2-half") {
		t.Fatalf("%v: want one change, to K2, and never the half-written key", w)
	}
	// The last write's event starts over: the change counts one Confirm
	// after the read that follows it.
	if last := w.applied[len(w.applied)-1].at; last != 5*ms+Coalesce+Confirm {
		t.Fatalf("%v: the change counted at %v, want %v", w, last, 5*ms+Coalesce+Confirm)
	}
	// The second half with no event of its own: the reads disagree, and
	// one more read settles it.
	w = run(t, "K1", 200*ms, change{at: 0, content: "K2-half"}, change{at: 15 * ms, content: "K2", silent: true})
	if w.gen != 1 || w.held != "K2" || w.appliedContent("K2-half") {
		t.Fatalf("silent second half: %v", w)
	}
	if last := w.applied[len(w.applied)-1].at; last > 15*ms+50*ms {
		t.Fatalf("silent second half: %v: counted at %v", w, last)
	}
}

func TestSettleBlink(t *testing.T) {
	// Removed and written back within 10 ms: nothing moves.
	w := run(t, "K", 200*ms, change{at: 0, content: ""}, change{at: 10 * ms, content: "K"})
	if w.gen != 0 || w.appliedContent("") {
		t.Fatalf("%v: a key missing for 10 ms counted", w)
	}
	// Replaced through a missing moment of 1 ms (a copy: unlink, then
	// create, then write): only the new key counts.
	w = run(t, "K1", 200*ms, change{at: 0, content: ""}, change{at: ms, content: "K2-half"}, change{at: 2 * ms, content: "K2"})
	if w.gen != 1 || w.held != "K2" || w.appliedContent("") || w.appliedContent("K2-half") {
		t.Fatalf("copy over the key: %v", w)
	}
	// Removed for longer than a Confirm period: that counts (a missing
	// POOL is "cannot tell" for the caller), and so does its return.
	w = run(t, "K", 200*ms, change{at: 0, content: ""}, change{at: 150 * ms, content: "K"})
	if w.gen != 2 || w.held != "K" || !w.appliedContent("") {
		t.Fatalf("removed for 150 ms: %v: want the removal and the return to count", w)
	}
}

func TestSettleLatency(t *testing.T) {
	w := run(t, "K1", 200*ms, change{at: 0, content: "K2"})
	if w.gen != 1 || len(w.applied) != 1 || w.applied[0].at != Coalesce+Confirm {
		t.Fatalf("%v: want one change at %v", w, Coalesce+Confirm)
	}
	if Coalesce+Confirm > 50*ms {
		t.Fatalf("a change counts %v after the write, more than 50 ms", Coalesce+Confirm)
	}
}

func TestSettleSteadyStream(t *testing.T) {
	// The key changes once, and unrelated files in the directory make an
	// event every 5 ms for a second: the change still counts, by
	// MaxDelay and two reads.
	changes := []change{{at: 0, content: "K2"}}
	for at := 5 * ms; at < time.Second; at += 5 * ms {
		changes = append(changes, change{at: at, content: "K2"})
	}
	w := run(t, "K1", 200*ms, changes...)
	if w.gen != 1 || w.applied[0].content != "K2" || w.applied[0].at > 200*ms+Coalesce+2*Confirm {
		t.Fatalf("%v: want K2 counted by %v", w, 200*ms+Coalesce+2*Confirm)
	}
	// A key rewritten with new bytes every 10 ms for 300 ms: no content
	// of the churn ever counts, only the last, once it stays.
	changes = nil
	for i := range 30 {
		changes = append(changes, change{at: time.Duration(i) * 10 * ms, content: fmt.Sprint("K", i)})
	}
	w = run(t, "K", 200*ms, changes...)
	if w.gen != 1 || w.held != "K29" {
		t.Fatalf("churn: %v: want one change, to the last key", w)
	}
}

// TestSettledFiles: Settled on a real directory applies what is there at
// the start and then a change, and drops every snapshot it does not apply.
func TestSettledFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "passwords.d")
	mkdir(t, dir)
	key := filepath.Join(dir, "POOL")
	if err := os.WriteFile(key, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	read := func() string {
		b, err := os.ReadFile(key)
		if err != nil {
			return "missing"
		}
		return string(b)
	}
	var mu sync.Mutex
	var got []string
	reads, drops := 0, 0
	w := New(Options{Dir: dir, Log: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Settled(ctx, w,
			func() string { mu.Lock(); reads++; mu.Unlock(); return read() },
			func(a, b string) bool { return a == b },
			func(s string) { mu.Lock(); got = append(got, s); mu.Unlock() },
			func(string) { mu.Lock(); drops++; mu.Unlock() })
	}()
	defer func() { cancel(); <-done }()
	applied := func(s string) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(got, s)
	}
	// The first round, at the start, applies what is there.
	testenv.Eventually(t, 5*time.Second, "the first snapshot", func() bool { return applied("one") })
	tmp := filepath.Join(dir, ".POOL.new")
	if err := os.WriteFile(tmp, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, key); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the changed key", func() bool { return applied("two") })
	// Stop while a reading waits for its confirmation: it is dropped too.
	mu.Lock()
	n := reads
	mu.Unlock()
	if err := os.WriteFile(filepath.Join(dir, "OTHER"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "a reading after the event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return reads > n
	})
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if reads != len(got)+drops {
		t.Fatalf("%d reads, %d applied, %d dropped", reads, len(got), drops)
	}
	if slices.Contains(got, "missing") {
		t.Fatalf("applied %q: the key was never missing", got)
	}
}
