package verifyd

import (
	"cmp"
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
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/internal/keyset"
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
	// RefetchRate is how many refetch slots per second verifyd hands out
	// to the host's agents after a key change (POST /v1/refetch-slot),
	// from config.MinRefetchRate to MaxRefetchRate; 0 means
	// config.DefaultRefetchRate.
	RefetchRate float64
	// TrustDomain is the trust domain verifyd speaks for: the iss of the
	// tokens its pool's servers sign. It gives no verdict on a token of
	// another iss (cannot_tell "other-issuer"): the pool's keys say nothing
	// about it. Default: HTCondor's TRUST_DOMAIN (condor_config_val); when
	// that is unset too, verifyd judges every token whatever its iss, and
	// logs a warning saying so.
	TrustDomain string
	// TokenMaxAge is the pool's SEC_TOKEN_MAX_AGE: the servers refuse a
	// token whose iat is older, so verifyd answers expired for it. 0 means
	// HTCondor's setting (condor_config_val); negative means none.
	TokenMaxAge time.Duration
	// Logger receives the log; default slog.Default(). It never receives
	// token or key bytes.
	Logger *slog.Logger
}

// Server holds the pool's derived signing keys and answers agents.
type Server struct {
	dir, pool   string
	owner       int
	trustDomain string        // "" = judges every iss
	maxAge      time.Duration // 0 = none
	log         *slog.Logger
	limit       *limiter
	mux         localapi.Mux

	// Tunables, changed only by tests before Serve.
	readHeaderTimeout time.Duration
	pollTimeout       time.Duration

	mu      sync.RWMutex
	set     *keyset.Set   // the keys; replaced (and wiped) as a whole
	gen     atomic.Uint64 // written under mu
	changed chan struct{} // closed and replaced when gen moves

	slotMu sync.Mutex
	slots  *Schedule // under slotMu

	logMu   sync.Mutex
	refused map[string]string // path -> problem last logged; under logMu

	served  atomic.Bool
	waiting atomic.Int64 // long polls waiting for a change
}

// HTCondor's settings; tests replace them.
var (
	configVal         = condor.PathSetting
	condorTrustDomain = condor.TrustDomain
	condorMaxAge      = condor.TokenMaxAge
)

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
	refetch := cmp.Or(o.RefetchRate, config.DefaultRefetchRate)
	if !(refetch >= config.MinRefetchRate && refetch <= config.MaxRefetchRate) {
		return nil, fmt.Errorf("verifyd: refetch rate %v: want a number of refetches per second for the whole host, from %v to %v", refetch, config.MinRefetchRate, config.MaxRefetchRate)
	}
	td, tdFrom := o.TrustDomain, "configuration"
	if strings.IndexFunc(td, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return nil, fmt.Errorf("verifyd: trust domain %q: want an issuer name, as in a token's iss (no spaces)", td)
	}
	if td == "" {
		td, tdFrom = condorTrustDomain(), "HTCondor's TRUST_DOMAIN"
	}
	maxAge := o.TokenMaxAge
	if maxAge == 0 {
		var err error
		if maxAge, err = condorMaxAge(); err != nil {
			log.Warn("ignoring HTCondor's SEC_TOKEN_MAX_AGE: no max age is checked", "error", err)
		}
	}
	maxAge = max(maxAge, 0).Truncate(time.Second)
	s := &Server{
		dir: filepath.Clean(dir), pool: filepath.Clean(pool), owner: owner,
		trustDomain:       td,
		maxAge:            maxAge,
		log:               log,
		limit:             newLimiter(rate, burst),
		readHeaderTimeout: readHeaderTimeout,
		pollTimeout:       verifyapi.PollTimeout,
		changed:           make(chan struct{}),
		slots:             NewSchedule(refetch),
		refused:           map[string]string{},
	}
	s.mux.Handle(http.MethodPost, verifyapi.PathVerify, s.handleVerify)
	s.mux.Handle(http.MethodGet, verifyapi.PathGeneration, s.handleGeneration)
	s.mux.Handle(http.MethodGet, verifyapi.PathChanges, s.handleChanges)
	s.mux.Handle(http.MethodPost, verifyapi.PathRefetchSlot, s.handleRefetchSlot)
	s.mux.Handle(http.MethodPost, verifyapi.PathVerifyBatch, s.handleVerifyBatch)
	ks, err := s.readKeys()
	if err != nil {
		ks.Wipe()
		return nil, fmt.Errorf("verifyd: cannot list the password directory %s: %v", dir, pathErr(err))
	}
	s.logProblems(ks)
	s.set = ks
	s.gen.Store(1)
	s.log.Info("signing keys loaded", "password_dir", s.dir, "pool_key", s.pool,
		"key_owner", owner, "keys", ks.Names(), "generation", 1)
	if ks.Len() == 0 {
		s.log.Warn("no usable signing key yet: every verify request gets 503 key-unavailable until one appears", "password_dir", s.dir, "pool_key", s.pool)
	}
	if td == "" {
		s.log.Warn("no trust domain known: judging every token whatever its issuer; set --trust-domain, trust_domain in verifyd's configuration, or TRUST_DOMAIN in HTCondor's")
	} else {
		s.log.Info("speaking for one trust domain: tokens of other issuers get no verdict", "trust_domain", td, "from", tdFrom)
	}
	if maxAge > 0 {
		s.log.Info("tokens older than SEC_TOKEN_MAX_AGE are expired", "token_max_age", maxAge)
	}
	return s, nil
}

