package verifyd

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/localapi"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/verifyapi"
)

// TestRefetchSlot: POST /v1/refetch-slot through the client. A lone agent
// goes at once and gets the same slot when it asks again; a request for a
// generation verifyd does not have (yet, or any more) is 409
// wrong-generation naming both; after a key change the new generation gets
// slots and the old one is refused.
func TestRefetchSlot(t *testing.T) {
	noCondor(t)
	f := newRotation(t)
	ts := start(t, fast(f.dir), nil)
	ctx := context.Background()
	g := ts.gen(t)

	before := time.Now()
	at, err := ts.client.RefetchSlot(ctx, verifyapi.RefetchSlotRequest{Generation: g})
	if err != nil {
		t.Fatalf("RefetchSlot: %v", err)
	}
	if at.Before(before.Add(-time.Millisecond)) || at.After(time.Now()) {
		t.Fatalf("a lone agent's slot is %v from the request; want at once", at.Sub(before))
	}
	for _, urgent := range []bool{false, true} {
		if again, err := ts.client.RefetchSlot(ctx, verifyapi.RefetchSlotRequest{Generation: g, Urgent: urgent}); err != nil || !again.Equal(at) {
			t.Fatalf("asking again (urgent %v): %v, %v; want the same slot %v", urgent, again, err, at)
		}
	}
	if !strings.Contains(ts.logs.String(), "refetch slot") {
		t.Fatalf("no log line for the slot:\n%s", ts.logs)
	}
	// The agent could not start at it: more than a tick later, "missed"
	// gets a new slot, not before the request.
	testenv.Eventually(t, 10*time.Second, "two ticks to pass", func() bool { return time.Since(at) > 2*ts.slots.Tick() })
	before = time.Now()
	missed, err := ts.client.RefetchSlot(ctx, verifyapi.RefetchSlotRequest{Generation: g, Missed: true})
	if err != nil || missed.Before(before) {
		t.Fatalf("a missed slot asked again: %v from the request, %v; want a new slot", missed.Sub(before), err)
	}
	at = missed

	wrong := func(gen uint64) {
		t.Helper()
		_, err := ts.client.RefetchSlot(ctx, verifyapi.RefetchSlotRequest{Generation: gen, Urgent: true})
		var se *verifyapi.ServerError
		if !errors.As(err, &se) || se.Status != http.StatusConflict || se.Code != verifyapi.CodeWrongGeneration ||
			!errors.Is(err, verifyapi.ErrWrongGeneration) || errors.Is(err, verifyapi.ErrUnavailable) || errors.Is(err, verifyapi.ErrUnsupported) {
			t.Fatalf("generation %d: %v; want 409 wrong-generation", gen, err)
		}
		cur := ts.Generation()
		if want := "asked for key generation " + itoa(gen) + ", but verifyd's is " + itoa(cur); !strings.Contains(err.Error(), want) {
			t.Fatalf("the error does not say which generations: %v", err)
		}
	}
	wrong(g + 1) // not yet (or verifyd restarted and counts from 1 again)

	// A key change: the new generation gets a slot, the old one is over.
	writeKey(t, filepath.Join(f.dir, "NEW"), f.extra)
	testenv.Eventually(t, 10*time.Second, "the generation to move", func() bool { return ts.Generation() == g+1 })
	before = time.Now()
	at2, err := ts.client.RefetchSlot(ctx, verifyapi.RefetchSlotRequest{Generation: g + 1})
	if err != nil || at2.Before(before.Add(-time.Millisecond)) || at2.After(time.Now().Add(ts.slots.Tick())) {
		t.Fatalf("RefetchSlot after the key change: %v from the request, %v; want at once", at2.Sub(before), err)
	}
	wrong(g)
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestRefetchSlotPerUID: the schedule is host-wide, one slot per peer uid
// (asked through ServeHTTP with the peer a connection would carry), and the
// per-uid rate limit still applies.
func TestRefetchSlotPerUID(t *testing.T) {
	noCondor(t)
	f := newRotation(t)
	o := fast(f.dir)
	o.RefetchRate = 10 // a tick of 100 ms: the slots are far apart
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Wipe()
	ask := func(uid uint32, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, verifyapi.PathRefetchSlot, strings.NewReader(body))
		r = r.WithContext(localapi.WithPeer(r.Context(), localapi.Peer{UID: uid, PID: 1}))
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w
	}
	slot := func(uid uint32, urgent bool) time.Time {
		t.Helper()
		body := `{"generation":1}`
		if urgent {
			body = `{"generation":1,"urgent":true}`
		}
		w := ask(uid, body)
		var resp verifyapi.RefetchSlotResponse
		if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &resp) != nil || resp.NotBefore.IsZero() {
			t.Fatalf("uid %d: %d %s", uid, w.Code, w.Body)
		}
		if !strings.HasSuffix(strings.TrimSpace(w.Body.String()), `Z"}`) {
			t.Fatalf("not_before is not RFC 3339 in UTC: %s", w.Body)
		}
		return resp.NotBefore
	}
	first := slot(1000, false)
	var slots []time.Time
	const n = 2 * urgentEvery // a queue longer than one reserved tick's cycle
	for uid := uint32(1001); uid < 1000+n; uid++ {
		slots = append(slots, slot(uid, false))
	}
	slots = append(slots, first)
	if again := slot(1000, false); !again.Equal(first) {
		t.Fatalf("uid 1000 asking again: %v, want %v", again, first)
	}
	withinRate(t, slots, 10)
	end := slices.MaxFunc(slots, time.Time.Compare)
	if end.Sub(first) < (n-1)*100*time.Millisecond {
		t.Fatalf("%d uids at 10/s: the last slot is %v after the first; want %v or more", n, end.Sub(first), (n-1)*100*time.Millisecond)
	}
	// An urgent uid goes ahead of the queue, within urgentEvery ticks.
	before := time.Now()
	if u := slot(2000, true); u.Sub(before) > urgentEvery*100*time.Millisecond || !u.Before(end) {
		t.Fatalf("urgent uid: %v after asking, behind the queue ending %v after", u.Sub(before), end.Sub(before))
	}

	// The per-uid rate limit applies to slot requests too.
	o.Rate, o.Burst = 1, 2
	s2, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Wipe()
	s = s2
	slot(7, false)
	slot(7, false)
	if w := ask(7, `{"generation":1}`); w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Fatalf("over the rate: %d %s", w.Code, w.Body)
	}
	slot(8, false) // another uid is not held back
}

