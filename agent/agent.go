// Package agent is the per-user agent: it mounts the token directory, keeps
// the tokens in it usable (validation, hiding, refresh), and serves the
// control API that the CLI talks to. At the end of the session it zeroes
// every token, unmounts, and removes its socket.
//
// It holds a session token for each pool (pool.go): the default pool of the
// top-level keys and every [pools.NAME] table. Each token is judged only by
// the checks of the pool its iss belongs to (validate.Router), and hidden
// only on a verdict that breaks HTCondor's tools. A token hidden for a
// reason a key change or time can undo (rotated-key, not-yet-valid) is kept
// in locked memory by the store and judged again at each key change of its
// pool (keeper.go, recheckRemembered): it comes back when it verifies, and
// is zeroed after two key changes in which it did not.
//
// What the agent does about each pool's session token (fetch, refresh,
// back off, refetch after a key change at a slot verifyd grants, close the
// mount's gate meanwhile) is decided by a pure function (policy.go); the
// loop (keeper.go) gathers its inputs, wakes on one channel, and carries
// out its decisions.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/agent/fetch"
	"github.com/tokend/tokend/agent/validate"
	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/fusefs"
	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/internal/reaper"
	"github.com/tokend/tokend/mounttab"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/store"
)

// Options configures Run.
type Options struct {
	Config  config.Config
	Logger  *slog.Logger
	Version string
	// Ready is called once the mount is up and the socket listens
	// (the agent sends systemd READY=1 there).
	Ready func()
	// Fetcher and Keys replace what the config would build for the
	// default pool (tests, demo).
	Fetcher fetch.Fetcher
	Keys    []validate.KeyChecker
}

// Agent is one running agent.
type Agent struct {
	cfg     config.Config
	log     *slog.Logger
	version string
	dir     string
	socket  string
	started time.Time

	store  *store.Store
	fs     *fusefs.FS
	gates  gater   // the mount's gates; nil before it is mounted (and in tests)
	pools  []*pool // the default pool first
	router *validate.Router
	// condorTD is HTCondor's TRUST_DOMAIN, read once at start when the
	// default pool's is not configured.
	condorTD string

	changed chan struct{} // capacity 1: tokens or keys changed, re-check
	recheck atomic.Bool   // re-check remembered tokens at the next pass
	logout  chan struct{} // closed to end the agent
	once    sync.Once     // closes logout

	mu       sync.Mutex // guards the fields below and each pool's
	lastPass time.Time
	sessions *sessionCounter
}

// Run runs the agent until ctx ends or a logout is asked for. It returns nil
// after a clean wipe and unmount.
func Run(ctx context.Context, o Options) error {
	a, err := newAgent(o)
	if err != nil {
		return err
	}
	// Before any child: double-forked children stay the agent's
	// descendants, which the gate never holds.
	if err := reaper.Start(a.log); err != nil {
		a.log.Warn(err.Error())
	}
	return a.run(ctx, o.Ready)
}

// condorTrustDomain reads HTCondor's TRUST_DOMAIN (a variable for tests).
var condorTrustDomain = condor.TrustDomain

func newAgent(o Options) (*Agent, error) {
	cfg := o.Config
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cfg:     cfg,
		log:     log.With("component", "agent"),
		version: o.Version,
		started: time.Now(),
		changed: make(chan struct{}, 1),
		logout:  make(chan struct{}),
	}
	a.sessions = newSessionCounter(a.endSessions)
	a.sessions.grace = cfg.Session.Grace.Std()
	var err error
	if a.dir, err = cfg.TokenDir(); err != nil {
		return nil, err
	}
	a.socket = cfg.AgentSocket()
	var checkers []*validate.Checker
	var tds []string
	for i, pc := range cfg.PoolList() {
		var fetcher fetch.Fetcher
		var keys []validate.KeyChecker
		if i == 0 {
			fetcher, keys = o.Fetcher, o.Keys
		}
		p, err := newPool(pc, fetcher, keys, a.log, a.shownFiles)
		if err != nil {
			return nil, err
		}
		a.pools = append(a.pools, p)
		checkers = append(checkers, p.checker)
		tds = append(tds, pc.TrustDomain)
	}
	a.router = validate.NewRouter(checkers, tds, &validate.Checker{
		Margin:       cfg.Validate.ExpMargin.Std(),
		TrustDomains: cfg.Validate.TrustDomains,
	})
	if def := a.pools[0]; def.cfg.TrustDomain == "" {
		// Else what verifyd reports, which wins when it comes.
		a.condorTD = condorTrustDomain()
		if other := a.configuredElsewhere(def, a.condorTD); other != "" {
			a.log.Warn("HTCondor's TRUST_DOMAIN is another pool's; the default pool's stays unknown (set trust_domain)", "trust_domain", a.condorTD, "other_pool", other)
			a.condorTD = ""
		}
		if a.condorTD != "" {
			a.router.SetTrustDomain(def.cfg.Name, a.condorTD, api.TrustFromCondor)
		}
	}
	a.store = store.New(store.Limits{
		MaxFiles:    cfg.Limits.MaxFiles,
		MaxFileSize: cfg.Limits.MaxFileSize,
		MaxNameLen:  cfg.Limits.MaxNameLen,
	})
	a.store.OnChange(func(store.Change) { poke(a.changed) })
	// The store says when the bound or a shortage of locked memory zeroes a
	// remembered token.
	a.store.SetLogger(a.log)
	// Short of locked memory, live tokens come before remembered ones.
	secmem.SetReclaim(a.store.ReclaimOne)
	return a, nil
}