// TrustDomain is the trust domain verifyd speaks for; "" when it knows none
// and judges every token.
func (s *Server) TrustDomain() string { return s.trustDomain }

// TokenMaxAge is the pool's SEC_TOKEN_MAX_AGE; 0 when it has none.
func (s *Server) TokenMaxAge() time.Duration { return s.maxAge }

// state is what GET /v1/generation and /v1/changes answer.
func (s *Server) state() verifyapi.GenerationResponse {
	return verifyapi.GenerationResponse{
		Generation:  s.Generation(),
		TrustDomain: s.trustDomain,
		TokenMaxAge: int64(s.maxAge / time.Second),
	}
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
	// localapi.Serve reads and writes the HTTP itself, with buffers it
	// zeroes: a token leaves nothing behind once it is answered.
	return localapi.Serve(ctx, localapi.NewListener(l, localapi.Limits{PerUID: maxConnsPerUID, Total: maxConns}, s.log), s, localapi.ServeOptions{
		ReadHeaderTimeout: s.readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      max(writeTimeout, s.pollTimeout+10*time.Second),
		MaxBodyBytes:      verifyapi.MaxBatchBytes, // each handler has its own limit
		ShutdownTimeout:   shutdownTimeout,
		Log:               s.log,
	})
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
	v := s.check(raw, time.Now())
	s.logVerdict(uid, v)
	if v.unusable != "" {
		// Not a verdict: agents keep the token and ask again later.
		localapi.WriteError(w, http.StatusServiceUnavailable, verifyapi.CodeKeyUnavailable, v.unusable)
		return
	}
	st := s.state()
	localapi.WriteJSON(w, http.StatusOK, verifyapi.VerifyResponse{
		Reason: v.reason, Generation: v.gen, CannotTell: v.cannotTell,
		TrustDomain: st.TrustDomain, TokenMaxAge: st.TokenMaxAge,
	})
}

