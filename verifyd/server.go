package verifyd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/internal/localapi"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// Limits of the server; its defaults are in package config
// (config.DefaultPasswordDir, DefaultVerifydRate, DefaultVerifydBurst).
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = verifyapi.PollTimeout + 10*time.Second
	shutdownTimeout   = 3 * time.Second

	// Connection limits: a uid is one agent or a few; hundreds of agents
	// hold one long poll each.
	maxConnsPerUID = 64
	maxConns       = 4096
)

// Options configures a [Server]. The zero value means every default.
type Options struct {
	// PasswordDir is SEC_PASSWORD_DIRECTORY. Default: what
	// `condor_config_val SEC_PASSWORD_DIRECTORY` answers when that command
	// exists and answers, else config.DefaultPasswordDir.
	PasswordDir string
	// PoolKey is SEC_TOKEN_POOL_SIGNING_KEY_FILE. Default: what
	// condor_config_val answers (only when PasswordDir was defaulted too),
	// else <PasswordDir>/POOL.
	PoolKey string
	// KeyOwner is the uid that must own key files. 0 means the process's
	// effective uid (which is root, 0, when running as root); -1 turns the
	// owner check off.
	KeyOwner int
	// Rate is how many requests per second each peer uid may make after
	// its first Burst (defaults config.DefaultVerifydRate and
	// DefaultVerifydBurst).
	Rate  float64
	Burst int
	// Logger receives the log; default slog.Default(). It never receives
	// token or key bytes.
	Logger *slog.Logger
}

// Server holds the pool's derived signing keys and answers agents.
type Server struct {
	dir, pool string
	owner     int
	log       *slog.Logger
	limit     *limiter
	mux       localapi.Mux

	// Tunables, changed only by tests before Serve.
	readHeaderTimeout time.Duration
	pollTimeout       time.Duration

	mu       sync.RWMutex
	keys     map[string][]byte // kid -> derived key; replaced (and zeroed) as a whole
	unusable map[string]string // kid -> why its key cannot be used (keySet.unusable)
	listErr  string            // keySet.listErr
	gen      atomic.Uint64     // written under mu
	changed  chan struct{}     // closed and replaced when gen moves

	reloadMu sync.Mutex
	refused  map[string]string // path -> problem last logged; under reloadMu

	served  atomic.Bool
	waiting atomic.Int64 // long polls waiting for a change
}

// configVal reads an HTCondor path setting; tests replace it.
var configVal = condor.PathSetting

// New checks the options and loads the keys once. A key file that cannot be
// used (wrong owner or mode, unreadable) is logged with how to fix it and
// left out (tokens of its kid get 503 key-unavailable); a missing password
// directory is an error. The keys are watched only while [Server.Serve]
// runs.
func New(o Options) (*Server, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	dir, pool := o.PasswordDir, o.PoolKey
	if dir == "" {
		if dir = configVal("SEC_PASSWORD_DIRECTORY"); dir == "" {
			dir = config.DefaultPasswordDir
		}
		if pool == "" {
			pool = configVal("SEC_TOKEN_POOL_SIGNING_KEY_FILE")
		}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("verifyd: password directory: %w", err)
	}
	if pool == "" {
		pool = filepath.Join(dir, token.PoolKeyName)
	}
	if pool, err = filepath.Abs(pool); err != nil {
		return nil, fmt.Errorf("verifyd: pool key file: %w", err)
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("verifyd: the password directory %s does not exist: set SEC_PASSWORD_DIRECTORY in the HTCondor configuration, or password_dir in the verifyd configuration (--password-dir), to the directory holding the pool's signing keys", dir)
	case err != nil:
		return nil, fmt.Errorf("verifyd: cannot use the password directory %s: %v (verifyd must run as root or as the user owning the keys)", dir, pathErr(err))
	case !fi.IsDir():
		return nil, fmt.Errorf("verifyd: the password directory %s is not a directory", dir)
	}
	owner := o.KeyOwner
	switch {
	case owner == 0:
		owner = os.Geteuid()
	case owner < -1:
		return nil, fmt.Errorf("verifyd: key owner %d is not a uid (use -1 to skip the owner check)", owner)
	}
	rate, burst := o.Rate, o.Burst
	if rate == 0 {
		rate = config.DefaultVerifydRate
	}
	if burst == 0 {
		burst = config.DefaultVerifydBurst
	}
	if rate < 0 || burst < 0 || rate != rate {
		return nil, fmt.Errorf("verifyd: rate %v and burst %d must be positive", rate, burst)
	}
	s := &Server{
		dir: filepath.Clean(dir), pool: filepath.Clean(pool), owner: owner,
		log:               log,
		limit:             newLimiter(rate, burst),
		readHeaderTimeout: readHeaderTimeout,
		pollTimeout:       verifyapi.PollTimeout,
		keys:              map[string][]byte{},
		changed:           make(chan struct{}),
		refused:           map[string]string{},
	}
	s.mux.Handle(http.MethodPost, verifyapi.PathVerify, s.handleVerify)
	s.mux.Handle(http.MethodGet, verifyapi.PathGeneration, s.handleGeneration)
	s.mux.Handle(http.MethodGet, verifyapi.PathChanges, s.handleChanges)
	s.reloadMu.Lock()
	ks, err := s.readKeys()
	s.reloadMu.Unlock()
	if err != nil {
		zeroKeys(ks.keys)
		return nil, fmt.Errorf("verifyd: cannot list the password directory %s: %v", dir, pathErr(err))
	}
	s.keys, s.unusable, s.listErr = ks.keys, ks.unusable, ks.listErr
	s.gen.Store(1)
	s.log.Info("signing keys loaded", "password_dir", s.dir, "pool_key", s.pool,
		"key_owner", owner, logKeys(ks.keys), "generation", 1)
	if len(ks.keys) == 0 {
		s.log.Warn("no usable signing key yet: every verify request gets 503 key-unavailable until one appears", "password_dir", s.dir, "pool_key", s.pool)
	}
	return s, nil
}

