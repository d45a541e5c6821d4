package verifyd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/localapi"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

const vectorsDir = "../token/testdata/htcondor-24.0"

// sockDir returns a short directory for sockets (sun_path is 108 bytes;
// t.TempDir paths with long test names do not fit).
func sockDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// copyKeys copies the key files of a testdata folder into dst with mode
// 0600 (git does not keep modes).
func copyKeys(t testing.TB, folder, dst string) {
	t.Helper()
	testenv.CopyKeys(t, filepath.Join(vectorsDir, folder), dst)
}

func keyFile(t testing.TB, folder, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vectorsDir, folder, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeKey writes a key file in place, mode 0600.
func writeKey(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := keys.Write(path, b); err != nil {
		t.Fatal(err)
	}
}

// sign makes a token for kid signed with the key derived from file.
func sign(t testing.TB, kid string, file []byte, lifetime time.Duration) []byte {
	t.Helper()
	tok, err := keys.Sign(file, kid, token.Claims{Issuer: "example.org", Subject: "alice@example.org", Lifetime: lifetime})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type testServer struct {
	*Server
	client *verifyapi.Client
	socket string
	logs   *syncbuf.Buffer
	cancel context.CancelFunc
	done   chan error
}

// start runs a Server on a fresh socket until the test ends. tweak, if not
// nil, changes the server before Serve.
func start(t *testing.T, o Options, tweak func(*Server)) *testServer {
	t.Helper()
	logs := &syncbuf.Buffer{}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(s)
	}
	sock := filepath.Join(sockDir(t), "verify.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{Server: s, client: verifyapi.NewClient(sock), socket: sock, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ts.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after its context ended")
		}
		ts.client.Close()
		l.Close()
	})
	return ts
}

// fast are options without a practical rate limit, for tests that poll.
func fast(dir string) Options { return Options{PasswordDir: dir, Rate: 1e6, Burst: 1e6} }

func (ts *testServer) reason(t testing.TB, raw []byte) token.Reason {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := ts.client.Verify(ctx, raw)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return r.Reason
}

func (ts *testServer) gen(t testing.TB) uint64 {
	t.Helper()
	g, err := ts.client.Generation(context.Background())
	if err != nil {
		t.Fatalf("Generation: %v", err)
	}
	if g != ts.Generation() {
		t.Fatalf("client sees generation %d, server has %d", g, ts.Generation())
	}
	return g
}

// rawResp is one answer to a hand-made request.
type rawResp struct {
	status int
	header http.Header
	body   []byte
}

func (r rawResp) code(t testing.TB) string {
	t.Helper()
	var e localapi.Error
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("error body %q is not JSON: %v", r.body, err)
	}
	return e.Code
}

// do sends a hand-made request over the socket. body may be an io.Reader
// (sent chunked) or a []byte.
func (ts *testServer) do(t testing.TB, method, path string, body any) rawResp {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", ts.socket)
		},
	}}
	defer hc.CloseIdleConnections()
	var rd io.Reader
	switch b := body.(type) {
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	case io.Reader:
		rd = struct{ io.Reader }{b} // hide the length: chunked
	}
	req, err := http.NewRequest(method, "http://verifyd"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return rawResp{resp.StatusCode, resp.Header, b}
}

// unavailable stands, in the tests' expectations, for "no verdict: 503
// key-unavailable"; verifyd never sends it as a Reason.
const unavailable token.Reason = "(503 key-unavailable)"

// verify asks about raw. It returns the verdict, or the 503 key-unavailable
// answer, which must be an error matching verifyapi.ErrUnavailable (and not
// verifyapi.ErrRateLimited) and carry no verdict. Any other error fails the test.
func (ts *testServer) verify(t testing.TB, raw []byte) (token.Reason, *verifyapi.ServerError) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := ts.client.Verify(ctx, raw)
	if err == nil {
		if r.Reason == unavailable {
			t.Fatalf("verifyd sent the test-only reason %q", r.Reason)
		}
		return r.Reason, nil
	}
	var se *verifyapi.ServerError
	if !errors.As(err, &se) || se.Status != http.StatusServiceUnavailable || se.Code != verifyapi.CodeKeyUnavailable {
		t.Fatalf("Verify: %v", err)
	}
	if !errors.Is(err, verifyapi.ErrUnavailable) || errors.Is(err, verifyapi.ErrRateLimited) {
		t.Fatalf("503 key-unavailable must match verifyapi.ErrUnavailable and not verifyapi.ErrRateLimited: %v", err)
	}
	if r.Reason != "" || r.Generation != 0 {
		t.Fatalf("503 key-unavailable came with a verdict: %+v", r)
	}
	return unavailable, se
}

// answer is the verdict on raw, or unavailable (see verify).
func (ts *testServer) answer(t testing.TB, raw []byte) token.Reason {
	t.Helper()
	r, _ := ts.verify(t, raw)
	return r
}

// isUnavailable reports whether err is a transport failure.
func isUnavailable(err error) bool { return errors.Is(err, verifyapi.ErrUnavailable) }

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
