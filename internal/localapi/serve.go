package localapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServeOptions bound what a connection may cost [Serve]. Zero values mean
// the defaults in parentheses.
type ServeOptions struct {
	// ReadHeaderTimeout: a new connection sends a whole request head within
	// it, and so does an idle one from the first byte of a request (5 s).
	ReadHeaderTimeout time.Duration
	// ReadTimeout: from the first byte of a request to the end of its
	// body (10 s).
	ReadTimeout time.Duration
	// WriteTimeout: from the end of a request to the end of its answer,
	// the handler's time included (30 s).
	WriteTimeout time.Duration
	// IdleTimeout: how long a connection may wait between requests (1 min).
	IdleTimeout time.Duration
	// MaxBodyBytes: a larger body is answered 413 [CodeTooLarge] (64 KiB).
	MaxBodyBytes int
	// ShutdownTimeout: how long Serve waits, once its context is done, for
	// answers in progress before it cuts their connections (3 s).
	ShutdownTimeout time.Duration
	// Log receives what goes wrong with a connection (default slog.Default).
	Log *slog.Logger
}

const (
	defaultReadTimeout     = 10 * time.Second
	defaultWriteTimeout    = 30 * time.Second
	defaultMaxBodyBytes    = 64 << 10
	defaultShutdownTimeout = 3 * time.Second
	// drainLimit and drainTime bound what is read and thrown away after an
	// answer that leaves part of a request unread, so that the client gets
	// to read the answer instead of a reset.
	drainLimit = 256 << 10
	drainTime  = time.Second
)

// aLongTimeAgo is a deadline that has passed: setting it interrupts a read
// or write at once.
var aLongTimeAgo = time.Unix(1, 0)

// Serve answers the connections of l with h until ctx is done, then stops
// (answers in progress get ShutdownTimeout to finish) and returns nil. It
// returns the error of l.Accept if that fails for another reason.
//
// Serve speaks HTTP/1.1 itself instead of through net/http, for services
// whose requests carry secrets: every byte of a request is read into a
// buffer of the connection's own, then the body is copied into a buffer of
// the request's own, and both are zeroed before the answer is written
// (the handler zeroes what it copies). The connection's buffer is zeroed
// again when the connection closes, so an idle connection holds nothing of
// a request it has answered. Answers are written whole, once the handler
// returns; handlers cannot stream.
//
// Request contexts carry the peer ([PeerOf]) when l is a listener of
// [NewListener], and end when ctx does, when the client goes away, or
// when the handler returns. Bodies come with Content-Length or chunked,
// Expect: 100-continue is honoured, and pipelined requests are answered in
// order; anything else malformed is answered 4xx or 5xx with the error
// envelope and the connection closed.
func Serve(ctx context.Context, l net.Listener, h http.Handler, o ServeOptions) error {
	s := &server{h: h, o: o, ctx: ctx, conns: map[net.Conn]bool{}}
	s.defaults()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var err error
	var delay time.Duration
	for {
		c, aerr := l.Accept()
		if aerr != nil {
			if ctx.Err() != nil {
				break
			}
			var te interface{ Temporary() bool } // EMFILE and the like: wait, try again
			if errors.As(aerr, &te) && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.o.Log.Warn("cannot accept a connection; retrying", "error", aerr, "in", delay)
				select {
				case <-time.After(delay):
				case <-ctx.Done():
				}
				continue
			}
			err = aerr
			break
		}
		delay = 0
		s.mu.Lock()
		s.conns[c] = false
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
	s.shutdown()
	return err
}

type server struct {
	h   http.Handler
	o   ServeOptions
	ctx context.Context

	mu      sync.Mutex
	conns   map[net.Conn]bool // open connections; true while idle
	closing bool
	wg      sync.WaitGroup
}