// Generation is the current key generation: 1 after New, one more at every
// change of the set of derived keys.
func (s *Server) Generation() uint64 { return s.gen.Load() }

// Serve answers requests on l and watches the key files until ctx is done;
// then it stops (waiting briefly for requests in flight), zeroes the keys and
// returns nil. It returns an error if l fails. Serve may be called once.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("verifyd: Serve called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer s.Wipe()

	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		s.watch(ctx)
	}()
	defer func() { cancel(); <-watchDone }()

	// Request contexts end with ctx, so long polls answer at shutdown.
	hs := localapi.NewServer(ctx, s, s.log)
	hs.ReadHeaderTimeout = s.readHeaderTimeout
	hs.ReadTimeout = readTimeout
	hs.WriteTimeout = max(writeTimeout, s.pollTimeout+10*time.Second)
	errc := make(chan error, 1)
	go func() {
		errc <- hs.Serve(localapi.NewListener(l, localapi.Limits{PerUID: maxConnsPerUID, Total: maxConns}, s.log))
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, scancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer scancel()
	if hs.Shutdown(sctx) != nil {
		hs.Close()
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// unknownUID is the rate-limit bucket of a request whose peer is not known
// (not served through Serve).
const unknownUID = ^uint32(0)

// ServeHTTP answers a request. Every request, even a bad one, costs the
// peer one token of its rate.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	uid := unknownUID
	if p, ok := localapi.PeerOf(r.Context()); ok {
		uid = p.UID
	}
	if ok, retry, report := s.limit.allow(uid, time.Now()); !ok {
		if report > 0 {
			s.log.Warn("rate limit reached; refusing requests", "peer_uid", uid, "refused", report,
				"rate", s.limit.rate, "burst", s.limit.burst)
		}
		w.Header().Set("Retry-After", strconv.Itoa(int(max(1, (retry+time.Second-1)/time.Second))))
		localapi.WriteError(w, http.StatusTooManyRequests, verifyapi.CodeRateLimited, "too many requests from this uid; retry later")
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	p, _ := localapi.PeerOf(r.Context())
	uid := p.UID
	body, e := localapi.ReadBody(w, r, verifyapi.MaxRequestBytes)
	defer clear(body)
	if e != nil {
		localapi.WriteError(w, e.Status, e.Code, e.Message)
		return
	}
	raw, ok := tokenField(body)
	defer clear(raw)
	if !ok {
		localapi.WriteError(w, http.StatusBadRequest, verifyapi.CodeBadRequest, `want a JSON object {"token": "<jwt>"}`)
		return
	}
	reason, t, gen, unusable := s.check(raw, time.Now())
	outcome := slog.String("reason", string(reason))
	if unusable != "" {
		outcome = slog.String("error", verifyapi.CodeKeyUnavailable)
	}
	if t != nil {
		s.log.Debug("verify", "peer_uid", uid, "kid", t.Kid, "iss", t.Iss, "sub", t.Sub, outcome, "generation", gen)
	} else {
		s.log.Debug("verify", "peer_uid", uid, outcome, "generation", gen)
	}
	if unusable != "" {
		// Not a verdict: agents keep the token and ask again later.
		localapi.WriteError(w, http.StatusServiceUnavailable, verifyapi.CodeKeyUnavailable, unusable)
		return
	}
	localapi.WriteJSON(w, http.StatusOK, verifyapi.VerifyResponse{Reason: reason, Generation: gen})
}

// tokenField returns the bytes of the "token" string of a JSON object. A
// token needs no JSON escapes, so the usual case copies the bytes once and
// never makes a string the server cannot zero.
func tokenField(body []byte) ([]byte, bool) {
	var req struct {
		Token json.RawMessage `json:"token"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, false
	}
	v := req.Token
	defer clear(v)
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return nil, false
	}
	if inner := v[1 : len(v)-1]; bytes.IndexByte(inner, '\\') < 0 {
		if len(inner) == 0 {
			return nil, false
		}
		return append([]byte(nil), inner...), true
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil || s == "" {
		return nil, false
	}
	return []byte(s), true
}

// check gives the verdict on raw with the current keys, and the generation
// of those keys. Order: structure (malformed), kid (unknown-key), signature
// (rotated-key), then exp (expired, no margin: HTCondor servers allow no
// leeway). The signature comes before the time, so that claims are trusted
// only once they are authentic: a token whose key was rotated is
// rotated-key even when it has expired too.
//
// When verifyd cannot judge raw, unusable says why and there is no verdict:
// it holds no key at all (whatever raw is), or the key file of the token's
// kid is there but cannot be used, or the kid is POOL and there is no
// usable pool key file. A named kid with no key file is unknown-key.
func (s *Server) check(raw []byte, now time.Time) (r token.Reason, t *token.Token, gen uint64, unusable string) {
	t, err := token.Parse(raw)
	s.mu.RLock()
	gen = s.gen.Load()
	if len(s.keys) == 0 {
		s.mu.RUnlock()
		return "", t, gen, fmt.Sprintf("verifyd holds no usable signing key (password directory %s, pool key file %s), so it cannot judge any token; its log says why", s.dir, s.pool)
	}
	if err != nil {
		s.mu.RUnlock()
		return token.Malformed, nil, gen, ""
	}
	key, unusable := s.keyFor(t.Kid)
	if key == nil {
		s.mu.RUnlock()
		if unusable != "" {
			return "", t, gen, unusable
		}
		return token.UnknownKey, t, gen, ""
	}
	err = token.Verify(raw, key) // hmac.Equal: constant time
	s.mu.RUnlock()
	if err != nil {
		return token.ReasonOf(err), t, gen, ""
	}
	if t.ExpiresWithin(now, 0) {
		return token.Expired, t, gen, ""
	}
	return token.Valid, t, gen, ""
}

func (s *Server) handleGeneration(w http.ResponseWriter, r *http.Request) {
	localapi.WriteJSON(w, http.StatusOK, verifyapi.GenerationResponse{Generation: s.Generation()})
}

// handleChanges is the long poll: it answers as soon as the generation is
// not after, or when the poll times out, the client goes away or the server
// stops, always with the current generation.
func (s *Server) handleChanges(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query().Get("after")
	after, err := strconv.ParseUint(q, 10, 64)
	if err != nil {
		localapi.WriteError(w, http.StatusBadRequest, verifyapi.CodeBadRequest, "want ?after=N, N the generation the client knows")
		return
	}
	s.mu.RLock()
	gen, ch := s.gen.Load(), s.changed
	s.mu.RUnlock()
	if gen == after {
		t := time.NewTimer(s.pollTimeout)
		defer t.Stop()
		s.waiting.Add(1)
		defer s.waiting.Add(-1)
		select {
		case <-ch:
		case <-t.C:
		case <-r.Context().Done():
		}
	}
	localapi.WriteJSON(w, http.StatusOK, verifyapi.GenerationResponse{Generation: s.Generation()})
}
