package localapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Client limits.
const (
	dialTimeout = 5 * time.Second
	// maxErrorBytes bounds the error body Do reads.
	maxErrorBytes = 64 << 10
	// maxIdleConns connections are kept open for reuse, each at most
	// idleConnTimeout.
	maxIdleConns    = 4
	idleConnTimeout = 30 * time.Second
	// maxAnswerHeadBytes bounds what is read before an answer's head is
	// complete.
	maxAnswerHeadBytes = 1 << 20
	// drainAnswerBytes: an answer of a known length up to this size that
	// the caller did not read to its end is read out, so that its
	// connection can be reused.
	drainAnswerBytes = 64 << 10
)

// Client sends requests to one service over its Unix socket. Connections
// are kept and reused; it is safe for concurrent use.
//
// It writes requests itself: each is built whole in one buffer, written
// with one write and zeroed, so that a secret in a body (a token sent to
// verifyd) is left in no buffer of a library. Answers, which carry no
// secret, are read with net/http's http.ReadResponse.
type Client struct {
	socket string
	dialer net.Dialer

	mu   sync.Mutex
	idle []*clientConn // most recently used last
}

// clientConn is one connection and the reader of its answers.
type clientConn struct {
	c     net.Conn
	lim   headLimit
	br    *bufio.Reader
	timer *time.Timer // closes it once idle for idleConnTimeout
}

// headLimit fails a read past n bytes while n >= 0; n < 0 is no limit.
type headLimit struct {
	r io.Reader
	n int64
}

func (l *headLimit) Read(p []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(p)
	}
	if l.n == 0 {
		return 0, errors.New("the answer's head is too large")
	}
	n, err := l.r.Read(p[:min(int64(len(p)), l.n)])
	l.n -= int64(n)
	return n, err
}

// NewClient returns a client of the service listening on socket. It does
// not connect until the first request.
func NewClient(socket string) *Client {
	return &Client{socket: socket, dialer: net.Dialer{Timeout: dialTimeout}}
}

// Socket is the path the client connects to.
func (c *Client) Socket() string { return c.socket }

// Close closes idle connections. The client stays usable.
func (c *Client) Close() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	c.mu.Unlock()
	for _, cc := range idle {
		cc.timer.Stop()
		cc.c.Close()
	}
}

// Do sends one request, with body (JSON) unless it is nil, and returns:
//   - the answer, when its status is 2xx: the caller reads and closes its
//     body (which may stream);
//   - an *[Error] when the service answered with another status: Code and
//     Message from the envelope (Code is "" when the body was not one),
//     Status, and RetryAfter from Retry-After;
//   - otherwise the error of the exchange: ctx's error, or a *net.OpError
//     whose Op is "dial" when nothing answers on the socket.
//
// This is the one path every request of both services takes. The request
// is built in a buffer of Do's own, zeroed once written; body is not
// modified (the caller zeroes it).
func (c *Client) Do(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	req, err := encodeRequest(method, path, body)
	if err != nil {
		return nil, err
	}
	defer clear(req)
	for attempt := 0; ; attempt++ {
		cc, reused, err := c.conn(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		resp, err := c.roundTrip(ctx, cc, method, req)
		switch {
		case err == nil:
			return answer(resp)
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case reused && attempt == 0 && retry(err, method):
			continue // the service closed the connection while it was idle
		}
		return nil, err
	}
}

// encodeRequest returns the whole request as it goes on the wire.
func encodeRequest(method, path string, body []byte) ([]byte, error) {
	if !isToken(method) || len(path) == 0 || path[0] != '/' {
		return nil, fmt.Errorf("localapi: malformed request %q %q", method, path)
	}
	for i := 0; i < len(path); i++ {
		if path[i] <= ' ' || path[i] >= 0x7f {
			return nil, fmt.Errorf("localapi: path %q needs escaping", path)
		}
	}
	head := method + " " + path + " HTTP/1.1\r\nHost: local\r\n"
	switch {
	case body != nil:
		head += "Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n"
	case method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch:
		head += "Content-Length: 0\r\n"
	}
	head += "\r\n"
	req := make([]byte, 0, len(head)+len(body)) // exact: never grown, never copied
	req = append(req, head...)
	return append(req, body...), nil
}

// conn returns an idle connection that is still open, or a new one.
func (c *Client) conn(ctx context.Context) (cc *clientConn, reused bool, err error) {
	for {
		c.mu.Lock()
		if len(c.idle) == 0 {
			c.mu.Unlock()
			break
		}
		cc = c.idle[len(c.idle)-1]
		c.idle = c.idle[:len(c.idle)-1]
		c.mu.Unlock()
		cc.timer.Stop()
		if cc.open() {
			return cc, true, nil
		}
		cc.c.Close()
	}
	nc, err := c.dialer.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, false, err
	}
	cc = &clientConn{c: nc, lim: headLimit{r: nc, n: -1}}
	cc.br = bufio.NewReader(&cc.lim)
	return cc, false, nil
}