func (s *server) defaults() {
	o := &s.o
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ReadHeaderTimeout, readHeaderTimeout)
	def(&o.ReadTimeout, defaultReadTimeout)
	def(&o.WriteTimeout, defaultWriteTimeout)
	def(&o.IdleTimeout, idleTimeout)
	def(&o.ShutdownTimeout, defaultShutdownTimeout)
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = defaultMaxBodyBytes
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// shutdown closes idle connections, lets the others finish their answer
// for up to ShutdownTimeout, then cuts them, and waits for every
// connection's goroutine (which zeroes its buffers) to end.
func (s *server) shutdown() {
	s.mu.Lock()
	s.closing = true
	for c, idle := range s.conns {
		if idle {
			c.Close()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(s.o.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-done
}

// idle marks c idle (waiting for a request) or busy. It returns false when
// the server is closing: an idle connection is then to be closed.
func (s *server) idle(c net.Conn, idle bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[c] = idle
	return !(idle && s.closing)
}

// isClosing reports whether the server stops: its context is done.
func (s *server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing || s.ctx.Err() != nil
}

func (s *server) serveConn(c net.Conn) {
	cr := &connReader{c: c, buf: make([]byte, maxHeaderBytes)}
	defer func() {
		if p := recover(); p != nil && p != http.ErrAbortHandler {
			s.o.Log.Error("a request handler panicked; closing its connection", "panic", p)
		}
		cr.wipe()
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	base := s.ctx
	if pc, ok := c.(*conn); ok {
		base = WithPeer(base, pc.peer)
	}
	wait := s.o.ReadHeaderTimeout // a new connection has a request to send
	for {
		if !s.idle(c, true) {
			return
		}
		c.SetReadDeadline(time.Now().Add(wait))
		if cr.buffered() == 0 && cr.fill() != nil {
			return
		}
		start := time.Now()
		s.idle(c, false)
		if !s.serveOne(base, cr, start) {
			return
		}
		wait = s.o.IdleTimeout
	}
}

// serveOne reads one request (whose first bytes are buffered), answers it
// and reports whether the connection stays open for another.
func (s *server) serveOne(base context.Context, cr *connReader, start time.Time) bool {
	c := cr.c
	c.SetReadDeadline(start.Add(s.o.ReadHeaderTimeout))
	req, err := cr.readHead()
	if err != nil {
		s.reject(cr, err)
		return false
	}
	c.SetReadDeadline(start.Add(s.o.ReadTimeout))
	if req.expectContinue && cr.buffered() == 0 && (req.chunked || req.length > 0) && req.length <= int64(s.o.MaxBodyBytes) {
		c.SetWriteDeadline(start.Add(s.o.ReadTimeout))
		if _, err := io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			return false
		}
	}
	body, err := cr.readBody(req, s.o.MaxBodyBytes)
	defer clear(body[:cap(body)])
	if err != nil {
		s.reject(cr, err)
		return false
	}
	cr.compact() // zeroes the request, keeps what a client pipelined

	ctx, cancel := context.WithCancel(base)
	defer cancel()
	r, err := http.NewRequestWithContext(ctx, req.method, req.target, bytes.NewReader(body))
	if err != nil {
		s.reject(cr, badRequest("malformed request"))
		return false
	}
	r.URL, r.RequestURI = req.url, req.target
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1."+strconv.Itoa(req.minor), 1, req.minor
	r.Host = req.header.Get("Host")
	req.header.Del("Host")
	r.Header = req.header
	r.Close = !req.keepAlive
	r.RemoteAddr = c.RemoteAddr().String()
	if req.chunked {
		r.TransferEncoding = []string{"chunked"}
	}
	if len(body) == 0 {
		r.Body = http.NoBody
	}

	w := &response{header: http.Header{}, head: req.method == http.MethodHead}
	c.SetWriteDeadline(time.Now().Add(s.o.WriteTimeout))
	var g *goneWatch
	if cr.buffered() == 0 { // with a pipelined request waiting, the client is there
		g = watchGone(c, cancel)
	}
	s.h.ServeHTTP(w, r)
	if g != nil {
		if b, ok := g.stop(); ok {
			cr.buf[cr.w] = b // the first byte of the next request
			cr.w++
		}
	}
	clear(body[:cap(body)]) // before the answer: the client may look for it as soon as it has one
	keep := req.keepAlive && !s.isClosing()
	out := w.encode(keep)
	_, err = c.Write(out)
	clear(out)
	return keep && err == nil
}

// reject answers a request that cannot be served, when err is an *Error,
// then reads and throws away what the client may still be sending, so that
// it reads the answer rather than a reset. The connection is closed after.
func (s *server) reject(cr *connReader, err error) {
	var e *Error
	if !errors.As(err, &e) {
		return // timed out or gone: nothing to answer
	}
	c := cr.c
	w := &response{header: http.Header{}}
	WriteError(w, e.Status, e.Code, e.Message)
	out := w.encode(false)
	c.SetWriteDeadline(time.Now().Add(drainTime))
	if _, err := c.Write(out); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else if pc, ok := c.(*conn); ok {
		if cw, ok := pc.Conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}
	c.SetReadDeadline(time.Now().Add(drainTime))
	for n := 0; n < drainLimit; {
		cr.compact()
		cr.r = cr.w // consumed: zeroed by the next compact
		if cr.fill() != nil {
			break
		}
		n += cr.buffered()
	}
	cr.wipe()
}

// goneWatch reads from a connection while its request is handled, to see
// the client go away (the request's context is then cancelled) or keep the
// first byte of its next request.
type goneWatch struct {
	c    net.Conn
	done chan struct{}
	b    [1]byte
	n    int
}

func watchGone(c net.Conn, cancel context.CancelFunc) *goneWatch {
	g := &goneWatch{c: c, done: make(chan struct{})}
	c.SetReadDeadline(time.Time{})
	go func() {
		defer close(g.done)
		var err error
		g.n, err = c.Read(g.b[:])
		if g.n == 0 && !errors.Is(err, os.ErrDeadlineExceeded) {
			cancel()
		}
	}()
	return g
}

// stop ends the watch and returns the byte it read, if any.
func (g *goneWatch) stop() (byte, bool) {
	g.c.SetReadDeadline(aLongTimeAgo)
	<-g.done
	return g.b[0], g.n == 1
}

// response is a handler's answer, kept whole until the handler returns.
type response struct {
	header http.Header
	status int
	body   []byte
	head   bool // a HEAD request: the body is not sent
}

func (w *response) Header() http.Header { return w.header }

func (w *response) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *response) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, p...)
	return len(p), nil
}

// encode returns the answer as it goes on the wire, and zeroes the body
// it held.
func (w *response) encode(keep bool) []byte {
	defer clear(w.body)
	w.WriteHeader(http.StatusOK)
	status := w.status
	h := w.header
	noBody := status < 200 || status == http.StatusNoContent || status == http.StatusNotModified
	if noBody {
		h.Del("Content-Length")
	} else {
		// Always the length written: a handler's own figure could
		// desynchronize a kept-alive connection.
		h.Set("Content-Length", strconv.Itoa(len(w.body)))
	}
	h.Del("Transfer-Encoding")
	if keep {
		h.Del("Connection")
	} else {
		h.Set("Connection", "close")
	}
	out := make([]byte, 0, 256+len(w.body))
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(status)...)
	out = append(out, "\r\n"...)
	clean := strings.NewReplacer("\r", " ", "\n", " ")
	for _, k := range slices.Sorted(maps.Keys(h)) {
		for _, v := range h[k] {
			out = append(out, k...)
			out = append(out, ": "...)
			out = append(out, clean.Replace(v)...)
			out = append(out, "\r\n"...)
		}
	}
	out = append(out, "\r\n"...)
	if !w.head && !noBody {
		out = append(out, w.body...)
	}
	return out
}
