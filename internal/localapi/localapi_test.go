package localapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
)

// serve runs h on a fresh Unix socket behind NewListener until the test
// ends, and returns the socket.
func serve(t *testing.T, h http.Handler, lim Limits, logs io.Writer) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if logs == nil {
		logs = io.Discard
	}
	log := slog.New(slog.NewTextHandler(logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	srv := NewServer(ctx, h, log)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(NewListener(l, lim, log))
	}()
	t.Cleanup(func() {
		cancel()
		srv.Close()
		<-done
	})
	return sock
}

func TestPeer(t *testing.T) {
	sock := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := PeerOf(r.Context())
		if !ok {
			WriteError(w, http.StatusForbidden, "no-peer", "the peer is unknown")
			return
		}
		WriteJSON(w, http.StatusOK, p)
	}), Limits{}, nil)
	c := NewClient(sock)
	defer c.Close()
	resp, err := c.Do(context.Background(), http.MethodGet, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p Peer
	if err := ReadJSON(resp, 1<<10, &p); err != nil {
		t.Fatal(err)
	}
	if int(p.UID) != os.Getuid() || int(p.PID) != os.Getpid() {
		t.Fatalf("peer %+v, want uid %d pid %d", p, os.Getuid(), os.Getpid())
	}
	if _, ok := PeerOf(context.Background()); ok {
		t.Fatal("a context without a connection has a peer")
	}
}

// TestConnectionLimit: connections beyond PerUID are answered 429
// too-many-connections and closed; closing one makes room again.
func TestConnectionLimit(t *testing.T) {
	var logs syncbuf.Buffer
	sock := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, "ok")
	}), Limits{PerUID: 2, Total: 10}, &logs)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	ask := func(c net.Conn) int {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			var e Error
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Code != CodeTooManyConns || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("refusal: %v %+v %v", err, e, resp.Header)
			}
		}
		return resp.StatusCode
	}
	for range 2 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if code := ask(c); code != http.StatusOK {
			t.Fatalf("connection within the limit: %d", code)
		}
	}
	third, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if code := ask(third); code != http.StatusTooManyRequests {
		t.Fatalf("third connection: %d, want 429", code)
	}
	third.Close()
	if !strings.Contains(logs.String(), "connection limit reached") {
		t.Fatalf("the refusal is not logged:\n%s", logs.String())
	}
	held[0].Close()
	held = held[1:]
	testenv.Eventually(t, 5*time.Second, "a connection to be allowed again", func() bool {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return false
		}
		defer c.Close()
		return ask(c) == http.StatusOK
	})
}

func testMux() *Mux {
	m := &Mux{}
	ok := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			WriteJSON(w, http.StatusOK, map[string]string{"route": name, "name": r.PathValue("name")})
		}
	}
	m.Handle(http.MethodGet, "/v1/status", ok("status"))
	m.Handle(http.MethodGet, "/v1/tokens", ok("list"))
	m.Handle(http.MethodDelete, "/v1/tokens/{name}", ok("remove"))
	m.Handle(http.MethodPost, "/v1/fetch", ok("fetch"))
	return m
}

func TestMux(t *testing.T) {
	m := testMux()
	for _, c := range []struct {
		method, target string
		status         int
		route, name    string
		allow          string
	}{
		{"GET", "/v1/status", 200, "status", "", ""},
		{"HEAD", "/v1/status", 200, "status", "", ""},
		{"GET", "/v1/tokens?all=1", 200, "list", "", ""},
		{"DELETE", "/v1/tokens/mine", 200, "remove", "mine", ""},
		{"DELETE", "/v1/tokens/a%2Fb", 200, "remove", "a/b", ""},
		{"DELETE", "/v1/tokens/..", 200, "remove", "..", ""},
		{"POST", "/v1/status", 405, "", "", "GET"},
		{"HEAD", "/v1/fetch", 405, "", "", "POST"},
		{"POST", "/v1/tokens/mine", 405, "", "", "DELETE"},
		{"DELETE", "/v1/tokens", 405, "", "", "GET"},
		{"DELETE", "/v1/tokens/", 404, "", "", ""},
		{"DELETE", "/v1/tokens/a/b", 404, "", "", ""},
		{"GET", "/v1/status/", 404, "", "", ""},
		{"GET", "/v1//status", 404, "", "", ""},
		{"GET", "/../v1/status", 404, "", "", ""},
		{"GET", "/v1/./status", 404, "", "", ""},
		{"GET", "/", 404, "", "", ""},
		{"GET", "/v2/status", 404, "", "", ""},
	} {
		req := httptest.NewRequest(c.method, c.target, nil) // the target as a server reads it
		rec := httptest.NewRecorder()
		m.ServeHTTP(rec, req)
		if rec.Code != c.status {
			t.Errorf("%s %s: %d, want %d: %s", c.method, c.target, rec.Code, c.status, rec.Body)
			continue
		}
		if rec.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("%s %s: no Cache-Control: no-store", c.method, c.target)
		}
		if c.status == 200 {
			if c.method == http.MethodHead {
				continue
			}
			var got map[string]string
			json.Unmarshal(rec.Body.Bytes(), &got)
			if got["route"] != c.route || got["name"] != c.name {
				t.Errorf("%s %s: routed to %v, want %s %q", c.method, c.target, got, c.route, c.name)
			}
			continue
		}
		var e Error
		dec := json.NewDecoder(rec.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil || e.Message == "" {
			t.Errorf("%s %s: error body: %v %+v", c.method, c.target, err, e)
		}
		want := map[int]string{404: CodeNotFound, 405: CodeMethodNotAllowed}[c.status]
		if e.Code != want || rec.Header().Get("Allow") != c.allow || rec.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: code %q Allow %q Content-Type %q; want %q Allow %q", c.method, c.target, e.Code,
				rec.Header().Get("Allow"), rec.Header().Get("Content-Type"), want, c.allow)
		}
	}
}