// open reports whether an idle connection can take a request: the service
// has not closed it, and has sent nothing unasked.
func (cc *clientConn) open() bool {
	if cc.br.Buffered() > 0 {
		return false
	}
	sc, ok := cc.c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var n int
	var rerr error
	var b [1]byte
	if err := rc.Control(func(fd uintptr) {
		n, _, rerr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	}); err != nil {
		return false
	}
	return n <= 0 && errors.Is(rerr, unix.EAGAIN) // n is -1 with the error
}

// roundTrip writes req and reads the answer's head. The connection stays
// bound to ctx until the answer's body is closed.
func (c *Client) roundTrip(ctx context.Context, cc *clientConn, method string, req []byte) (*http.Response, error) {
	stop := context.AfterFunc(ctx, func() { cc.c.SetDeadline(aLongTimeAgo) })
	fail := func(err error) (*http.Response, error) {
		stop()
		cc.c.Close()
		return nil, err
	}
	if _, err := cc.c.Write(req); err != nil {
		return fail(writeError{err})
	}
	cc.lim.n = maxAnswerHeadBytes
	defer func() { cc.lim.n = -1 }()
	if _, err := cc.br.Peek(1); err != nil {
		return fail(err) // io.EOF: closed without a byte of answer
	}
	resp, err := http.ReadResponse(cc.br, &http.Request{Method: method})
	if err != nil {
		return fail(err)
	}
	resp.Body = &answerBody{rc: resp.Body, length: resp.ContentLength, keep: !resp.Close, ctx: ctx, stop: stop, cc: cc, client: c}
	return resp, nil
}

// writeError is a request that could not be written: the service did not
// get it whole, so it can be sent again.
type writeError struct{ err error }

func (e writeError) Error() string { return e.err.Error() }
func (e writeError) Unwrap() error { return e.err }

// retry reports whether a request that failed on a reused connection may
// be sent again on a new one: it was not written, or the service closed
// the connection without a byte of answer and the request is a GET.
func retry(err error, method string) bool {
	var we writeError
	if errors.As(err, &we) {
		return true
	}
	return (method == http.MethodGet || method == http.MethodHead) &&
		(err == io.EOF || errors.Is(err, syscall.ECONNRESET))
}

// answerBody is an answer's body. Closed after its end, it puts the
// connection back for reuse; closed before, it closes the connection.
type answerBody struct {
	rc     io.ReadCloser
	length int64 // Content-Length; -1 when unknown
	keep   bool  // the service keeps the connection open
	eof    bool
	closed bool
	ctx    context.Context
	stop   func() bool
	cc     *clientConn
	client *Client
}

func (b *answerBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil && b.ctx.Err() != nil:
		err = b.ctx.Err()
	}
	return n, err
}

func (b *answerBody) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	if !b.eof && b.keep && b.length >= 0 && b.length <= drainAnswerBytes {
		b.cc.c.SetReadDeadline(time.Now().Add(time.Second)) // the answer is on its way, whole
		io.Copy(io.Discard, b)
	}
	if b.eof {
		b.rc.Close() // at the end: nothing left to read
	}
	if !b.stop() || !b.eof || !b.keep {
		b.cc.c.Close()
		return nil
	}
	b.cc.c.SetDeadline(time.Time{})
	b.client.putIdle(b.cc)
	return nil
}

// putIdle keeps cc for reuse, or closes it when enough are kept.
func (c *Client) putIdle(cc *clientConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.idle) >= maxIdleConns {
		cc.c.Close()
		return
	}
	c.idle = append(c.idle, cc)
	cc.timer = time.AfterFunc(idleConnTimeout, func() { c.dropIdle(cc) })
}

// dropIdle closes cc if it is still idle.
func (c *Client) dropIdle(cc *clientConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.idle {
		if x == cc {
			c.idle = append(c.idle[:i], c.idle[i+1:]...)
			cc.c.Close()
			return
		}
	}
}

// answer returns a 2xx answer, and turns any other into an *Error.
func answer(resp *http.Response) (*http.Response, error) {
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	e := &Error{Status: resp.StatusCode}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	var env Error
	if json.Unmarshal(data, &env) == nil && env.Code != "" {
		e.Code, e.Message = env.Code, env.Message
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return nil, e
}

// ReadJSON decodes an answer's body, at most limit bytes, into out.
func ReadJSON(resp *http.Response, limit int64, out any) error {
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return err
	}
	if int64(len(data)) > limit {
		return fmt.Errorf("the answer is larger than %d bytes", limit)
	}
	return json.Unmarshal(data, out)
}
