package localapi

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/memscan"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
)

// served is a Serve running on a fresh socket.
type served struct {
	sock     string
	accepted atomic.Int64
	cancel   context.CancelFunc
	done     chan error
	logs     *syncbuf.Buffer
}

// countListener counts the connections it accepts.
type countListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// serveOwn runs Serve with h on a fresh socket until the test ends.
func serveOwn(t *testing.T, h http.Handler, o ServeOptions) *served {
	t.Helper()
	dir, err := os.MkdirTemp("", "la")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &served{sock: filepath.Join(dir, "s.sock"), done: make(chan error, 1), logs: &syncbuf.Buffer{}}
	l, err := net.Listen("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	o.Log = slog.New(slog.NewTextHandler(s.logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- Serve(ctx, NewListener(countListener{l, &s.accepted}, Limits{}, o.Log), h, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after its context ended")
		}
	})
	return s
}

// echo answers with what it was asked: method, path, query, peer, body
// length and the body itself, zeroing what it read.
var echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	body, e := ReadBody(w, r, 1<<10)
	defer clear(body)
	if e != nil {
		WriteError(w, e.Status, e.Code, e.Message)
		return
	}
	p, _ := PeerOf(r.Context())
	WriteJSON(w, http.StatusOK, map[string]any{
		"method": r.Method, "path": r.URL.Path, "q": r.URL.Query().Get("q"), "uid": p.UID, "pid": p.PID,
		"body": string(body), "proto": r.Proto, "close": r.Close,
	})
})

// raw sends text on a new connection and reads one answer.
func raw(t *testing.T, sock, text string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, text); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%.40q: %v", text, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestServeWithClient: requests through Client.Do, with and without a body,
// reach the handler with their peer, on one connection kept open.
func TestServeWithClient(t *testing.T) {
	s := serveOwn(t, echo, ServeOptions{})
	c := NewClient(s.sock)
	defer c.Close()
	ctx := context.Background()
	for i := range 3 {
		resp, err := c.Do(ctx, http.MethodPost, "/v1/x?q=a%20b", []byte(`{"n":1}`))
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := ReadJSON(resp, 1<<10, &got); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got["method"] != "POST" || got["path"] != "/v1/x" || got["q"] != "a b" || got["body"] != `{"n":1}` ||
			got["uid"] != float64(os.Getuid()) || got["pid"] != float64(os.Getpid()) || got["proto"] != "HTTP/1.1" {
			t.Fatalf("request %d: %v", i, got)
		}
		if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("answer headers: %v", resp.Header)
		}
	}
	resp, err := c.Do(ctx, http.MethodGet, "/v1/y", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // unread: a short answer is read out, the connection kept
	if n := s.accepted.Load(); n != 1 {
		t.Fatalf("%d connections for 4 requests in a row, want 1 kept open", n)
	}
	big := []byte(`"` + strings.Repeat("x", 2<<10) + `"`)
	_, err = c.Do(ctx, http.MethodPost, "/v1/x", big)
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusRequestEntityTooLarge || e.Code != CodeTooLarge {
		t.Fatalf("a body over the handler's limit: %v", err)
	}
}