func (a *Agent) run(ctx context.Context, ready func()) (err error) {
	rt := config.RuntimeFiles(a.socket)
	ln, lock, err := listen(rt)
	if err != nil {
		return err
	}
	defer release(rt, ln, lock)

	if stale, err := mounttab.RecoverStale(a.dir); err != nil {
		return err
	} else if stale {
		a.log.Warn("detached a dead mount left by an agent that did not exit cleanly", "dir", a.dir)
	}
	if mounttab.Mounted(a.dir) {
		return fmt.Errorf("%s is already mounted by a running tokend: `tokend status` shows it", a.dir)
	}
	if err := ensureDir(a.dir); err != nil {
		return err
	}
	// The kernel names the mount by its real path; so do we from here on.
	a.dir = mounttab.Canonical(a.dir)
	under, moved := a.importLegacy()

	a.fs, err = fusefs.Mount(a.dir, a.store, fusefs.Options{
		UID:       uint32(os.Getuid()),
		GID:       uint32(os.Getgid()),
		AllowRoot: a.cfg.AllowRoot,
		Audit:     a.cfg.Audit,
		Check:     a.router.Quick,
		Logger:    a.log,
	})
	if err != nil {
		a.store.Close()
		if under != nil {
			under.Close() // the moved files stay on disk
		}
		return fmt.Errorf("%w (`tokend doctor` checks fuse3, /dev/fuse and fusermount3)", err)
	}
	a.gates = fsGates{a.fs}
	a.removeMoved(under, moved)
	defer func() {
		// Zero first, so nothing is readable while the mount goes away.
		a.store.Close()
		if uerr := a.fs.Unmount(); uerr != nil {
			a.log.Error("unmount failed", "dir", a.dir, "err", uerr)
			err = errors.Join(err, uerr)
		}
		a.log.Info("tokens wiped and directory unmounted", "dir", a.dir)
	}()
	a.log.Info("token directory mounted", "dir", a.dir, "socket", a.socket, "open_mode", a.openMode())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := a.serve(ctx, ln)
	// Runs before the wipe: the requests in flight are answered first
	// (the last session close, wipe --logout), then the tokens go.
	defer stopServing(srv)
	if ready != nil {
		ready()
	}

	var wg sync.WaitGroup
	wg.Go(func() { a.keep(ctx) })
	for _, p := range a.pools {
		if p.verifyd != nil {
			wg.Go(func() {
				p.verifyd.follow(ctx, func(st verifydState, ev verifydEvent) { a.onVerifyd(p, st, ev) })
			})
		}
		if p.keys != nil {
			log := a.log.With("pool", p.cfg.Name)
			wg.Go(func() { watchKeys(ctx, log, p.cfg.Validate, p.keys, func() { a.onRotation(p, true, true) }) })
		}
	}
	wg.Go(func() { a.sessions.watch(ctx) })

	var gone error
	select {
	case <-ctx.Done():
		a.log.Info("stopping", "why", context.Cause(ctx))
	case <-a.logout:
		a.log.Info("stopping: logout")
	case <-a.fs.Gone():
		// Someone unmounted it (fusermount3 -u, umount): the tools no
		// longer see the tokens. Rather than hold them for nobody, or
		// fight whoever unmounted it, wipe and exit with an error: the
		// service manager restarts the agent, which mounts afresh.
		gone = fmt.Errorf("the token directory %s was unmounted under the agent: tokens wiped; start the agent again (systemctl --user restart tokend, or log in again) to mount it", a.dir)
		a.log.Error("stopping: the token directory was unmounted", "dir", a.dir)
	}
	cancel()
	wg.Wait()
	for _, p := range a.pools {
		if p.keys != nil {
			p.keys.Close()
		}
	}
	return gone
}

