package verifyd

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
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/token"
)

// Defaults of [Options] and limits of the server.
const (
	DefaultPasswordDir = "/etc/condor/passwords.d"
	DefaultRate        = 50.0
	DefaultBurst       = 100

	// PollTimeout is how long GET /v1/changes waits for a change before it
	// answers with the current generation.
	PollTimeout = 30 * time.Second

	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = PollTimeout + 10*time.Second
	idleTimeout       = 90 * time.Second
	maxHeaderBytes    = 8 << 10
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
	// exists and answers, else /etc/condor/passwords.d.
	PasswordDir string
	// PoolKey is SEC_TOKEN_POOL_SIGNING_KEY_FILE. Default: what
	// condor_config_val answers (only when PasswordDir was defaulted too),
	// else <PasswordDir>/POOL.
	PoolKey string
	// Socket is where Run listens; default DefaultSocket. Ignored when
	// systemd passes a listener (socket activation). New does not use it.
	Socket string
	// KeyOwner is the uid that must own key files. 0 means the process's
	// effective uid (which is root, 0, when running as root); -1 turns the
	// owner check off.
	KeyOwner int
	// Rate is how many requests per second each peer uid may make after
	// its first Burst (defaults 50 and 100).
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
	watchErr map[string]string // watch goroutine only

	served  atomic.Bool
	waiting atomic.Int64 // long polls waiting for a change

	connMu     sync.Mutex
	conns      map[uint32]int
	allConns   int
	connLogged time.Time // last "connection limit" log line
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
			dir = DefaultPasswordDir
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
		rate = DefaultRate
	}
	if burst == 0 {
		burst = DefaultBurst
	}
	if rate < 0 || burst < 0 || rate != rate {
		return nil, fmt.Errorf("verifyd: rate %v and burst %d must be positive", rate, burst)
	}
	s := &Server{
		dir: filepath.Clean(dir), pool: filepath.Clean(pool), owner: owner,
		log:               log,
		limit:             newLimiter(rate, burst),
		readHeaderTimeout: readHeaderTimeout,
		pollTimeout:       PollTimeout,
		keys:              map[string][]byte{},
		changed:           make(chan struct{}),
		refused:           map[string]string{},
		watchErr:          map[string]string{},
		conns:             map[uint32]int{},
	}
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
	defer s.wipe()

	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		s.watch(ctx)
	}()
	defer func() { cancel(); <-watchDone }()

	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      max(writeTimeout, s.pollTimeout+10*time.Second),
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		// Request contexts end with ctx, so long polls answer at shutdown.
		BaseContext: func(net.Listener) context.Context { return ctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok {
				return context.WithValue(ctx, peerKey{}, pc.uid)
			}
			return ctx
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(&peerListener{Listener: l, s: s}) }()
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

type peerKey struct{}

// peerUID is the uid of the process at the other end of the request's
// connection; ok is false when it is not known (not a Unix socket).
func peerUID(ctx context.Context) (uint32, bool) {
	uid, ok := ctx.Value(peerKey{}).(uint32)
	return uid, ok
}

// unknownUID is the rate-limit bucket of peers whose uid is unknown.
const unknownUID = ^uint32(0)

// peerListener reads SO_PEERCRED once per connection and enforces the
// connection limits.
type peerListener struct {
	net.Listener
	s *Server
}

type peerConn struct {
	net.Conn
	uid  uint32
	once sync.Once
	s    *Server
}

func (c *peerConn) Close() error {
	c.once.Do(func() { c.s.releaseConn(c.uid) })
	return c.Conn.Close()
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid := unknownUID
		if uc, ok := c.(*net.UnixConn); ok {
			cred, err := peerCred(uc)
			if err != nil {
				l.s.log.Warn("cannot read the peer's credentials; closing the connection", "error", err)
				c.Close()
				continue
			}
			uid = cred.Uid
		}
		if !l.s.takeConn(uid) {
			go refuseConn(c)
			continue
		}
		return &peerConn{Conn: c, uid: uid, s: l.s}, nil
	}
}

func peerCred(uc *net.UnixConn) (*unix.Ucred, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

func (s *Server) takeConn(uid uint32) bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.allConns >= maxConns || s.conns[uid] >= maxConnsPerUID {
		if now := time.Now(); now.Sub(s.connLogged) >= logEvery {
			s.connLogged = now
			s.log.Warn("connection limit reached; refusing connections", "peer_uid", uid,
				"uid_conns", s.conns[uid], "uid_limit", maxConnsPerUID, "conns", s.allConns, "limit", maxConns)
		}
		return false
	}
	s.allConns++
	s.conns[uid]++
	return true
}

func (s *Server) releaseConn(uid uint32) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	s.allConns--
	if s.conns[uid]--; s.conns[uid] <= 0 {
		delete(s.conns, uid)
	}
}

