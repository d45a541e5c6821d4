package verifyd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

func TestHostileRequests(t *testing.T) {
	f := newRotation(t)
	ts := start(t, fast(f.dir), func(s *Server) { s.readHeaderTimeout = 300 * time.Millisecond })

	t.Run("oversized body", func(t *testing.T) {
		big := `{"token":"` + strings.Repeat("a", verifyapi.MaxRequestBytes) + `"}`
		for _, body := range []any{big, strings.NewReader(big)} { // with Content-Length, and chunked
			r := ts.do(t, http.MethodPost, verifyapi.PathVerify, body)
			if r.status != http.StatusRequestEntityTooLarge || r.code(t) != verifyapi.CodeTooLarge {
				t.Fatalf("oversized body: %d %s", r.status, r.body)
			}
		}
		// Exactly at the limit is read (and is a malformed token).
		pad := verifyapi.MaxRequestBytes - len(`{"token":""}`)
		r := ts.do(t, http.MethodPost, verifyapi.PathVerify, `{"token":"`+strings.Repeat("a", pad)+`"}`)
		if r.status != http.StatusOK || !bytes.Contains(r.body, []byte(`"malformed"`)) {
			t.Fatalf("body at the limit: %d %s", r.status, r.body)
		}
	})
	t.Run("bad JSON", func(t *testing.T) {
		for _, body := range []string{"", "{", "[]", `{"token":5}`, `{"token":""}`, `{"tok":"x"}`, "null", `"x"`, "\x00\xff"} {
			r := ts.do(t, http.MethodPost, verifyapi.PathVerify, body)
			if r.status != http.StatusBadRequest || r.code(t) != verifyapi.CodeBadRequest {
				t.Fatalf("body %q: %d %s", body, r.status, r.body)
			}
		}
		// A string that is no token is a verdict, not a bad request.
		for _, body := range []string{`{"token":"x.y.z"}`, `{"token":"\u0041.b.c"}`, `{"token":"a\nb"}`} {
			r := ts.do(t, http.MethodPost, verifyapi.PathVerify, body)
			if r.status != http.StatusOK || !bytes.Contains(r.body, []byte(`"reason":"malformed"`)) {
				t.Fatalf("body %q: %d %s", body, r.status, r.body)
			}
		}
	})
	t.Run("wrong method", func(t *testing.T) {
		for _, c := range []struct{ method, path, allow string }{
			{http.MethodGet, verifyapi.PathVerify, "POST"},
			{http.MethodPut, verifyapi.PathVerify, "POST"},
			{http.MethodPost, verifyapi.PathGeneration, "GET"},
			{http.MethodDelete, verifyapi.PathChanges + "?after=1", "GET"},
		} {
			r := ts.do(t, c.method, c.path, nil)
			if r.status != http.StatusMethodNotAllowed || r.code(t) != verifyapi.CodeMethodNotAllowed || r.header.Get("Allow") != c.allow {
				t.Fatalf("%s %s: %d %v %s", c.method, c.path, r.status, r.header, r.body)
			}
		}
	})
	t.Run("unknown path", func(t *testing.T) {
		for _, p := range []string{"/", "/v1", "/v1/verify/", "/v2/verify", "/v1//verify", "/../v1/verify"} {
			r := ts.do(t, http.MethodGet, p, nil)
			if r.status != http.StatusNotFound || r.code(t) != verifyapi.CodeNotFound {
				t.Fatalf("%s: %d %s", p, r.status, r.body)
			}
		}
	})
	t.Run("bad after", func(t *testing.T) {
		for _, q := range []string{"", "?after=", "?after=-1", "?after=x", "?after=99999999999999999999999"} {
			r := ts.do(t, http.MethodGet, verifyapi.PathChanges+q, nil)
			if r.status != http.StatusBadRequest || r.code(t) != verifyapi.CodeBadRequest {
				t.Fatalf("%s: %d %s", q, r.status, r.body)
			}
		}
	})
	t.Run("not HTTP", func(t *testing.T) {
		for _, junk := range []string{"\x00\x01\x02garbage\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
			"GET /v1/generation HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("h", 64<<10) + "\r\n\r\n"} {
			c, err := net.Dial("unix", ts.socket)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, junk)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil && resp.StatusCode < 400 {
				t.Errorf("junk %.20q: status %d", junk, resp.StatusCode)
			}
			c.Close()
		}
	})
	t.Run("slowloris", func(t *testing.T) {
		// One connection that says nothing, one that stops mid-header.
		silent, err := net.Dial("unix", ts.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		partial, err := net.Dial("unix", ts.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer partial.Close()
		io.WriteString(partial, "POST /v1/verify HTTP/1.1\r\nHost: x\r\n")
		// Others are served meanwhile.
		if r := ts.reason(t, f.tOldPool); r != token.Valid {
			t.Fatalf("while a slow client hangs: %q", r)
		}
		// And the server hangs up on both.
		for name, c := range map[string]net.Conn{"silent": silent, "partial": partial} {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.ReadAll(c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("%s connection still open after 10 s", name)
			}
		}
		if r := ts.reason(t, f.tOldPool); r != token.Valid {
			t.Fatalf("after slow clients: %q", r)
		}
	})
}

func TestRateLimit(t *testing.T) {
	f := newRotation(t)
	ts := start(t, Options{PasswordDir: f.dir}, nil) // defaults: 50/s, burst 100
	ctx := context.Background()
	began := time.Now()
	limited := 0
	for range 1000 {
		_, err := ts.client.Verify(ctx, f.tOldPool)
		var se *verifyapi.ServerError
		switch {
		case err == nil:
		case errors.As(err, &se) && errors.Is(err, verifyapi.ErrRateLimited):
			if se.Status != http.StatusTooManyRequests || se.Code != verifyapi.CodeRateLimited || se.RetryAfter <= 0 {
				t.Fatalf("rate-limited answer: %+v", se)
			}
			if errors.Is(err, verifyapi.ErrUnavailable) {
				t.Fatal("a 429 must not read as unavailable")
			}
			limited++
		default:
			t.Fatalf("request failed: %v", err)
		}
	}
	elapsed := time.Since(began).Seconds()
	if allowed := 1000 - limited; float64(allowed) > config.DefaultVerifydBurst+config.DefaultVerifydRate*elapsed+2 {
		t.Fatalf("%d of 1000 requests allowed in %.2fs; the limit is %d + %v/s", allowed, elapsed, config.DefaultVerifydBurst, config.DefaultVerifydRate)
	}
	if limited == 0 {
		t.Fatal("no request was rate limited")
	}
	if !strings.Contains(ts.logs.String(), "rate limit reached") {
		t.Fatal("the rate limit is not logged")
	}
	if n := strings.Count(ts.logs.String(), "rate limit reached"); n > 1+int(elapsed/logEvery.Seconds()) {
		t.Fatalf("the rate limit is logged %d times in %.1fs; once per %v is enough", n, elapsed, logEvery)
	}
	// The server keeps working: once the bucket refills, verdicts come.
	testenv.Eventually(t, 5*time.Second, "Verify to work again after the flood", func() bool {
		r, err := ts.client.Verify(ctx, f.tOldPool)
		return err == nil && r.Reason == token.Valid
	})
}

func TestLimiter(t *testing.T) {
	l := newLimiter(10, 5)
	now := time.Unix(1000, 0)
	for i := range 5 {
		if ok, _, _ := l.allow(7, now); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	ok, retry, report := l.allow(7, now)
	if ok || report != 1 || retry != 100*time.Millisecond {
		t.Fatalf("over the burst: ok %v report %v retry %v", ok, report, retry)
	}
	if _, _, report := l.allow(7, now); report != 0 {
		t.Fatal("second refusal reported at once")
	}
	later := now.Add(logEvery)
	for range 5 {
		l.allow(7, later)
	}
	if ok, _, report := l.allow(7, later); ok || report != 2 {
		t.Fatalf("refusals reported after logEvery: %v %d, want 2", ok, report)
	}
	if ok, _, _ := l.allow(8, now); !ok {
		t.Fatal("another uid is limited by uid 7")
	}
	if ok, _, _ := l.allow(7, now.Add(logEvery+100*time.Millisecond)); !ok {
		t.Fatal("no token after 1/rate")
	}
	// Idle buckets are forgotten.
	l.allow(9, now.Add(time.Hour))
	if len(l.buckets) != 1 {
		t.Fatalf("%d buckets after an hour, want 1", len(l.buckets))
	}
}

func TestConnectionLimit(t *testing.T) {
	f := newRotation(t)
	ts := start(t, fast(f.dir), nil)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range maxConnsPerUID {
		c, err := net.Dial("unix", ts.socket)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	testenv.Eventually(t, 5*time.Second, "the connection limit to refuse a connection", func() bool {
		c, err := net.Dial("unix", ts.socket)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /v1/generation HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		return err == nil && resp.StatusCode == http.StatusTooManyRequests
	})
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	testenv.Eventually(t, 5*time.Second, "connections to be allowed again", func() bool {
		_, err := ts.client.Generation(context.Background())
		return err == nil
	})
}

// TestLongPoll: WaitChange answers at once when the generation differs,
// with the same value when the poll times out, and when the server stops.
func TestLongPoll(t *testing.T) {
	f := newRotation(t)
	ts := start(t, fast(f.dir), func(s *Server) { s.pollTimeout = 200 * time.Millisecond })
	ctx := context.Background()
	g := ts.gen(t)
	if got, err := ts.client.WaitChange(ctx, g+5); err != nil || got != g {
		t.Fatalf("WaitChange(other) = %d, %v; want %d at once", got, err, g)
	}
	began := time.Now()
	if got, err := ts.client.WaitChange(ctx, g); err != nil || got != g {
		t.Fatalf("WaitChange(current) = %d, %v; want %d after the poll timeout", got, err, g)
	}
	if d := time.Since(began); d < 150*time.Millisecond {
		t.Fatalf("WaitChange answered after %v, before the poll timeout", d)
	}
	// A cancelled wait is an error, never a generation.
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		testenv.Eventually(t, 5*time.Second, "the poll to wait", func() bool { return ts.waiting.Load() > 0 })
		cancel()
	}()
	ts.pollTimeout = time.Hour // read at request time: raced only with this goroutine's own poll
	if _, err := ts.client.WaitChange(cctx, g); !errors.Is(err, context.Canceled) || !isUnavailable(err) {
		t.Fatalf("cancelled WaitChange: %v", err)
	}
}

func TestShutdownAnswersPolls(t *testing.T) {
	f := newRotation(t)
	live := secmem.Live()
	ts := start(t, fast(f.dir), func(s *Server) { s.pollTimeout = time.Hour })
	g := ts.gen(t)
	got := make(chan error, 1)
	go func() {
		_, err := ts.client.WaitChange(context.Background(), g)
		got <- err
	}()
	testenv.Eventually(t, 5*time.Second, "the poll to wait", func() bool { return ts.waiting.Load() > 0 })
	ts.cancel()
	select {
	case err := <-ts.done:
		ts.done <- err // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not stop with a long poll open")
	}
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll was not answered at shutdown")
	}
	// The keys are gone with the server.
	ts.mu.RLock()
	n := ts.set.Len()
	ts.mu.RUnlock()
	if n != 0 {
		t.Fatalf("%d keys still held after Serve returned", n)
	}
	if n := secmem.Live() - live; n != 0 {
		t.Fatalf("%d locked buffers left after Serve returned", n)
	}
}

func TestVerifyBody(t *testing.T) {
	for _, raw := range []string{"a.b.c", "x\"y", "\\", "<&>", "\n", "\xff"} {
		b := verifyapi.VerifyBody([]byte(raw))
		got, ok := tokenField(b)
		if !ok || string(got) != strings.ToValidUTF8(raw, "\ufffd") {
			t.Errorf("%q: body %s decodes to %q, %v", raw, b, got, ok)
		}
	}
}

// TestTokenField: the token is decoded as json decodes a string, escapes
// included, into its own buffer; a token given twice, or not as a
// non-empty string, is refused.
func TestTokenField(t *testing.T) {
	for _, in := range []string{
		`"a.b.c"`, `"\u0041.b.c"`, `"\/\"\\\b\f\n\r\t"`, `"\ud83d\ude00"`, `"\ud800"`, `"\ud800\u0041"`,
		`"\udc00\ud800x"`, `"x\ud83d"`, `"é€😀"`, `"\u00e9\u20AC"`,
	} {
		var want string
		if err := json.Unmarshal([]byte(in), &want); err != nil {
			t.Fatal(err)
		}
		for _, body := range []string{`{"token":` + in + `}`, ` { "other": [1, {"token": 2}], "Token" : ` + in + ` } `} {
			got, ok := tokenField([]byte(body))
			if !ok || string(got) != want {
				t.Errorf("%s: %q, %v; want %q", body, got, ok, want)
			}
		}
	}
	for _, body := range []string{`{"token":"a","token":"b"}`, `{"token":"a","TOKEN":"a"}`, `{"token":""}`, `{"token":null}`, `{"token":["a"]}`, `{}`, `{"token":"a"`} {
		if got, ok := tokenField([]byte(body)); ok {
			t.Errorf("%s: accepted as %q", body, got)
		}
	}
}

// TestNoSecretsLeak: neither the log (at debug level) nor any answer holds
// a token, a signature, key file bytes or a derived key in any common
// encoding.
func TestNoSecretsLeak(t *testing.T) {
	f := newRotation(t)
	o := fast(f.dir)
	o.TrustDomain, o.TokenMaxAge = "example.org", time.Hour // every kind of answer
	ts := start(t, o, nil)
	var answers bytes.Buffer
	post := func(tok []byte) {
		r := ts.do(t, http.MethodPost, verifyapi.PathVerify, verifyapi.VerifyBody(tok))
		answers.Write(r.body)
		for k, v := range r.header {
			answers.WriteString(k + strings.Join(v, ","))
		}
	}
	tokens := [][]byte{f.tOldPool, f.tOldAP, f.tNewPool, f.tNewAP, f.tExtra,
		signAs(t, "other.example", "POOL", f.oldPool, time.Now(), time.Hour)}
	for _, tok := range tokens {
		post(tok)
		post(append(bytes.Clone(tok), 'x')) // malformed
		post(tok[:len(tok)-1])              // malformed
		post(bytes.ReplaceAll(tok, []byte("."), []byte("!")))
	}
	for _, p := range []string{verifyapi.PathGeneration, verifyapi.PathChanges + "?after=0", "/nope"} {
		answers.Write(ts.do(t, http.MethodGet, p, nil).body)
	}
	// A rotation, so that key changes are logged too.
	g0 := ts.gen(t)
	writeKey(t, ts.pool, f.newPool)
	writeKey(t, ts.dir+"/NEW", f.extra)
	if _, err := ts.client.WaitChange(context.Background(), g0); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the rotation", func() bool { return ts.reason(t, f.tExtra) == token.Valid })
	// The change is logged as the new keys go in, which may come just after
	// the generation moves.
	testenv.Eventually(t, 5*time.Second, "the key change in the log", func() bool { return strings.Contains(ts.logs.String(), "signing keys changed") })
	for _, tok := range tokens {
		post(tok)
	}

	var secrets [][]byte
	encodings := func(b []byte) {
		secrets = append(secrets, b, []byte(hex.EncodeToString(b)), []byte(strings.ToUpper(hex.EncodeToString(b))),
			[]byte(base64.StdEncoding.EncodeToString(b)), []byte(base64.RawStdEncoding.EncodeToString(b)),
			[]byte(base64.URLEncoding.EncodeToString(b)), []byte(base64.RawURLEncoding.EncodeToString(b)))
	}
	for _, kf := range []struct {
		kid  string
		file []byte
	}{{"POOL", f.oldPool}, {"AP", f.oldAP}, {"POOL", f.newPool}, {"AP", f.newAP}, {"NEW", f.extra}} {
		encodings(kf.file)
		encodings(token.Unscramble(kf.file))
		encodings(token.DeriveKey(kf.kid, kf.file))
	}
	for _, tok := range tokens {
		secrets = append(secrets, tok, tok[bytes.LastIndexByte(tok, '.')+1:])
	}
	logs := ts.logs.String()
	if !strings.Contains(logs, "level=DEBUG msg=verify") || !strings.Contains(logs, "signing keys changed") {
		t.Fatalf("the log is missing what this test looks through:\n%s", logs)
	}
	for i, s := range secrets {
		if bytes.Contains([]byte(logs), s) {
			t.Errorf("secret %d is in the log", i)
		}
		if bytes.Contains(answers.Bytes(), s) {
			t.Errorf("secret %d is in an answer", i)
		}
	}
}
