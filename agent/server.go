package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/tokend/tokend/agent/fetch"
	"github.com/tokend/tokend/agent/validate"
	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/localapi"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/store"
)

// server builds the control API. Every request is refused unless the peer
// is the agent's own user.
func (a *Agent) server(ctx context.Context) *http.Server {
	mux := &localapi.Mux{}
	mux.Handle(http.MethodGet, api.PathStatus, a.handleStatus)
	mux.Handle(http.MethodGet, api.PathTokens, a.handleTokens)
	mux.Handle(http.MethodDelete, api.PathTokens+"/{name}", a.handleRemove)
	mux.Handle(http.MethodPost, api.PathFetch, a.handleFetch)
	mux.Handle(http.MethodPost, api.PathWipe, a.handleWipe)
	mux.Handle(http.MethodPost, api.PathSession, a.handleSession)
	owner := os.Getuid()
	return localapi.NewServer(ctx, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := localapi.PeerOf(r.Context())
		if !ok || int(p.UID) != owner {
			a.log.Warn("refused a control connection from another user", "peer_uid", p.UID, "peer_pid", p.PID, "peer_known", ok)
			writeError(w, api.Errorf(api.CodeForbidden, "this agent belongs to uid %d", owner))
			return
		}
		mux.ServeHTTP(w, r)
	}), a.log)
}

// serve answers the control API on ln until the returned server is closed.
func (a *Agent) serve(ctx context.Context, ln net.Listener) *http.Server {
	srv := a.server(ctx)
	go srv.Serve(localapi.NewListener(ln, localapi.Limits{}, a.log))
	return srv
}

func writeJSON(w http.ResponseWriter, v any) { localapi.WriteJSON(w, http.StatusOK, v) }

func writeError(w http.ResponseWriter, e *api.Error) {
	localapi.WriteError(w, e.Status(), e.Code, e.Message)
}

// decode reads a JSON body into v, strictly and at most
// api.MaxRequestBody bytes; on an error it has answered.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if e := localapi.Decode(w, r, api.MaxRequestBody, v); e != nil {
		writeError(w, &api.Error{Code: e.Code, Message: e.Message})
		return false
	}
	return true
}

func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, a.Status())
}

// mounted reports whether the agent's mount is up: from the mount's own
// state, not by reading /proc at every status request.
func (a *Agent) mounted() bool {
	if a.fs == nil {
		return false
	}
	select {
	case <-a.fs.Gone():
		return false
	default:
		return true
	}
}

// openMode says how the mount opens files (api.OpenMode*); "" before it is
// mounted.
func (a *Agent) openMode() string {
	switch {
	case a.fs == nil:
		return ""
	case a.fs.OpenHandles():
		return api.OpenModeHandles
	}
	return api.OpenModeKernel
}

// Status reports the agent's state: each pool's, the default pool's also
// at the top (for scripts of earlier releases).
func (a *Agent) Status() api.Status {
	mem := secmem.ReadStats()
	st := api.Status{
		Version:           a.version,
		PID:               os.Getpid(),
		Dir:               a.dir,
		Mounted:           a.mounted(),
		Socket:            a.socket,
		Started:           a.started,
		Sessions:          a.sessions.Count(),
		MemoryLocked:      MemoryLocked(),
		OpenMode:          a.openMode(),
		MemoryLockedBytes: mem.Locked,
		MemoryLockLimit:   max(mem.Limit, 0), // unlimited: no limit to show
	}
	infos := a.store.Infos()
	for _, in := range infos {
		switch {
		case !in.Hidden:
			st.Tokens++
		case in.Remembered:
			st.Remembered++
			st.Hidden++
		default:
			st.Hidden++
		}
	}
	for _, p := range a.pools {
		st.Pools = append(st.Pools, a.poolStatus(p, infos))
	}
	st.Session, st.Validation = st.Pools[0].Session, st.Pools[0].Validation
	return st
}

// poolStatus reports one pool's state.
func (a *Agent) poolStatus(p *pool, infos []store.Info) api.PoolStatus {
	ps := api.PoolStatus{
		Name:        p.cfg.Name,
		ClaimsOther: a.router.ClaimsOther(p.cfg.Name),
		TokenMaxAge: p.maxAge.Load() / int64(time.Second),
	}
	ps.TrustDomain, ps.TrustFrom = a.router.TrustDomain(p.cfg.Name)
	ps.Validation.KeyCheck = keyCheckNames(p.checker.Keys)
	ps.Validation.Verifyd = p.cfg.Validate.Verifyd
	if p.verifyd != nil {
		var vs verifydState
		ps.Validation.VerifydUp, vs = p.verifyd.state()
		ps.Validation.Generation = vs.Generation
	}
	// The session token's state is derived from the policy's memory and
	// what the store shows now, as the keeper sees it.
	v := a.sessionView(p, infos)
	shown := v.Shown
	var exp int64
	if shown {
		exp = v.Exp
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.lastPass.IsZero() {
		t := a.lastPass
		ps.Validation.LastCheck = &t
	}
	s := p.session
	ps.Session = api.Session{
		Name:      p.cfg.SessionToken,
		Method:    p.cfg.Fetch.Method,
		State:     s.status(shown),
		Failures:  s.failures,
		LastError: s.lastErr,
		RequestID: s.requestID,
	}
	if exp != 0 {
		ps.Session.Exp = &exp
	}
	if !s.next.IsZero() {
		next := s.next
		ps.Session.NextRefresh = &next
	}
	if !s.lastFetch.IsZero() {
		t := s.lastFetch
		ps.Session.LastFetch = &t
	}
	ps.LastError = p.lastError()
	return ps
}

func (a *Agent) handleTokens(w http.ResponseWriter, r *http.Request) {
	all := r.URL.Query().Get("all") != ""
	out := []api.Token{}
	for _, in := range a.store.Infos() {
		if in.Hidden && !all {
			continue
		}
		out = append(out, a.apiToken(in))
	}
	writeJSON(w, out)
}

// apiToken describes a token, with the pool its iss belongs to.
func (a *Agent) apiToken(in store.Info) api.Token {
	t := api.Token{
		Name:       in.Name,
		Sub:        in.Token.Sub,
		Iss:        in.Token.Iss,
		Kid:        in.Token.Kid,
		Iat:        in.Token.Iat,
		Scope:      in.Token.Scope,
		State:      api.StateValid,
		Reason:     string(in.Reason),
		Remembered: in.Remembered,
	}
	if c := a.router.PoolOf(in.Token.Iss); c != nil {
		t.Pool = c.Pool
	}
	if in.Token.Exp != 0 {
		exp := in.Token.Exp
		t.Exp = &exp
	}
	if in.Hidden {
		t.State = api.StateHidden
	}
	return t
}

func (a *Agent) handleRemove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := a.store.Remove(name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, api.Errorf(api.CodeNotFound, "no token file %q", name))
			return
		}
		writeError(w, api.Errorf(api.CodeInternal, "%v", err))
		return
	}
	a.log.Info("token file removed on request", "name", name)
	w.WriteHeader(http.StatusNoContent)
}