// handleVerifyBatch judges several tokens in one request, each as
// handleVerify would, under one hold of the keys: one generation for all.
// It costs the peer one request of its rate, as a single verify does: the
// work is the request's, a token's HMAC is a microsecond.
func (s *Server) handleVerifyBatch(w http.ResponseWriter, r *http.Request) {
	p, _ := localapi.PeerOf(r.Context())
	body, e := localapi.ReadBody(w, r, verifyapi.MaxBatchBytes)
	defer clear(body)
	if e != nil {
		localapi.WriteError(w, e.Status, e.Code, e.Message)
		return
	}
	raws, ok := tokensField(body)
	defer func() {
		for _, raw := range raws {
			clear(raw)
		}
	}()
	if !ok || len(raws) > verifyapi.MaxBatchTokens {
		localapi.WriteError(w, http.StatusBadRequest, verifyapi.CodeBadRequest,
			fmt.Sprintf(`want a JSON object {"tokens": ["<jwt>", ...]} of 1 to %d non-empty strings`, verifyapi.MaxBatchTokens))
		return
	}
	now := time.Now()
	resp := verifyapi.VerifyBatchResponse{Verdicts: make([]verifyapi.BatchVerdict, len(raws))}
	s.mu.RLock()
	resp.Generation = s.gen.Load()
	for i, raw := range raws {
		v := s.checkLocked(raw, now)
		s.logVerdict(p.UID, v)
		resp.Verdicts[i] = verifyapi.BatchVerdict{Reason: v.reason, CannotTell: v.cannotTell, Unavailable: v.unusable}
	}
	s.mu.RUnlock()
	st := s.state()
	resp.TrustDomain, resp.TokenMaxAge = st.TrustDomain, st.TokenMaxAge
	localapi.WriteJSON(w, http.StatusOK, resp)
}

// logVerdict logs a verdict at debug level: never the token, only its
// claims that name it.
func (s *Server) logVerdict(uid uint32, v verdict) {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	outcome := slog.String("reason", string(v.reason))
	switch {
	case v.unusable != "":
		outcome = slog.String("error", verifyapi.CodeKeyUnavailable)
	case v.cannotTell != "":
		outcome = slog.String("cannot_tell", v.cannotTell)
	}
	if t := v.tok; t != nil {
		s.log.Debug("verify", "peer_uid", uid, "kid", t.Kid, "iss", t.Iss, "sub", t.Sub, outcome, "generation", v.gen)
	} else {
		s.log.Debug("verify", "peer_uid", uid, outcome, "generation", v.gen)
	}
}

// tokensField returns the strings of the "tokens" array of a JSON object,
// each in a buffer of its own that the caller zeroes (all of them, also
// when ok is false), as tokenField does one token. ok is false unless
// there is at least one token and none is empty.
func tokensField(body []byte) (raws [][]byte, ok bool) {
	var req struct {
		Tokens tokenArray `json:"tokens"`
	}
	err := json.Unmarshal(body, &req)
	raws = req.Tokens.bs
	if err != nil || req.Tokens.bad || len(raws) == 0 {
		return raws, false
	}
	return raws, true
}

// tokenArray decodes a JSON array of strings, each into a buffer of its
// own. Every buffer it made is in bs, even when it fails, so that all are
// zeroed.
type tokenArray struct {
	bs  [][]byte
	bad bool // given twice, an empty string, or something else than strings
}

func (a *tokenArray) UnmarshalJSON(data []byte) error {
	if a.bs != nil {
		a.bad = true
		return errors.New("the tokens are given twice")
	}
	a.bs = [][]byte{}
	// json has checked data: an array, of strings only if each element
	// starts with a quote.
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '[' {
		a.bad = true
		return errors.New("the tokens are not an array")
	}
	for i = skipSpace(data, i+1); i < len(data) && data[i] != ']'; i = skipSpace(data, i) {
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
		if data[i] != '"' {
			a.bad = true
			return errors.New("a token is not a string")
		}
		end := i + 1
		for data[end] != '"' {
			if data[end] == '\\' {
				end++
			}
			end++
		}
		b := unescape(data[i+1 : end])
		a.bs = append(a.bs, b)
		a.bad = a.bad || len(b) == 0
		i = end + 1
	}
	return nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// tokenField returns the bytes of the "token" string of a JSON object, in
// a buffer of their own that the caller zeroes: the only copy. (json hands
// tokenString.UnmarshalJSON a slice of body itself, and the JSON escapes a
// token never needs are decoded here, not into a string.)
func tokenField(body []byte) ([]byte, bool) {
	var req struct {
		Token tokenString `json:"token"`
	}
	err := json.Unmarshal(body, &req)
	if b := req.Token.b; err != nil || len(b) == 0 {
		clear(b)
		return nil, false
	}
	return req.Token.b, true
}

// tokenString decodes a JSON string into a buffer of its own.
type tokenString struct{ b []byte }

func (t *tokenString) UnmarshalJSON(data []byte) error {
	switch {
	case t.b != nil:
		return errors.New("the token is given twice")
	case len(data) < 2 || data[0] != '"':
		return errors.New("the token is not a string")
	}
	t.b = unescape(data[1 : len(data)-1])
	return nil
}

// unescape decodes the content of a JSON string that json has checked, as
// json would, into a buffer of len(s) bytes: never grown, so never copied.
func unescape(s []byte) []byte {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		switch c = s[i]; c {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r := hex4(s[i+1 : i+5])
			i += 4
			if utf16.IsSurrogate(r) {
				dec := utf8.RuneError
				if i+6 < len(s) && s[i+1] == '\\' && s[i+2] == 'u' {
					dec = utf16.DecodeRune(r, hex4(s[i+3:i+7]))
				}
				if dec != utf8.RuneError {
					i += 6
				}
				r = dec
			}
			out = utf8.AppendRune(out, r)
		default: // '"', '\\', '/'
			out = append(out, c)
		}
	}
	return out
}

