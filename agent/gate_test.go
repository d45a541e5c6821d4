package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/agent/fetch"
	"github.com/tokend/tokend/agent/validate"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// The pool's loop carries out the policy: it closes the mount's gate once
// per key change, starts the fetch at once for a tool waiting there, opens
// the gate when the fetch ends, asks verifyd for slots and keeps to them.

// fakeGates records the gates the agent closes.
type fakeGates struct {
	mu     sync.Mutex
	gates  []*fakeGate
	opened atomic.Int32 // OpenGates calls
}

type fakeGate struct {
	names   []string
	wait    time.Duration
	waiting chan struct{}
	opened  atomic.Bool
}

func (g *fakeGate) Open()                    { g.opened.Store(true) }
func (g *fakeGate) Waiting() <-chan struct{} { return g.waiting }

func (f *fakeGates) CloseGate(names []string, wait time.Duration) gate {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := &fakeGate{names: names, wait: wait, waiting: make(chan struct{})}
	f.gates = append(f.gates, g)
	return g
}

func (f *fakeGates) OpenGates() { f.opened.Add(1) }

func (f *fakeGates) all() []*fakeGate {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.gates)
}

// stepFetcher hands the test each fetch, to answer: nil for a token whose
// sub is u<n>@example.org (n counts the fetches), else that error.
type stepFetcher struct {
	n     atomic.Int32
	calls chan fetchCall
}

type fetchCall struct {
	at     time.Time
	answer chan error
}