// TestServeWire: what a hand-written client may send: pipelined requests,
// a chunked body, Expect: 100-continue, HEAD, HTTP/1.0 and Connection:
// close.
func TestServeWire(t *testing.T) {
	s := serveOwn(t, echo, ServeOptions{MaxBodyBytes: 64})
	c, err := net.Dial("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// Three requests in one write; the server answers them in order.
	io.WriteString(c, "\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"+
		"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n"+
		"HEAD /c HTTP/1.1\nHost: x\n\n")
	br := bufio.NewReader(c)
	for _, want := range []struct{ method, path, body string }{{"POST", "/a", "hello"}, {"POST", "/b", "abcde"}, {"HEAD", "/c", ""}} {
		resp, err := http.ReadResponse(br, &http.Request{Method: want.method})
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		b, _ := io.ReadAll(resp.Body)
		if want.method == "HEAD" {
			if len(b) != 0 || resp.ContentLength <= 0 {
				t.Fatalf("HEAD: body %q, Content-Length %d", b, resp.ContentLength)
			}
			continue
		}
		if err := json.Unmarshal(b, &got); err != nil || got["path"] != want.path || got["body"] != want.body || resp.Close {
			t.Fatalf("%s %s: %v %s (close %v)", want.method, want.path, err, b, resp.Close)
		}
	}
	// Expect: 100-continue: the server says so before the body is sent.
	io.WriteString(c, "POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("after Expect: %q, %v", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, "ok")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after 100 Continue: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	// Connection: close is honoured; so is HTTP/1.0's default.
	for _, text := range []string{"GET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "GET /e HTTP/1.0\r\n\r\n"} {
		cc, err := net.Dial("unix", s.sock)
		if err != nil {
			t.Fatal(err)
		}
		cc.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(cc, text)
		rest, _ := io.ReadAll(cc) // until the server closes
		cc.Close()
		if !strings.HasPrefix(string(rest), "HTTP/1.1 200 OK\r\n") || !strings.Contains(string(rest), "Connection: close\r\n") {
			t.Fatalf("%q: %q", text, rest)
		}
	}
}

// TestServeRefuses: every malformed request gets its status and the error
// envelope, readable by the client, and the connection is closed.
func TestServeRefuses(t *testing.T) {
	s := serveOwn(t, echo, ServeOptions{MaxBodyBytes: 64})
	for _, c := range []struct {
		text   string
		status int
		code   string
	}{
		{"\x00\x01garbage\r\n\r\n", 400, CodeBadRequest},
		{"GET /x\r\n\r\n", 400, CodeBadRequest},
		{"GET x HTTP/1.1\r\n\r\n", 400, CodeBadRequest},
		{"GET /x HTTP/2.0\r\n\r\n", 505, CodeBadRequest},
		{"GET /x HTTP/1.1\r\nNo colon\r\n\r\n", 400, CodeBadRequest},
		{"GET /x HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400, CodeBadRequest},
		{"GET /x HTTP/1.1\r\nA: b\x01c\r\n\r\n", 400, CodeBadRequest},
		{"POST /x HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400, CodeBadRequest},
		{"POST /x HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400, CodeBadRequest},
		{"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, CodeBadRequest},
		{"POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, CodeBadRequest},
		{"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, CodeBadRequest},
		{"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, CodeBadRequest},
		{"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", 400, CodeBadRequest},
		{"POST /x HTTP/1.1\r\nExpect: magic\r\n\r\n", 417, CodeBadRequest},
		{"POST /x HTTP/1.1\r\nContent-Length: 65\r\n\r\n" + strings.Repeat("a", 65), 413, CodeTooLarge},
		{"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + strings.Repeat("a", 64) + "\r\n1\r\na\r\n0\r\n\r\n", 413, CodeTooLarge},
		{"GET /x HTTP/1.1\r\nX: " + strings.Repeat("h", 64<<10) + "\r\n\r\n", 431, CodeTooLarge},
	} {
		resp, body := raw(t, s.sock, c.text)
		var e Error
		if resp.StatusCode != c.status || json.Unmarshal([]byte(body), &e) != nil || e.Code != c.code || e.Message == "" || !resp.Close {
			t.Errorf("%.50q: %d %s (close %v), want %d %s", c.text, resp.StatusCode, body, resp.Close, c.status, c.code)
		}
	}
	// Exactly at the limit is read.
	resp, body := raw(t, s.sock, "POST /x HTTP/1.1\r\nContent-Length: 64\r\n\r\n"+strings.Repeat("a", 64))
	if resp.StatusCode != 200 || !strings.Contains(body, strings.Repeat("a", 64)) {
		t.Fatalf("a body at the limit: %d %s", resp.StatusCode, body)
	}
}

// TestServeTimeouts: a silent connection, one that stops mid-header and an
// idle one are closed; others are served meanwhile.
func TestServeTimeouts(t *testing.T) {
	s := serveOwn(t, echo, ServeOptions{ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	dial := func() net.Conn {
		c, err := net.Dial("unix", s.sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	silent, partial, idle := dial(), dial(), dial()
	io.WriteString(partial, "GET /x HTTP/1.1\r\nHost: x\r\n")
	idle.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(idle, "GET /x HTTP/1.1\r\n\r\n")
	br := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("idle connection's first request: %v", err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	for name, c := range map[string]net.Conn{"silent": silent, "partial": partial, "idle": idle} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || len(b) != 0 {
			t.Fatalf("%s connection: %q, %v; want closed without an answer", name, b, err)
		}
	}
}

// TestServeClientGone: a handler's context ends when its client goes away,
// and at shutdown; Serve then waits for it, and cuts what does not end in
// time.
func TestServeClientGone(t *testing.T) {
	ended := make(chan error, 1)
	waiting := make(chan struct{}, 1)
	s := serveOwn(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		waiting <- struct{}{}
		<-r.Context().Done()
		ended <- r.Context().Err()
		WriteJSON(w, http.StatusOK, "late")
	}), ServeOptions{})
	c, err := net.Dial("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /wait HTTP/1.1\r\n\r\n")
	<-waiting
	c.Close()
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("context: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's context did not end when its client went away")
	}

	// At shutdown a waiting handler's context ends and its answer is sent.
	cl := NewClient(s.sock)
	defer cl.Close()
	got := make(chan error, 1)
	go func() {
		resp, err := cl.Do(context.Background(), http.MethodGet, "/wait", nil)
		if err == nil {
			var v string
			err = ReadJSON(resp, 100, &v)
			resp.Body.Close()
			if err == nil && (v != "late" || !resp.Close) {
				err = fmt.Errorf("answer %q, close %v", v, resp.Close)
			}
		}
		got <- err
	}()
	<-waiting
	idle, err := net.Dial("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	testenv.Eventually(t, 5*time.Second, "the idle connection to be accepted", func() bool { return s.accepted.Load() == 3 })
	s.cancel()
	if err := <-got; err != nil {
		t.Fatalf("the answer at shutdown: %v", err)
	}
	<-ended
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(idle); len(b) != 0 || err != nil {
		t.Fatalf("an idle connection at shutdown: %q, %v; want closed", b, err)
	}
}

// TestServeShutdownCuts: a handler that outlives ShutdownTimeout has its
// connection cut; Serve returns once it has ended.
func TestServeShutdownCuts(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	s := serveOwn(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
	}), ServeOptions{ShutdownTimeout: 50 * time.Millisecond})
	c, err := net.Dial("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /stuck HTTP/1.1\r\n\r\n")
	<-started
	s.cancel()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
		t.Fatalf("the stuck request's connection: %q, %v; want cut", b, err)
	}
	select {
	case err := <-s.done:
		t.Fatalf("Serve returned (%v) while a handler runs", err)
	default:
	}
	close(release)
	select {
	case err := <-s.done:
		s.done <- err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return once the handler ended")
	}
}

// TestClientReconnects: a connection the service closed while it was idle
// is not used again; a restarted service is reached on a new one.
func TestClientReconnects(t *testing.T) {
	s := serveOwn(t, echo, ServeOptions{IdleTimeout: 100 * time.Millisecond})
	c := NewClient(s.sock)
	defer c.Close()
	for i := range 2 {
		resp, err := c.Do(context.Background(), http.MethodPost, "/x", []byte(`{}`))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if i == 0 {
			testenv.Eventually(t, 5*time.Second, "the server to close the idle connection", func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return len(c.idle) == 1 && !c.idle[0].open()
			})
		}
	}
	if n := s.accepted.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// TestClientStreams: an answer's body streams (chunked, as the agent's
// fetch sends progress), and ends with the caller's context.
func TestClientStreams(t *testing.T) {
	next := make(chan string)
	sock := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for {
			select {
			case line := <-next:
				io.WriteString(w, line+"\n")
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	}), Limits{}, nil)
	c := NewClient(sock)
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := c.Do(ctx, http.MethodPost, "/fetch", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for _, want := range []string{"one", "two"} {
		next <- want
		if !sc.Scan() || sc.Text() != want {
			t.Fatalf("streamed line: %q, %v; want %q", sc.Text(), sc.Err(), want)
		}
	}
	cancel()
	if sc.Scan() || !errors.Is(sc.Err(), context.Canceled) {
		t.Fatalf("after cancel: %q, %v", sc.Text(), sc.Err())
	}
}

// TestNoBodyLeftInMemory: once a request is answered, neither the client
// nor the server (both in this process) holds a copy of its body: the
// request's buffer, the connection's and the body's are zeroed, and the
// handler zeroes what it read. Not a leak in the answer: the handler does
// not echo the secret.
func TestNoBodyLeftInMemory(t *testing.T) {
	var seen atomic.Bool
	s := serveOwn(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, e := ReadBody(w, r, 1<<10)
		defer clear(body)
		seen.Store(e == nil && len(body) > 64)
		WriteJSON(w, http.StatusOK, len(body))
	}), ServeOptions{})
	// The secret lives outside the Go heap, where the scan leaves it out.
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	secret := mem[:64]
	rand.Read(secret)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i, b := range secret {
		secret[i] = alphabet[b%64]
	}
	needles := map[string][]byte{"secret": secret}
	scan := func() []memscan.Hit {
		hits, _, err := memscan.Scan(os.Getpid(), needles, memscan.Of(mem))
		if err != nil {
			t.Fatal(err)
		}
		return hits
	}

	c := NewClient(s.sock)
	defer c.Close()
	for _, chunked := range []bool{false, true} {
		body := make([]byte, 0, 80)
		body = append(append(append(body, `{"token":"`...), secret...), `"}`...)
		if hits := scan(); len(hits) == 0 {
			t.Fatal("the scan does not find the request body: it cannot tell")
		}
		if chunked {
			// By hand: Client.Do always sends a length.
			conn, err := net.Dial("unix", s.sock)
			if err != nil {
				t.Fatal(err)
			}
			req := make([]byte, 0, 256)
			req = fmt.Appendf(req, "POST /v HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n", 10)
			req = append(req, body[:10]...)
			req = fmt.Appendf(req, "\r\n%x\r\n", len(body)-10)
			req = append(req, body[10:]...)
			req = append(req, "\r\n0\r\n\r\n"...)
			conn.Write(req)
			clear(req)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("chunked: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			defer conn.Close() // kept open: an idle connection holds nothing either
		} else {
			resp, err := c.Do(context.Background(), http.MethodPost, "/v", body)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		clear(body)
		if !seen.Load() {
			t.Fatal("the handler did not get the body")
		}
		for _, h := range scan() {
			t.Errorf("chunked %v: a copy of the body at %#x in %s", chunked, h.Addr, h.Mapping)
		}
	}
}

// A handler's own Content-Length never reaches the wire: the answer says
// the length written, so a kept-alive connection stays in step.
func TestServeOwnLength(t *testing.T) {
	liar := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "999")
		io.WriteString(w, "hi")
	})
	s := serveOwn(t, liar, ServeOptions{MaxBodyBytes: 64})
	c, err := net.Dial("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	for i := range 2 {
		resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != "hi" || resp.ContentLength != 2 {
			t.Fatalf("answer %d: %q, %v, Content-Length %d", i, b, err, resp.ContentLength)
		}
	}
}
