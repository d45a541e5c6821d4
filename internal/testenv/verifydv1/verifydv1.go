// Package verifydv1 is a verifyd that speaks only the first release's
// protocol, for tests of today's clients against it: three paths (POST
// /v1/verify, GET /v1/generation, GET /v1/changes), 404 not-found for
// anything else, and answers with only "reason" and "generation" (no trust
// domain, no max age, no cannot_tell). It judges with the key files of a
// directory, read at each request, and its generation goes up at every
// burst of key file events (and at Bump).
//
// It is a test fixture, not that release's server: it keeps the wire and
// the verdicts (malformed, unknown-key, rotated-key, expired, 503
// key-unavailable for an unusable key or a missing POOL), not the limits.
package verifydv1

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/tokend/tokend/internal/keywatch"
	"github.com/tokend/tokend/token"
)

// PollTimeout is how long GET /v1/changes waits, as in that release.
const PollTimeout = 30 * time.Second

// Server is a running v1 verifyd.
type Server struct {
	keys token.KeyDir
	hs   *http.Server
	stop context.CancelFunc
	done sync.WaitGroup

	mu      sync.Mutex
	gen     uint64
	changed chan struct{}
}

// Start listens on socket (mode 0666, as verifyd's) and serves until Close.
// keys names the key directory and pool key file; WantUID < 0 skips the
// owner check.
func Start(socket string, keys token.KeyDir) (*Server, error) {
	os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(socket, 0o666); err != nil {
		l.Close()
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{keys: keys, stop: stop, gen: 1, changed: make(chan struct{})}
	s.hs = &http.Server{Handler: s, BaseContext: func(net.Listener) context.Context { return ctx }}
	w := keywatch.New(keywatch.Options{Dir: keys.Dir, PoolKey: keys.PoolFile, Log: slog.New(slog.DiscardHandler)})
	s.done.Add(2)
	go func() {
		defer s.done.Done()
		w.Run(ctx, func() { s.Bump() })
	}()
	go func() {
		defer s.done.Done()
		s.hs.Serve(l)
	}()
	return s, nil
}

// Close stops the server and its watch.
func (s *Server) Close() {
	s.stop()
	s.hs.Close()
	s.done.Wait()
}

// Generation is the current generation.
func (s *Server) Generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// Bump moves the generation by one and answers waiting long polls.
func (s *Server) Bump() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	close(s.changed)
	s.changed = make(chan struct{})
	return s.gen
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/verify":
		s.verify(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/v1/generation":
		reply(w, http.StatusOK, map[string]any{"generation": s.Generation()})
	case r.Method == http.MethodGet && r.URL.Path == "/v1/changes":
		s.changes(w, r)
	default:
		reply(w, http.StatusNotFound, map[string]string{"code": "not-found", "message": "no such path"})
	}
}

func (s *Server) verify(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<10))
	var req struct {
		Token string `json:"token"`
	}
	if err != nil || json.Unmarshal(body, &req) != nil || req.Token == "" {
		reply(w, http.StatusBadRequest, map[string]string{"code": "bad-request", "message": `want {"token": "<jwt>"}`})
		return
	}
	gen := s.Generation()
	raw := []byte(req.Token)
	t, err := token.Parse(raw)
	reason := token.Malformed
	if err == nil {
		err = token.VerifyWith(raw, s.keys)
		switch {
		case errors.Is(err, token.ErrKeyUnavailable),
			errors.Is(err, token.ErrUnknownKey) && (t.Kid == token.PoolKeyName || t.Kid == ""):
			reply(w, http.StatusServiceUnavailable, map[string]string{"code": "key-unavailable", "message": "cannot use the key of kid " + strconv.Quote(t.Kid)})
			return
		case err != nil:
			reason = token.ReasonOf(err)
		case t.ExpiresWithin(time.Now(), 0):
			reason = token.Expired
		default:
			reason = token.Valid
		}
	}
	reply(w, http.StatusOK, map[string]any{"reason": reason, "generation": gen})
}

func (s *Server) changes(w http.ResponseWriter, r *http.Request) {
	after, err := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
	if err != nil {
		reply(w, http.StatusBadRequest, map[string]string{"code": "bad-request", "message": "want ?after=N"})
		return
	}
	s.mu.Lock()
	gen, ch := s.gen, s.changed
	s.mu.Unlock()
	if gen == after {
		t := time.NewTimer(PollTimeout)
		defer t.Stop()
		select {
		case <-ch:
		case <-t.C:
		case <-r.Context().Done():
		}
	}
	reply(w, http.StatusOK, map[string]any{"generation": s.Generation()})
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
