package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/agent/fetch"
	"github.com/tokend/tokend/agent/validate"
	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/localapi"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// Requests the fuzzer can send: method, path; NAME is replaced by the
// fuzzed name (path-escaped), QUERY by the name query-escaped.
var fuzzRoutes = []struct{ method, path string }{
	{http.MethodGet, api.PathStatus},
	{http.MethodGet, api.PathTokens + "?all=QUERY"},
	{http.MethodDelete, api.PathTokens + "/NAME"},
	{http.MethodPost, api.PathFetch},
	{http.MethodPost, api.PathWipe},
	{http.MethodPost, api.PathSession},
	{http.MethodPut, api.PathFetch},             // a known path, another method
	{http.MethodPost, api.PathTokens + "/NAME"}, // likewise
	{http.MethodGet, "/v1/NAME"},                // mostly unknown paths
	{http.MethodPost, "/NAME?QUERY"},
}

// routeOther sends the request as another uid: it must be refused.
const routeOther = 255

// FuzzControlAPI sends arbitrary requests to the control API's real
// handlers, on an agent that has its store but no mount, as the agent's own
// user. Whatever the body, path or name: no panic, never a 5xx, every error
// is an api.Error whose code matches the HTTP status, every success has the
// documented shape, a fetched token's secret part appears in neither the
// answer nor the log, and every secret buffer is released at the end.
func FuzzControlAPI(f *testing.F) {
	for i := range fuzzRoutes {
		f.Add(uint8(i), "tokend-session", []byte(`{}`))
	}
	f.Add(uint8(3), "", []byte(`{"name":"mine","lifetime":"2h","authz":["READ","WRITE"]}`))
	f.Add(uint8(3), "", []byte(`{"name":"bad/name"}`))
	f.Add(uint8(3), "", []byte(`{"lifetime":"-1h"}`))
	f.Add(uint8(3), "", []byte(`{"authz":["FAIL"]}`))
	f.Add(uint8(3), "", []byte(`{"authz":["has space"]}`))
	f.Add(uint8(3), "", []byte(`{"name":"x","extra":1}`))
	f.Add(uint8(3), "", []byte(`{"name":"x"} trailing`))
	f.Add(uint8(3), "", []byte(strings.Repeat(" ", api.MaxRequestBody+1)+"{}"))
	f.Add(uint8(4), "", []byte(`{"logout":true}`))
	f.Add(uint8(4), "", []byte(`{"logout":"yes"}`))
	f.Add(uint8(4), "", []byte(``))
	f.Add(uint8(4), "", []byte(`null`))
	f.Add(uint8(5), "", []byte(`{"action":"open","pid":1}`))
	f.Add(uint8(5), "", []byte(`{"action":"close","pid":1}`))
	f.Add(uint8(5), "", []byte(`{"action":"open","pid":-5}`))
	f.Add(uint8(5), "", []byte(`{"action":"reboot","pid":1}`))
	f.Add(uint8(5), "", []byte(`{"action":"open","pid":99999999999999999999}`))
	f.Add(uint8(2), "../status", []byte(``))
	f.Add(uint8(2), "a/b", []byte(``))
	f.Add(uint8(2), "tokend-session", []byte(``))
	f.Add(uint8(8), "tokens", []byte(``))
	f.Add(uint8(routeOther), "", []byte(`{}`))

	f.Fuzz(func(t *testing.T, route uint8, name string, body []byte) {
		baseline := secmem.Live()
		ff := &fuzzFetcher{}
		var logs syncbuf.Buffer
		a := newFuzzAgent(t, ff, &logs)
		ctx, cancel := context.WithCancel(context.Background())
		srv := a.server(ctx)

		var r struct{ method, path string }
		uid := os.Getuid()
		if route == routeOther {
			r = fuzzRoutes[0]
			uid++
		} else {
			r = fuzzRoutes[int(route)%len(fuzzRoutes)]
		}
		target := strings.NewReplacer("NAME", url.PathEscape(name), "QUERY", url.QueryEscape(name)).Replace(r.path)
		req := httptest.NewRequest(r.method, "http://tokend"+target, bytes.NewReader(body))
		req = req.WithContext(localapi.WithPeer(ctx, localapi.Peer{UID: uint32(uid), PID: int32(os.Getpid())}))
		rec := httptest.NewRecorder()
		srv.Handler.ServeHTTP(rec, req)

		checkAnswer(t, rec, r.method, req.URL.Path, uid != os.Getuid())
		for _, secret := range ff.secrets() {
			if bytes.Contains(rec.Body.Bytes(), secret) || strings.Contains(logs.String(), string(secret)) {
				t.Fatal("a token's signature is in the answer or the log")
			}
		}
		for _, in := range a.store.Infos() {
			if err := a.store.CheckName(in.Name); err != nil {
				t.Fatalf("the store holds a token under the name %q: %v", in.Name, err)
			}
		}

		// The end of the agent: sessions dropped, tokens wiped.
		cancel()
		a.sessions.watch(ctx)
		a.store.Close()
		if n := secmem.Live() - baseline; n != 0 {
			t.Fatalf("%d secret buffers were never wiped", n)
		}
	})
}