// Bad requests get 400 and say what is wanted; unknown fields are
// ignored; GET is 405; an oversized body is 413.
func TestRefetchSlotHostile(t *testing.T) {
	noCondor(t)
	f := newRotation(t)
	ts := start(t, fast(f.dir), nil)
	for _, body := range []string{"", "{", "[]", "null", `"x"`, "{}", `{"generation":0}`, `{"generation":-1}`, `{"generation":1.5}`,
		`{"generation":"1"}`, `{"generation":null}`, `{"generation":1,"urgent":"yes"}`, `{"generation":99999999999999999999999}`, "\x00\xff"} {
		r := ts.do(t, http.MethodPost, verifyapi.PathRefetchSlot, body)
		if r.status != http.StatusBadRequest || r.code(t) != verifyapi.CodeBadRequest || !strings.Contains(string(r.body), `{\"generation\": N`) {
			t.Fatalf("body %q: %d %s", body, r.status, r.body)
		}
	}
	r := ts.do(t, http.MethodPost, verifyapi.PathRefetchSlot, `{"generation":1,"urgent":false,"pool":"later release"}`)
	if r.status != http.StatusOK || !strings.Contains(string(r.body), `"not_before":"`) {
		t.Fatalf("unknown field: %d %s", r.status, r.body)
	}
	r = ts.do(t, http.MethodGet, verifyapi.PathRefetchSlot, nil)
	if r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "POST" {
		t.Fatalf("GET: %d %v %s", r.status, r.header, r.body)
	}
	big := `{"generation":1,"x":"` + strings.Repeat("a", 2<<10) + `"}`
	for _, body := range []any{big, strings.NewReader(big)} {
		if r := ts.do(t, http.MethodPost, verifyapi.PathRefetchSlot, body); r.status != http.StatusRequestEntityTooLarge || r.code(t) != verifyapi.CodeTooLarge {
			t.Fatalf("oversized body: %d %s", r.status, r.body)
		}
	}
}

func TestRefetchRateOption(t *testing.T) {
	noCondor(t)
	f := newRotation(t)
	for _, bad := range []float64{-1, 0.5, 1e6, math.NaN(), math.Inf(1)} {
		o := fast(f.dir)
		o.RefetchRate = bad
		if s, err := New(o); err == nil || !strings.Contains(err.Error(), "refetch rate") {
			if s != nil {
				s.Wipe()
			}
			t.Fatalf("RefetchRate %v: %v", bad, err)
		}
	}
	s, err := New(fast(f.dir))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Wipe()
	if want := time.Duration(float64(time.Second) / config.DefaultRefetchRate); s.slots.Tick() != want {
		t.Fatalf("default tick %v, want %v", s.slots.Tick(), want)
	}
}