// hex4 reads four hex digits that json has checked.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// verdict is what check found. Only with cannotTell and unusable both ""
// is reason a verdict.
type verdict struct {
	reason token.Reason
	tok    *token.Token // nil when malformed
	gen    uint64       // the key generation of the verdict
	// cannotTell: no verdict, the token is not of verifyd's trust domain
	// (verifyapi.CannotTellOtherIssuer).
	cannotTell string
	// unusable: no verdict, verifyd cannot use the key it needs; why.
	unusable string
}

// check gives the verdict on raw with the current keys, and the generation
// of those keys. Order: structure (malformed), issuer (no verdict on
// another trust domain's token), kid (unknown-key), signature
// (rotated-key), then time (expired: past exp, or past iat +
// SEC_TOKEN_MAX_AGE; no margin, as HTCondor servers allow no leeway). The
// signature comes before the time, so that claims are trusted only once
// they are authentic: a token whose key was rotated is rotated-key even
// when it has expired too.
//
// There is no verdict (unusable says why) when verifyd holds no key at all
// (whatever raw is), when the key file of the token's kid is there but
// cannot be used, and when the kid is POOL and there is no usable pool key
// file. A named kid with no key file is unknown-key.
func (s *Server) check(raw []byte, now time.Time) verdict {
	s.mu.RLock()
	defer s.mu.RUnlock() // a replaced key is wiped under the write lock
	return s.checkLocked(raw, now)
}

// checkLocked is check with s.mu held (read).
func (s *Server) checkLocked(raw []byte, now time.Time) verdict {
	t, err := token.Parse(raw)
	v := verdict{gen: s.gen.Load()}
	switch {
	case s.set.Len() == 0:
		v.tok = t
		v.unusable = fmt.Sprintf("verifyd holds no usable signing key (password directory %s, pool key file %s), so it cannot judge any token; its log says why", s.dir, s.pool)
		return v
	case err != nil:
		v.reason = token.Malformed
		return v
	}
	v.tok = t
	if s.trustDomain != "" && t.Iss != s.trustDomain {
		v.cannotTell = verifyapi.CannotTellOtherIssuer
		return v
	}
	key, unusable := s.set.Key(t.Kid)
	switch {
	case key == nil && unusable != "":
		kid := cmp.Or(t.Kid, token.PoolKeyName)
		v.unusable = fmt.Sprintf("verifyd cannot use the key of kid %q, so it cannot judge this token: %s", kid, unusable)
	case key == nil:
		v.reason = token.UnknownKey
	default:
		if err := token.Verify(raw, key); err != nil { // hmac.Equal: constant time
			v.reason = token.ReasonOf(err)
		} else if e := t.Effective(s.maxAge); e.ExpiresWithin(now, 0) { // iat + SEC_TOKEN_MAX_AGE too
			v.reason = token.Expired
		}
	}
	return v
}

func (s *Server) handleGeneration(w http.ResponseWriter, r *http.Request) {
	localapi.WriteJSON(w, http.StatusOK, s.state())
}

// handleChanges is the long poll: it answers as soon as the generation is
// not after, or when the poll times out, the client goes away or the server
// stops, always with the current state.
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
	localapi.WriteJSON(w, http.StatusOK, s.state())
}
