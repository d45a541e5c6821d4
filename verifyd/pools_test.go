package verifyd

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// noCondor makes HTCondor's settings unset for the test: no trust domain,
// no max age, whatever the machine has.
func noCondor(t *testing.T) {
	t.Helper()
	t.Setenv("PATH", t.TempDir())
	t.Setenv("_CONDOR_TRUST_DOMAIN", "")
	t.Setenv("_CONDOR_SEC_TOKEN_MAX_AGE", "")
}

// signAs makes a token of issuer for kid, signed with the key derived from
// file, issued at iat.
func signAs(t testing.TB, issuer, kid string, file []byte, iat time.Time, lifetime time.Duration) []byte {
	t.Helper()
	tok, err := keys.Sign(file, kid, token.Claims{Issuer: issuer, Subject: "alice@" + issuer, Lifetime: lifetime, IssuedAt: iat})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// capture returns a logger writing to a buffer.
func capture() (*syncbuf.Buffer, *slog.Logger) {
	b := &syncbuf.Buffer{}
	return b, slog.New(slog.NewTextHandler(b, nil))
}

// classify is answer for goroutines other than the test's: an unexpected
// error becomes a reason no test expects.
func (ts *testServer) classify(raw []byte) token.Reason {
	r, err := ts.client.Verify(context.Background(), raw)
	var se *verifyapi.ServerError
	switch {
	case err == nil:
		return r.Reason
	case errors.As(err, &se) && se.Code == verifyapi.CodeKeyUnavailable:
		return unavailable
	}
	return token.Reason("error: " + err.Error())
}

func (ts *testServer) full(t testing.TB, raw []byte) verifyapi.VerifyResponse {
	t.Helper()
	r, err := ts.client.Verify(context.Background(), raw)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return r
}

// TestTrustDomain: with a trust domain verifyd judges its own issuer's
// tokens as before, gives no verdict on any other issuer's (whatever their
// kid and key), and reports its trust domain in every answer.
func TestTrustDomain(t *testing.T) {
	noCondor(t)
	f := newRotation(t) // tokens of iss example.org
	o := fast(f.dir)
	o.TrustDomain = "example.org"
	ts := start(t, o, func(s *Server) { s.pollTimeout = 50 * time.Millisecond })
	if err := os.Chmod(filepath.Join(f.dir, "AP"), 0o644); err != nil { // AP unusable
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "AP to be refused", func() bool { return ts.answer(t, f.tOldAP) == unavailable })

	now := time.Now()
	other := map[string][]byte{
		"POOL, another key":   signAs(t, "other.example", "POOL", keys.NewFile(), now, time.Hour),
		"POOL, this key":      signAs(t, "other.example", "POOL", f.oldPool, now, time.Hour),
		"kid without a file":  signAs(t, "other.example", "NONE", keys.NewFile(), now, time.Hour),
		"kid unusable here":   signAs(t, "other.example", "AP", f.oldAP, now, time.Hour),
		"expired":             signAs(t, "other.example", "POOL", f.oldPool, now.Add(-2*time.Hour), time.Hour),
		"iss differs in case": signAs(t, "Example.org", "POOL", f.oldPool, now, time.Hour),
	}
	for name, raw := range other {
		r := ts.full(t, raw)
		if r.Reason != token.Valid || r.CannotTell != verifyapi.CannotTellOtherIssuer || r.TrustDomain != "example.org" || r.Generation != ts.Generation() {
			t.Errorf("other issuer, %s: %+v; want no verdict (cannot_tell other-issuer) and the trust domain", name, r)
		}
	}
	own := map[string]token.Reason{
		"POOL":          token.Valid,
		"POOL rotated":  token.RotatedKey,
		"NEW (no file)": token.UnknownKey,
	}
	raws := map[string][]byte{"POOL": f.tOldPool, "POOL rotated": f.tNewPool, "NEW (no file)": f.tExtra}
	for name, want := range own {
		r := ts.full(t, raws[name])
		if r.Reason != want || r.CannotTell != "" || r.TrustDomain != "example.org" {
			t.Errorf("own issuer, %s: %+v; want %q", name, r, want)
		}
	}
	if r := ts.answer(t, []byte("not.a.token")); r != token.Malformed {
		t.Errorf("malformed: %q", r)
	}
	// The wire carries the additions by name.
	body := ts.do(t, "POST", verifyapi.PathVerify, `{"token":"`+string(other["POOL, another key"])+`"}`).body
	if !strings.Contains(string(body), `"cannot_tell":"other-issuer"`) || !strings.Contains(string(body), `"trust_domain":"example.org"`) || !strings.Contains(string(body), `"reason":""`) {
		t.Errorf("other issuer on the wire: %s", body)
	}
	st, err := ts.client.State(context.Background())
	if err != nil || st.TrustDomain != "example.org" || st.Generation != ts.Generation() || st.TokenMaxAge != 0 {
		t.Fatalf("State: %+v, %v", st, err)
	}
	st, err = ts.client.WaitState(context.Background(), st.Generation)
	if err != nil || st.TrustDomain != "example.org" {
		t.Fatalf("WaitState: %+v, %v", st, err)
	}
	if !strings.Contains(ts.logs.String(), "trust_domain=example.org from=configuration") {
		t.Errorf("the log does not say which trust domain verifyd speaks for:\n%s", ts.logs)
	}
	if strings.Contains(ts.logs.String(), "judging every token") {
		t.Error("warned about judging every token, with a trust domain")
	}
}

// TestNoTrustDomain: with no trust domain known at all verifyd judges every
// token as it always did, says so once in its log, and sends no
// trust_domain.
func TestNoTrustDomain(t *testing.T) {
	noCondor(t)
	f := newRotation(t)
	ts := start(t, fast(f.dir), nil)
	flocking := signAs(t, "other.example", "POOL", keys.NewFile(), time.Now(), time.Hour)
	for range 3 {
		if r := ts.full(t, flocking); r.Reason != token.RotatedKey || r.CannotTell != "" || r.TrustDomain != "" {
			t.Fatalf("another issuer's token with no trust domain: %+v; want rotated-key, as before", r)
		}
	}
	if r := ts.full(t, f.tOldPool); r.Reason != token.Valid {
		t.Fatalf("POOL: %+v", r)
	}
	body := ts.do(t, "GET", verifyapi.PathGeneration, nil).body
	if strings.Contains(string(body), "trust_domain") || strings.Contains(string(body), "token_max_age") {
		t.Fatalf("fields sent with nothing to say: %s", body)
	}
	if n := strings.Count(ts.logs.String(), "judging every token whatever its issuer"); n != 1 {
		t.Fatalf("the warning is logged %d times, want once:\n%s", n, ts.logs)
	}
}

// TestTrustDomainFromCondor: without the option, HTCondor's TRUST_DOMAIN
// (cut at its first comma, as HTCondor does); the option wins over it; a
// trust domain with spaces is refused.
func TestTrustDomainFromCondor(t *testing.T) {
	noCondor(t)
	f := newRotation(t)
	t.Setenv("_CONDOR_TRUST_DOMAIN", "example.org,cm2.example.org")
	logs, log := capture()
	s, err := New(Options{PasswordDir: f.dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Wipe()
	if s.TrustDomain() != "example.org" || !strings.Contains(logs.String(), `from="HTCondor's TRUST_DOMAIN"`) {
		t.Fatalf("trust domain %q; log:\n%s", s.TrustDomain(), logs)
	}
	s2, err := New(Options{PasswordDir: f.dir, TrustDomain: "mine.example", Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Wipe()
	if s2.TrustDomain() != "mine.example" {
		t.Fatalf("the option lost to HTCondor's setting: %q", s2.TrustDomain())
	}
	if _, err := New(Options{PasswordDir: f.dir, TrustDomain: "a b", Logger: discard()}); err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Fatalf("a trust domain with a space: %v", err)
	}
}

// TestMaxAge: with SEC_TOKEN_MAX_AGE a token whose iat is older is expired
// (once its signature is good: a rotated one stays rotated-key), and
// verifyd reports the max age.
func TestMaxAge(t *testing.T) {
	noCondor(t)
	t.Setenv("_CONDOR_SEC_TOKEN_MAX_AGE", "9")
	f := newRotation(t)
	o := fast(f.dir)
	o.TrustDomain = "example.org"
	ts := start(t, o, nil)
	now := time.Now()
	for name, c := range map[string]struct {
		raw  []byte
		want token.Reason
	}{
		"fresh":                  {signAs(t, "example.org", "POOL", f.oldPool, now, time.Hour), token.Valid},
		"issued a minute ago":    {signAs(t, "example.org", "POOL", f.oldPool, now.Add(-time.Minute), time.Hour), token.Expired},
		"old, no exp":            {signAs(t, "example.org", "POOL", f.oldPool, now.Add(-time.Minute), 0), token.Expired},
		"old and rotated":        {signAs(t, "example.org", "POOL", f.newPool, now.Add(-time.Minute), time.Hour), token.RotatedKey},
		"old, another issuer":    {signAs(t, "other.example", "POOL", f.oldPool, now.Add(-time.Minute), time.Hour), token.Valid}, // no verdict
		"issued 5 s ago, no exp": {signAs(t, "example.org", "POOL", f.oldPool, now.Add(-5*time.Second), 0), token.Valid},
	} {
		r := ts.full(t, c.raw)
		if r.Reason != c.want || r.TokenMaxAge != 9 {
			t.Errorf("%s: %+v; want %q and token_max_age 9", name, r, c.want)
		}
	}
	st, err := ts.client.State(context.Background())
	if err != nil || st.TokenMaxAge != 9 || st.TrustDomain != "example.org" {
		t.Fatalf("State: %+v, %v", st, err)
	}

	// A negative option turns it off; a setting that is not a number is
	// ignored with a warning.
	s, err := New(Options{PasswordDir: f.dir, TokenMaxAge: -1, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	s.Wipe()
	if s.TokenMaxAge() != 0 {
		t.Fatalf("TokenMaxAge -1: %v", s.TokenMaxAge())
	}
	t.Setenv("_CONDOR_SEC_TOKEN_MAX_AGE", "ten")
	logs, log := capture()
	s, err = New(Options{PasswordDir: f.dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	s.Wipe()
	if s.TokenMaxAge() != 0 || !strings.Contains(logs.String(), "SEC_TOKEN_MAX_AGE") {
		t.Fatalf("a bad SEC_TOKEN_MAX_AGE: %v; log:\n%s", s.TokenMaxAge(), logs)
	}
}

// TestPoolBlink: POOL removed and written back 150 ms later, as a careless
// copy does. Defined outcome: no verdict ever changes. While POOL is
// missing, POOL tokens get no verdict (503, cannot tell); every other
// answer, before, during and after, is the one before. A removal shorter
// than the settle time (keywatch.Confirm) does not move the generation; a
// longer one moves it twice, out and back, which agents take as two key
// changes with the same verdicts. So the generation has moved by 0 or 2
// once POOL is back, never by 1.
func TestPoolBlink(t *testing.T) {
	noCondor(t)
	f := newRotation(t)
	ts := start(t, fast(f.dir), nil)
	pool := filepath.Join(f.dir, "POOL")
	g0 := ts.gen(t)

	// Ask continuously while it happens.
	var mu sync.Mutex
	seen := map[string]map[token.Reason]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for name, raw := range map[string][]byte{"POOL": f.tOldPool, "AP": f.tOldAP, "POOL rotated": f.tNewPool} {
		counts := map[token.Reason]int{}
		seen[name] = counts // before the goroutine: it uses counts, never seen
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r := ts.classify(raw)
				mu.Lock()
				counts[r]++
				mu.Unlock()
			}
		}()
	}
	if err := os.Remove(pool); err != nil {
		t.Fatal(err)
	}
	restored := make(chan struct{})
	time.AfterFunc(150*time.Millisecond, func() {
		defer close(restored)
		os.WriteFile(pool, f.oldPool, 0o600) // truncate-and-write: a moment of an empty file too
	})
	<-restored
	testenv.Eventually(t, 5*time.Second, "POOL back in use", func() bool { return ts.answer(t, f.tOldPool) == token.Valid })
	g := ts.gen(t)
	close(stop)
	wg.Wait()

	if d := g - g0; d != 0 && d != 2 {
		t.Errorf("generation moved by %d; want 0 (not seen) or 2 (out and back)", d)
	}
	want := map[string][]token.Reason{
		"POOL":         {token.Valid, unavailable},
		"POOL rotated": {token.RotatedKey, unavailable},
		"AP":           {token.Valid},
	}
	for name, answers := range seen {
		for r, n := range answers {
			ok := false
			for _, w := range want[name] {
				ok = ok || r == w
			}
			if !ok {
				t.Errorf("%s got %q %d times while POOL blinked: want only %q", name, r, n, want[name])
			}
		}
	}
	t.Logf("generation %d -> %d; answers %v", g0, g, seen)
}