func TestDecode(t *testing.T) {
	type body struct {
		Name string `json:"name"`
		N    int    `json:"n"`
	}
	for _, c := range []struct {
		in     string
		status int // 0: decoded
		msg    string
	}{
		{`{"name":"x","n":1}`, 0, ""},
		{" {\"name\":\"x\"}\n ", 0, ""},
		{`null`, 0, ""},
		{``, 400, "malformed request: EOF"},
		{`{"name":"x","extra":1}`, 400, `unknown field "extra"`},
		{`{"name":"x"} trailing`, 400, "malformed request"},
		{`{"name":"x"}{}`, 400, "data after the JSON value"},
		{`{"n":"one"}`, 400, "malformed request"},
		{`{"name":"` + strings.Repeat("a", 100) + `"}`, 413, "request body is larger than 64 bytes"},
	} {
		for _, chunked := range []bool{false, true} {
			var rd io.Reader = strings.NewReader(c.in)
			if chunked {
				rd = struct{ io.Reader }{rd} // no length known
			}
			req := httptest.NewRequest(http.MethodPost, "http://local/", rd)
			if chunked {
				req.ContentLength = -1
			}
			var v body
			e := Decode(httptest.NewRecorder(), req, 64, &v)
			switch {
			case c.status == 0 && e != nil:
				t.Errorf("%q: %v", c.in, e)
			case c.status != 0 && (e == nil || e.Status != c.status || !strings.Contains(e.Message, c.msg)):
				t.Errorf("%q (chunked %v): %+v, want %d with %q", c.in, chunked, e, c.status, c.msg)
			case c.status != 0 && e.Code != map[int]string{400: CodeBadRequest, 413: CodeTooLarge}[c.status]:
				t.Errorf("%q: code %q", c.in, e.Code)
			}
		}
	}
	// Exactly at the limit is read.
	req := httptest.NewRequest(http.MethodPost, "http://local/", strings.NewReader(`{"name":"`+strings.Repeat("a", 64-11)+`"}`))
	var v body
	if e := Decode(httptest.NewRecorder(), req, 64, &v); e != nil || len(v.Name) != 64-11 {
		t.Fatalf("body at the limit: %v", e)
	}
}

// TestClientErrors: Do turns error answers into *Error (code, message,
// status, Retry-After), or leaves Code empty for an answer that is not the
// envelope; nothing listening is a dial error.
func TestClientErrors(t *testing.T) {
	sock := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/busy":
			w.Header().Set("Retry-After", "3")
			WriteError(w, http.StatusTooManyRequests, "slow-down", "too many")
		case "/html":
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html>")
		case "/big":
			WriteJSON(w, http.StatusOK, strings.Repeat("x", 100))
		default:
			WriteJSON(w, http.StatusOK, map[string]int{"n": 1})
		}
	}), Limits{}, nil)
	c := NewClient(sock)
	defer c.Close()
	ctx := context.Background()

	_, err := c.Do(ctx, http.MethodGet, "/busy", nil)
	var e *Error
	if !errors.As(err, &e) || e.Status != 429 || e.Code != "slow-down" || e.Message != "too many" || e.RetryAfter != 3*time.Second {
		t.Fatalf("429: %#v", err)
	}
	_, err = c.Do(ctx, http.MethodGet, "/html", nil)
	if !errors.As(err, &e) || e.Status != 502 || e.Code != "" {
		t.Fatalf("502 without an envelope: %#v", err)
	}
	resp, err := c.Do(ctx, http.MethodPost, "/ok", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ N int }
	err = ReadJSON(resp, 1<<10, &out)
	resp.Body.Close()
	if err != nil || out.N != 1 {
		t.Fatalf("ok: %v %+v", err, out)
	}
	resp, err = c.Do(ctx, http.MethodGet, "/big", nil)
	if err != nil {
		t.Fatal(err)
	}
	var s string
	err = ReadJSON(resp, 50, &s)
	resp.Body.Close()
	if err == nil || !strings.Contains(err.Error(), "larger than 50 bytes") {
		t.Fatalf("an answer over the limit: %v", err)
	}

	none := NewClient(filepath.Join(filepath.Dir(sock), "none.sock"))
	_, err = none.Do(ctx, http.MethodGet, "/", nil)
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		t.Fatalf("nothing listening: %#v, want a dial error", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Do(cctx, http.MethodGet, "/", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}