// refuseConn answers a connection over the limits with a 429 and closes it.
func refuseConn(c net.Conn) {
	defer c.Close()
	body := `{"code":"` + CodeTooManyConns + `","message":"too many connections from this uid"}`
	c.SetDeadline(time.Now().Add(time.Second))
	io.WriteString(c, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body)
}

// ServeHTTP routes a request. Every request, even a bad one, costs the
// peer one token of its rate.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	uid, known := peerUID(r.Context())
	if !known {
		uid = unknownUID
	}
	if ok, retry, report := s.limit.allow(uid, time.Now()); !ok {
		if report > 0 {
			s.log.Warn("rate limit reached; refusing requests", "peer_uid", uid, "refused", report,
				"rate", s.limit.rate, "burst", s.limit.burst)
		}
		h.Set("Retry-After", strconv.Itoa(int(max(1, (retry+time.Second-1)/time.Second))))
		writeError(w, http.StatusTooManyRequests, CodeRateLimited, "too many requests from this uid; retry later")
		return
	}
	var method string
	var handle func(http.ResponseWriter, *http.Request, uint32)
	switch r.URL.Path {
	case PathVerify:
		method, handle = http.MethodPost, s.handleVerify
	case PathGeneration:
		method, handle = http.MethodGet, s.handleGeneration
	case PathChanges:
		method, handle = http.MethodGet, s.handleChanges
	default:
		writeError(w, http.StatusNotFound, CodeNotFound, "no such path; this server speaks "+PathVerify+", "+PathGeneration+", "+PathChanges)
		return
	}
	if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
		h.Set("Allow", method)
		writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, r.URL.Path+" takes "+method)
		return
	}
	handle(w, r, uid)
}

func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request, uid uint32) {
	body, err := readBody(w, r)
	defer clear(body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("request body is larger than %d bytes", MaxRequestBytes))
			return
		}
		writeError(w, http.StatusBadRequest, CodeBadRequest, "cannot read the request body")
		return
	}
	raw, ok := tokenField(body)
	defer clear(raw)
	if !ok {
		writeError(w, http.StatusBadRequest, CodeBadRequest, `want a JSON object {"token": "<jwt>"}`)
		return
	}
	reason, t, gen, unusable := s.check(raw, time.Now())
	outcome := slog.String("reason", string(reason))
	if unusable != "" {
		outcome = slog.String("error", CodeKeyUnavailable)
	}
	if t != nil {
		s.log.Debug("verify", "peer_uid", uid, "kid", t.Kid, "iss", t.Iss, "sub", t.Sub, outcome, "generation", gen)
	} else {
		s.log.Debug("verify", "peer_uid", uid, outcome, "generation", gen)
	}
	if unusable != "" {
		// Not a verdict: agents keep the token and ask again later.
		writeError(w, http.StatusServiceUnavailable, CodeKeyUnavailable, unusable)
		return
	}
	writeJSON(w, http.StatusOK, VerifyResponse{Reason: reason, Generation: gen})
}

// readBody reads at most MaxRequestBytes into one buffer, so the token is
// not left behind in the discarded buffers of a growing read.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	lr := http.MaxBytesReader(w, r.Body, MaxRequestBytes)
	size := MaxRequestBytes
	if r.ContentLength >= 0 && r.ContentLength < MaxRequestBytes {
		size = int(r.ContentLength)
	}
	buf := make([]byte, size+1)
	n, err := io.ReadFull(lr, buf)
	switch {
	case err == nil:
		// Filled: more may follow, which is an error if it is over the
		// limit (MaxBytesError) or if it disagrees with ContentLength.
		var one [1]byte
		m, err2 := lr.Read(one[:])
		if m > 0 {
			err2 = &http.MaxBytesError{Limit: MaxRequestBytes}
		}
		if err2 != io.EOF {
			return buf, err2
		}
		return buf[:n], nil
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return buf[:n], nil
	default:
		return buf, err
	}
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

func (s *Server) handleGeneration(w http.ResponseWriter, r *http.Request, uid uint32) {
	writeJSON(w, http.StatusOK, GenerationResponse{Generation: s.Generation()})
}

// handleChanges is the long poll: it answers as soon as the generation is
// not after, or when the poll times out, the client goes away or the server
// stops, always with the current generation.
func (s *Server) handleChanges(w http.ResponseWriter, r *http.Request, uid uint32) {
	q := r.URL.Query().Get("after")
	after, err := strconv.ParseUint(q, 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "want ?after=N, N the generation the client knows")
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
	writeJSON(w, http.StatusOK, GenerationResponse{Generation: s.Generation()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"code":"` + CodeInternal + `","message":"cannot encode the response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorResponse{Code: code, Message: msg})
}
