package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Error codes both services use, in [Error].Code.
const (
	CodeBadRequest       = "bad-request"
	CodeTooLarge         = "too-large"
	CodeNotFound         = "not-found"
	CodeMethodNotAllowed = "method-not-allowed"
	CodeTooManyConns     = "too-many-connections"
	CodeInternal         = "internal"
)

// Error is the body of every error answer, {"code": ..., "message": ...}.
// A client's [Client.Do] returns it with the answer's Status and
// Retry-After; those two do not travel in the body.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`

	Status     int           `json:"-"`
	RetryAfter time.Duration `json:"-"` // from Retry-After; 0 if absent
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("%d %s", e.Status, e.Code)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

// envelope is the JSON of an error body, with its final newline.
func envelope(code, msg string) []byte {
	b, _ := json.Marshal(Error{Code: code, Message: msg}) // strings only: cannot fail
	return append(b, '\n')
}

// Server timeouts and limits, the same for both services.
const (
	readHeaderTimeout = 5 * time.Second
	idleTimeout       = time.Minute
	maxHeaderBytes    = 8 << 10
)

// NewServer returns an HTTP server for h, to serve a listener of
// [NewListener]: request contexts carry the peer ([PeerOf]) and end when
// ctx does; slow headers and idle connections are cut. Services add their
// own read and write timeouts.
func NewServer(ctx context.Context, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*conn); ok {
				return WithPeer(ctx, pc.peer)
			}
			return ctx
		},
	}
}

// Mux routes requests by method and path. A path is exact ("/v1/status")
// or ends in one wildcard segment ("/v1/tokens/{name}", read with
// r.PathValue); paths are never cleaned or redirected, so "/v1//status" is
// simply unknown. GET routes answer HEAD too. An unknown path is 404
// [CodeNotFound]; a known path with another method is 405
// [CodeMethodNotAllowed] with Allow.
type Mux struct {
	routes []route
}

type route struct {
	method string
	segs   []string // literal segments; the last is the wildcard when param != ""
	param  string
	h      http.HandlerFunc
	path   string // as registered, for messages
}

// Handle adds a route. It panics on a malformed pattern (a programming
// error).
func (m *Mux) Handle(method, pattern string, h http.HandlerFunc) {
	if !strings.HasPrefix(pattern, "/") {
		panic("localapi: pattern " + pattern + " does not start with /")
	}
	r := route{method: method, segs: strings.Split(pattern[1:], "/"), h: h, path: pattern}
	last := r.segs[len(r.segs)-1]
	if strings.HasPrefix(last, "{") && strings.HasSuffix(last, "}") {
		r.param = last[1 : len(last)-1]
	}
	m.routes = append(m.routes, r)
}

// match reports whether the escaped path matches r, and the wildcard's
// unescaped value.
func (r *route) match(segs []string) (string, bool) {
	if len(segs) != len(r.segs) {
		return "", false
	}
	for i, s := range segs {
		v, err := url.PathUnescape(s)
		if err != nil || v == "" {
			return "", false
		}
		if i == len(segs)-1 && r.param != "" {
			return v, true
		}
		if v != r.segs[i] {
			return "", false
		}
	}
	return "", true
}

func (m *Mux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	noStore(w.Header())
	segs := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	var allow []string
	for i := range m.routes {
		rt := &m.routes[i]
		v, ok := rt.match(segs)
		if !ok {
			continue
		}
		if r.Method == rt.method || (r.Method == http.MethodHead && rt.method == http.MethodGet) {
			if rt.param != "" {
				r.SetPathValue(rt.param, v)
			}
			rt.h(w, r)
			return
		}
		allow = append(allow, rt.method)
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		WriteError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed,
			fmt.Sprintf("%s %s: method not allowed; use %s", r.Method, r.URL.Path, strings.Join(allow, " or ")))
		return
	}
	paths := make([]string, 0, len(m.routes))
	for _, rt := range m.routes {
		if !slices.Contains(paths, rt.path) {
			paths = append(paths, rt.path)
		}
	}
	WriteError(w, http.StatusNotFound, CodeNotFound,
		fmt.Sprintf("no such path %s; this service answers %s", r.URL.Path, strings.Join(paths, ", ")))
}

// noStore marks an answer as not to be cached or sniffed.
func noStore(h http.Header) {
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
}

// WriteJSON answers with status and v as JSON (and a final newline).
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = envelope(CodeInternal, "cannot encode the answer")
	} else {
		b = append(b, '\n')
	}
	h := w.Header()
	noStore(h)
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// WriteError answers with status and the envelope {code, message}.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	WriteJSON(w, status, Error{Code: code, Message: msg})
}

// ReadBody reads the request body, at most limit bytes, into one buffer,
// so that a secret in it is not left behind in the discarded buffers of a
// growing read: the caller may zero what it gets. A body over the limit is
// an *[Error] 413 [CodeTooLarge]; a body that cannot be read, 400
// [CodeBadRequest].
func ReadBody(w http.ResponseWriter, r *http.Request, limit int) ([]byte, *Error) {
	lr := http.MaxBytesReader(w, r.Body, int64(limit))
	size := limit
	if r.ContentLength >= 0 && r.ContentLength < int64(limit) {
		size = int(r.ContentLength)
	}
	buf := make([]byte, size+1)
	n, err := io.ReadFull(lr, buf)
	switch {
	case err == nil:
		// Filled: more may follow, which is an error if it is over the
		// limit or if it disagrees with ContentLength.
		var one [1]byte
		m, err2 := lr.Read(one[:])
		if m > 0 {
			err2 = &http.MaxBytesError{Limit: int64(limit)}
		}
		if err2 != io.EOF {
			clear(buf)
			return nil, bodyError(err2, limit)
		}
		return buf[:n], nil
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return buf[:n], nil
	default:
		clear(buf)
		return nil, bodyError(err, limit)
	}
}

func bodyError(err error, limit int) *Error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
			Message: fmt.Sprintf("request body is larger than %d bytes", limit)}
	}
	return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: "cannot read the request body"}
}

// Decode reads a JSON body of at most limit bytes into v, strictly: one
// value, no unknown fields, nothing after it. Errors are an *[Error] 413
// [CodeTooLarge] or 400 [CodeBadRequest] saying what is wrong. Not for
// secrets: the decoder keeps copies it does not zero.
func Decode(w http.ResponseWriter, r *http.Request, limit int, v any) *Error {
	body, e := ReadBody(w, r, limit)
	if e != nil {
		return e
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, err2 := dec.Token(); err2 != io.EOF {
			err = errors.New("data after the JSON value")
		}
	}
	if err != nil {
		return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: "malformed request: " + err.Error()}
	}
	return nil
}