// onVerifyd takes what p's verifyd said (verifydWatch.follow).
func (a *Agent) onVerifyd(p *pool, st verifydState, ev verifydEvent) {
	if ev == verifydFirst || ev == verifydBack {
		// It may have been upgraded: try its newer requests again.
		p.noSlots.Store(false)
		p.verifyd.check.Upgraded()
	}
	if a.learn(p, st.TrustDomain, st.TokenMaxAge) {
		a.recheck.Store(true) // kept tokens too: their pool may have changed
	}
	a.onRotation(p, ev == verifydRotated, ev == verifydRotated || ev == verifydBack)
}

// Logout ends the agent: wipe, unmount, exit.
func (a *Agent) Logout() { a.once.Do(func() { close(a.logout) }) }

// onRotation re-checks every token now. rotated: the pool's keys really
// changed, a new epoch, in which a kept token that still does not verify
// counts a miss (and kept tokens are checked again). jitter: the change
// reached every agent on the host at once (a rotation, verifyd back after
// a restart), so a session token it made stale is fetched again at a pace:
// at a slot verifyd grants, else after a random delay (policy.go).
func (a *Agent) onRotation(p *pool, rotated, jitter bool) {
	if jitter {
		// Before the epoch moves: a pass that sees the new epoch sees it.
		a.mu.Lock()
		p.inbox.rotatedAt = time.Now()
		a.mu.Unlock()
	}
	if rotated {
		p.epoch.Add(1)
	}
	poke(a.changed)
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// listen creates the control socket: its directory 0700, the socket 0600.
// A socket that still answers belongs to a running agent and is left alone.
//
// It returns the agent's lock (takeLock), which the agent holds for its
// whole life, so that two agents starting at once cannot both decide the
// socket is stale and take it from each other.
func listen(rt config.Runtime) (net.Listener, *os.File, error) {
	socket := rt.Socket
	if err := config.EnsurePrivateDir(rt.Dir); err != nil {
		return nil, nil, err
	}
	lock, err := takeLock(rt.Lock)
	if errors.Is(err, errLocked) {
		return nil, nil, fmt.Errorf("another tokend agent is already running on %s", socket)
	} else if err != nil {
		return nil, nil, err
	}
	if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
		c.Close()
		lock.Close()
		return nil, nil, fmt.Errorf("another tokend agent is already running on %s", socket)
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		lock.Close()
		return nil, nil, fmt.Errorf("could not remove the stale socket %s: %w", socket, err)
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		lock.Close()
		return nil, nil, fmt.Errorf("could not listen on %s: %w", socket, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	// The directory is already private; the mode is a second fence.
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		lock.Close()
		return nil, nil, err
	}
	return ln, lock, nil
}

// errLocked: another agent holds the lock.
var errLocked = errors.New("locked")

// takeLock opens and locks the lock file at path. An agent removes its lock
// file when it ends, while it still holds the lock, so that it leaves
// nothing behind (systemd removes an empty runtime directory with the
// unit). That is the classic flock/unlink race: another agent may have
// opened the old file just before it went, and would lock a file nobody
// can find any more while a third creates and locks a new one. So after
// flock, the lock counts only if path still names the locked file; else
// it starts over.
func takeLock(path string) (*os.File, error) {
	for range 8 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, errLocked
		} else if err != nil {
			f.Close()
			return nil, fmt.Errorf("could not lock %s: %w", path, err)
		}
		if lockCurrent(f, path) {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("the lock file %s keeps being replaced while the agent starts: is another program removing it?", path)
}

// lockCurrent reports whether path still names the file f.
func lockCurrent(f *os.File, path string) bool {
	var held, named unix.Stat_t
	return unix.Fstat(int(f.Fd()), &held) == nil && unix.Lstat(path, &named) == nil &&
		held.Dev == named.Dev && held.Ino == named.Ino
}

// release undoes listen when the agent ends. The socket and the lock file
// go while the lock is still held (takeLock says why that is safe). (The
// server has closed the listener already when it stopped; the lock is not
// part of it.)
func release(rt config.Runtime, ln net.Listener, lock *os.File) {
	os.Remove(rt.Socket)
	ln.Close()
	os.Remove(rt.Lock)
	lock.Close()
}

// shutdownGrace bounds how long the agent waits, when it ends, for the
// requests in flight to be answered before it closes their connections.
const shutdownGrace = 2 * time.Second

// stopServing stops accepting connections and lets the requests in flight
// finish within shutdownGrace, then closes what is left.
func stopServing(srv *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if srv.Shutdown(ctx) != nil {
		srv.Close()
	}
}

// MemoryLocked reports whether every token buffer is locked in memory.
func MemoryLocked() bool { return !secmem.LockFailed() }