func (f *stepFetcher) Fetch(ctx context.Context, _ fetch.Request, _ func(fetch.Progress)) (*secmem.Buffer, error) {
	n := f.n.Add(1)
	c := fetchCall{at: time.Now(), answer: make(chan error)}
	select {
	case f.calls <- c:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var err error
	select {
	case err = <-c.answer:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	raw, err := token.Sign(token.Claims{Issuer: "example.org", Subject: fmt.Sprintf("u%d@example.org", n), Lifetime: time.Hour}, "POOL", fuzzKey)
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	return secmem.From(raw)
}

// next waits for the agent's next fetch.
func (f *stepFetcher) next(t *testing.T) fetchCall {
	t.Helper()
	select {
	case c := <-f.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no fetch within 10s")
	}
	return fetchCall{}
}

// staleKey finds the tokens of the subs it is told rotated-key, the rest
// valid.
type staleKey struct {
	mu    sync.Mutex
	stale map[string]bool
}

func (*staleKey) Name() string { return validate.KeyDir }

func (k *staleKey) set(sub string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stale[sub] = true
}

func (k *staleKey) CheckKey(_ context.Context, _ []byte, t *token.Token) (token.Reason, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stale[t.Sub] {
		return token.RotatedKey, nil
	}
	return token.Valid, nil
}

// fakeSlots grants the slots the test sets, and records what was asked.
type fakeSlots struct {
	mu   sync.Mutex
	in   time.Duration // the slot: now + in
	err  error         // else this error
	asks []slotAsk     // Gen: verifyd's generation
}

func (s *fakeSlots) RefetchSlot(_ context.Context, req verifyapi.RefetchSlotRequest) (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asks = append(s.asks, slotAsk{Gen: req.Generation, Urgent: req.Urgent, Missed: req.Missed})
	if s.err != nil {
		return time.Time{}, s.err
	}
	if req.Urgent {
		return time.Now(), nil
	}
	return time.Now().Add(s.in), nil
}

func (s *fakeSlots) asked() []slotAsk {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.asks)
}

// runKeeper runs a's loop until the test ends. Its jitters draw the top of
// their range.
func runKeeper(t *testing.T, a *Agent) {
	t.Helper()
	for _, p := range a.pools {
		p.policy.rand = func(n time.Duration) time.Duration { return n - 1 }
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		a.keep(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// gatedAgent runs an agent with fake gates, and fake verifyd slots when
// slots is not nil, and waits until its first session token (of
// u1@example.org) is in and seen.
func gatedAgent(t *testing.T, slots *fakeSlots) (*Agent, *staleKey, *stepFetcher, *fakeGates) {
	t.Helper()
	k := &staleKey{stale: map[string]bool{}}
	f := &stepFetcher{calls: make(chan fetchCall)}
	a := newTestAgent(t, k, f)
	fg := &fakeGates{}
	a.gates = fg
	if slots != nil {
		p := a.pools[0]
		p.slots = slots
		p.verifyd = &verifydWatch{up: true, st: verifydState{Generation: 7}, check: &validate.Verifyd{}}
	}
	runKeeper(t, a)
	f.next(t).answer <- nil
	waitSession(t, a, "u1@example.org")
	return a, k, f, fg
}

// waitSession waits until the store shows the session token of sub and
// the keeper has seen it.
func waitSession(t *testing.T, a *Agent, sub string) {
	t.Helper()
	p := a.pools[0]
	testenv.Eventually(t, 10*time.Second, "the session token of "+sub+" to be shown", func() bool {
		for _, in := range a.store.Infos() {
			if in.Name == p.cfg.SessionToken && !in.Hidden && in.Token.Sub == sub {
				return true
			}
		}
		return false
	})
	// And a pass has seen it usable: only then does a key change count
	// as one that made it unusable.
	testenv.Eventually(t, 10*time.Second, "the keeper to see the session token of "+sub, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return p.session.usable && !p.session.fetching
	})
}

// Without slots: a key change closes one gate on the session token; a tool
// waiting at it starts the fetch without the jitter; its end opens the
// gate. A failed fetch opens it too, and its retries close none.
func TestGateOncePerKeyChange(t *testing.T) {
	a, k, f, fg := gatedAgent(t, nil)
	p := a.pools[0]
	if n := len(fg.all()); n != 0 {
		t.Fatalf("%d gates closed for the first fetch, want none", n)
	}

	k.set("u1@example.org")
	changed := time.Now()
	a.onRotation(p, true, true)
	testenv.Eventually(t, 10*time.Second, "a gate to close after the key change", func() bool { return len(fg.all()) == 1 })
	g := fg.all()[0]
	if !slices.Equal(g.names, []string{p.cfg.SessionToken}) || g.wait != p.cfg.Fetch.Wait.Std() {
		t.Fatalf("gate on %q for %v, want on the session token for fetch.wait (%v)", g.names, g.wait, p.cfg.Fetch.Wait)
	}
	close(g.waiting)
	c := f.next(t)
	if waited := c.at.Sub(changed); waited >= rotationJitter-time.Second {
		t.Fatalf("the fetch started %v after the key change though a tool waits: the jitter (%v) was not cut short", waited, rotationJitter)
	}
	if g.opened.Load() {
		t.Fatal("the gate opened before the fetch ended")
	}
	c.answer <- nil
	waitSession(t, a, "u2@example.org")
	testenv.Eventually(t, 10*time.Second, "the gate to open once the fresh token is in", g.opened.Load)

	// The next key change: its own gate, opened by the failed fetch; the
	// retries re-arm nothing.
	k.set("u2@example.org")
	a.onRotation(p, true, true)
	testenv.Eventually(t, 10*time.Second, "a second gate to close", func() bool { return len(fg.all()) == 2 })
	g = fg.all()[1]
	close(g.waiting)
	f.next(t).answer <- errors.New("the schedd is away")
	testenv.Eventually(t, 10*time.Second, "the gate to open when the fetch failed", g.opened.Load)
	f.next(t).answer <- errors.New("the schedd is still away")
	f.next(t).answer <- nil
	waitSession(t, a, "u5@example.org")
	if n := len(fg.all()); n != 2 {
		t.Fatalf("%d gates closed for two key changes, want 2: a retry closed one", n)
	}
}

// With verifyd's slots: the agent asks only when a key change made its
// session token unusable, fetches no sooner than the slot, and asks again,
// urgent, when a tool waits at the gate.
func TestSlots(t *testing.T) {
	slots := &fakeSlots{in: 300 * time.Millisecond}
	a, k, f, fg := gatedAgent(t, slots)
	p := a.pools[0]
	if asks := slots.asked(); len(asks) != 0 {
		t.Fatalf("slots asked for the first fetch: %v, want none", asks)
	}

	k.set("u1@example.org")
	asked := time.Now()
	a.onRotation(p, true, true)
	c := f.next(t)
	if asks := slots.asked(); !slices.Equal(asks, []slotAsk{{Gen: 7}}) {
		t.Fatalf("slots asked %v, want one, not urgent, in verifyd's generation 7", asks)
	}
	if c.at.Before(asked.Add(slots.in)) {
		t.Fatalf("the fetch started %v after the key change, before its slot (%v)", c.at.Sub(asked), slots.in)
	}
	c.answer <- nil
	waitSession(t, a, "u2@example.org")

	// A slot far off; a tool waits: asked again, urgent, granted now.
	slots.mu.Lock()
	slots.in = time.Hour
	slots.mu.Unlock()
	k.set("u2@example.org")
	p.verifyd.mu.Lock()
	p.verifyd.st.Generation = 8
	p.verifyd.mu.Unlock()
	a.onRotation(p, true, true)
	testenv.Eventually(t, 10*time.Second, "a gate to close after the second key change", func() bool { return len(fg.all()) == 2 })
	close(fg.all()[1].waiting)
	f.next(t).answer <- nil
	waitSession(t, a, "u3@example.org")
	// (The two asks of generation 8 run in parallel: either may come first.)
	if asks := slots.asked(); len(asks) != 3 || !slices.Contains(asks[1:], slotAsk{Gen: 8, Urgent: false}) || !slices.Contains(asks[1:], slotAsk{Gen: 8, Urgent: true}) {
		t.Fatalf("slots asked %v, want generation 8 asked, then again, urgent", asks)
	}
}

// A verifyd without slots (404, an older release): the refetch falls back
// to the jitter, which a waiting tool cuts short, and that verifyd is not
// asked again.
func TestSlotsUnsupported(t *testing.T) {
	slots := &fakeSlots{err: &verifyapi.ServerError{Status: 404, Code: "not-found"}}
	a, k, f, fg := gatedAgent(t, slots)
	p := a.pools[0]
	for i, sub := range []string{"u1@example.org", "u2@example.org"} {
		k.set(sub)
		changed := time.Now()
		a.onRotation(p, true, true)
		testenv.Eventually(t, 10*time.Second, "a gate to close after the key change", func() bool { return len(fg.all()) == i+1 })
		testenv.Eventually(t, 10*time.Second, "verifyd's 404 to be taken", p.noSlots.Load)
		close(fg.all()[i].waiting)
		c := f.next(t)
		if waited := c.at.Sub(changed); waited >= rotationJitter-time.Second {
			t.Fatalf("the fetch started %v after the key change though a tool waits", waited)
		}
		c.answer <- nil
		waitSession(t, a, fmt.Sprintf("u%d@example.org", i+2))
		if asks := slots.asked(); len(asks) != 1 || !p.noSlots.Load() {
			t.Fatalf("after key change %d: slots asked %v, noSlots %v; want one ask, then none", i+1, asks, p.noSlots.Load())
		}
	}
	// verifyd comes back after being away, maybe upgraded: it is asked
	// for slots again.
	a.onVerifyd(p, verifydState{Generation: 1}, verifydBack)
	if p.noSlots.Load() {
		t.Fatal("verifyd came back, and the agent still takes it for one without slots")
	}
}

// A wipe opens every gate before the tokens go: no tool stays parked
// waiting for a token that will not come.
func TestWipeOpensGates(t *testing.T) {
	a := newTestAgent(t, &staleKey{stale: map[string]bool{}}, nil)
	fg := &fakeGates{}
	a.gates = fg
	putToken(t, a, "a")
	w := httptest.NewRecorder()
	a.handleWipe(w, httptest.NewRequest(http.MethodPost, "/v1/wipe", strings.NewReader(`{}`)))
	if w.Code != http.StatusNoContent {
		t.Fatalf("wipe: %d %s", w.Code, w.Body)
	}
	if n := fg.opened.Load(); n != 1 {
		t.Fatalf("the wipe opened the gates %d times, want once", n)
	}
	if a.store.Has("a") {
		t.Fatal("the wipe left a token")
	}
}