// checkAnswer checks one answer against the API's contract.
func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder, method, path string, otherUser bool) {
	t.Helper()
	code := rec.Code
	if code >= 500 {
		t.Fatalf("%s %s: %d: %s", method, path, code, rec.Body)
	}
	if otherUser && code != http.StatusForbidden {
		t.Fatalf("another user's request: %d, want 403", code)
	}
	if code >= 300 {
		var e api.Error
		dec := json.NewDecoder(rec.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil || e.Code == "" || e.Message == "" {
			t.Fatalf("%s %s: %d with a body that is not an api.Error (%v): %q", method, path, code, err, rec.Body)
		}
		if e.Status() != code {
			t.Fatalf("%s %s: error code %q goes with %d, the answer was %d", method, path, e.Code, e.Status(), code)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s %s: error with Content-Type %q", method, path, ct)
		}
		return
	}
	switch {
	case path == api.PathStatus:
		var st api.Status
		mustDecode(t, rec, &st)
		if st.PID != os.Getpid() {
			t.Fatalf("status says pid %d", st.PID)
		}
	case path == api.PathTokens:
		var ts []api.Token
		mustDecode(t, rec, &ts)
	case path == api.PathSession:
		var sr api.SessionResponse
		mustDecode(t, rec, &sr)
	case path == api.PathFetch:
		checkFetchStream(t, rec)
	default: // DELETE a token, wipe
		if code != http.StatusNoContent || rec.Body.Len() != 0 {
			t.Fatalf("%s %s: %d with %d bytes, want 204 and nothing", method, path, code, rec.Body.Len())
		}
	}
}

// checkFetchStream checks a fetch answer: progress lines, then exactly one
// token or error, and nothing after it.
func checkFetchStream(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	sc := bufio.NewScanner(rec.Body)
	var last api.FetchEvent
	n := 0
	for sc.Scan() {
		if last.Token != nil || last.Error != nil {
			t.Fatalf("fetch: a line after the result: %q", sc.Text())
		}
		last = api.FetchEvent{}
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("fetch: line %d is not a FetchEvent: %v", n+1, err)
		}
		n++
	}
	switch {
	case last.Token != nil && last.Error == nil:
		if last.Token.State != api.StateValid || last.Token.Name == "" {
			t.Fatalf("fetch: result %+v", last.Token)
		}
	case last.Error != nil && last.Token == nil:
		if last.Error.Code != api.CodeFetchFailed || last.Error.Message == "" {
			t.Fatalf("fetch: error %+v, want code %s with a message", last.Error, api.CodeFetchFailed)
		}
	default:
		t.Fatalf("fetch: %d lines without exactly one result", n)
	}
}

func mustDecode(t *testing.T, rec *httptest.ResponseRecorder, v any) {
	t.Helper()
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("answer is not a %T: %v: %q", v, err, rec.Body)
	}
}

// newFuzzAgent builds an agent that serves the API without mounting
// anything: the store, the fetcher and the checks are real or stand-ins.
func newFuzzAgent(t *testing.T, f fetch.Fetcher, logs *syncbuf.Buffer) *Agent {
	t.Helper()
	cfg := config.Default()
	cfg.Dir = "/nonexistent/tokend-fuzz"
	cfg.Socket = "/nonexistent/tokend-fuzz.sock"
	cfg.Limits.MaxFiles = 4
	a, err := newAgent(Options{
		Config:  cfg,
		Logger:  slog.New(slog.NewTextHandler(logs, nil)),
		Version: "fuzz",
		Fetcher: f,
		Keys:    []validate.KeyChecker{},
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

var fuzzKey = bytes.Repeat([]byte{9}, 32)

// fuzzFetcher signs a token as the pool would, or fails like
// condor_token_fetch when asked for the authz FAIL. It remembers the
// signature of everything it handed out.
type fuzzFetcher struct {
	mu   sync.Mutex
	sigs [][]byte
}

func (f *fuzzFetcher) Fetch(ctx context.Context, req fetch.Request, progress func(fetch.Progress)) (*secmem.Buffer, error) {
	if progress != nil {
		progress(fetch.Progress{Started: time.Now(), Message: "fetching"})
	}
	if slices.Contains(req.Authz, "FAIL") {
		return nil, &fetch.Error{Method: config.MethodExec, Command: "condor_token_fetch", Message: "Failed to request a session token: fuzz", Err: errors.New("exit status 1")}
	}
	life := req.Lifetime
	if life == 0 {
		life = time.Hour
	}
	raw, err := token.Sign(token.Claims{Issuer: "example.org", Subject: "u@example.org", Authz: req.Authz, Lifetime: life}, "POOL", fuzzKey)
	if err != nil {
		return nil, &fetch.Error{Method: config.MethodExec, Command: "condor_token_fetch", Err: err}
	}
	defer clear(raw)
	f.mu.Lock()
	f.sigs = append(f.sigs, bytes.Clone(raw[bytes.LastIndexByte(raw, '.')+1:]))
	f.mu.Unlock()
	return secmem.From(raw)
}

func (f *fuzzFetcher) secrets() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sigs
}