func (a *Agent) handleWipe(w http.ResponseWriter, r *http.Request) {
	var req api.WipeRequest
	if !decode(w, r, &req) {
		return
	}
	if a.gates != nil {
		a.gates.OpenGates() // no request stays parked on tokens that are gone
	}
	a.store.Wipe()
	a.releaseMemory()
	a.log.Info("all tokens wiped on request", "logout", req.Logout)
	w.WriteHeader(http.StatusNoContent)
	if req.Logout {
		a.Logout()
	}
}

// releaseMemory runs after a wipe, before the reply, so that what held
// tokens outside secmem is gone by then: writers' drafts; the verifyd
// client's idle connections, whose buffers held the tokens it checked; then
// two garbage collections, since a sync.Pool (go-fuse's request and reply
// buffers, net/http's and encoding/json's) keeps its objects through one,
// and debug.FreeOSMemory (a third) to hand the freed pages back to the
// kernel, which zero-fills them (the runtime releases them with
// MADV_DONTNEED). A freed object that shares its page with live ones keeps
// its bytes until reused: hence buffers are cleared at their last use
// rather than left to this.
func (a *Agent) releaseMemory() {
	if a.fs != nil {
		a.fs.DropDrafts()
	}
	for _, p := range a.pools {
		if p.verifyd != nil {
			p.verifyd.client.Close()
		}
	}
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
}

func (a *Agent) handleSession(w http.ResponseWriter, r *http.Request) {
	var req api.SessionRequest
	if !decode(w, r, &req) {
		return
	}
	var resp api.SessionResponse
	switch req.Action {
	case "open":
		n, err := a.sessions.Open(req.PID)
		if err != nil {
			code := api.CodeBadRequest
			if errors.Is(err, ErrWiping) {
				code = api.CodeBusy
			}
			writeError(w, api.Errorf(code, "%v", err))
			return
		}
		resp.Sessions = n
		a.log.Info("login session opened", "pid", req.PID, "sessions", n)
		a.resumeSession()
	case "close":
		resp.Sessions, resp.Wiped = a.sessions.Close(req.PID)
		a.log.Info("login session closed", "pid", req.PID, "sessions", resp.Sessions)
	default:
		writeError(w, api.Errorf(api.CodeBadRequest, "action %q: want open or close", req.Action))
		return
	}
	writeJSON(w, resp)
}

// handleFetch fetches a token now, streaming progress lines while it waits.
func (a *Agent) handleFetch(w http.ResponseWriter, r *http.Request) {
	var req api.FetchRequest
	if !decode(w, r, &req) {
		return
	}
	p := a.pools[0]
	if req.Pool != "" {
		if p = a.pool(req.Pool); p == nil {
			writeError(w, api.Errorf(api.CodeBadRequest, "no pool named %q (pools: %s)", req.Pool, a.poolNames()))
			return
		}
	}
	name := req.Name
	if name == "" {
		name = p.cfg.SessionToken
	}
	if err := a.store.CheckName(name); err != nil {
		writeError(w, api.Errorf(api.CodeBadRequest, "token name %q: %v", name, err))
		return
	}
	var fr fetch.Request
	if req.Lifetime != "" {
		d, err := time.ParseDuration(req.Lifetime)
		if err != nil || d <= 0 {
			writeError(w, api.Errorf(api.CodeBadRequest, "lifetime %q: want a positive duration like 1h", req.Lifetime))
			return
		}
		fr.Lifetime = d
	}
	fr.Authz = req.Authz
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	send := func(ev api.FetchEvent) {
		enc.Encode(ev)
		if flusher != nil {
			flusher.Flush()
		}
	}
	t, err := a.fetchInto(r.Context(), p, name, fr, func(p fetch.Progress) {
		send(api.FetchEvent{Progress: &api.Progress{Started: p.Started, RequestID: p.RequestID, Message: p.Message}})
	})
	if err != nil {
		send(api.FetchEvent{Error: api.Errorf(api.CodeFetchFailed, "%v", err)})
		return
	}
	poke(a.changed)
	tok := a.apiToken(store.Info{Name: name, Token: *t})
	send(api.FetchEvent{Token: &tok})
}

// keyCheckNames names the key checks in order of preference.
func keyCheckNames(keys []validate.KeyChecker) string {
	if len(keys) == 0 {
		return validate.KeyNone
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.Name()
	}
	return strings.Join(names, ", ")
}
