package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
)

// Options configures Open and Close, which run as the session's user.
type Options struct {
	// Config is the agent's configuration file (`tokend agent --config`);
	// "" = /etc/tokend/config.toml and the user's own, as the agent reads them.
	Config string
	// PID is a process of the login session (the PAM caller). The session
	// counts as open while it lives.
	PID int
	// Timeout bounds the whole call; 0 = DefaultOpenTimeout or
	// DefaultCloseTimeout.
	Timeout time.Duration
	// Agent is the tokend binary that runs the agent; "" = this executable.
	Agent string
	// Socket is the agent's control socket (`tokend agent --socket`);
	// "" = $TOKEND_SOCKET, else the configuration's, as the agent finds it.
	Socket string
}

// Opened says what Open did.
type Opened struct {
	Started  bool       // Open started the agent (none was answering)
	Sessions int        // login sessions the agent counts, this one included
	Ready    bool       // the session token is usable (Status.Session.State is valid)
	Status   api.Status // the agent's status when Open returned
	Log      string     // the agent's log file, when Open started the agent
}

func (o Options) load() (config.Config, config.Runtime, error) {
	cfg, err := config.Load(o.Config)
	if err != nil {
		return config.Config{}, config.Runtime{}, err
	}
	socket := config.SocketOverride(o.Socket)
	if socket == "" {
		socket = cfg.AgentSocket()
	}
	return cfg, config.RuntimeFiles(socket), nil
}

func (o Options) deadline(ctx context.Context, def time.Duration) (context.Context, context.CancelFunc) {
	d := o.Timeout
	if d <= 0 {
		d = def
	}
	return context.WithTimeout(ctx, d)
}

// Open counts a login session of the current user, starting the user's
// agent first when none answers, and waits until the session token is
// usable, the fetch failed, or it waits for an administrator's approval.
// When the deadline passes first, Open returns without an error and with
// Ready false: the session is counted and the agent keeps fetching. Open
// acts for the user it runs as; the PAM hook calls Become first.
func Open(ctx context.Context, o Options) (Opened, error) {
	if o.PID <= 0 {
		return Opened{}, errors.New("session open needs the pid of a process of the session")
	}
	if o.PID == 1 {
		return Opened{}, errors.New("the session's process would be pid 1, which never exits, so the session would never end: give --pid")
	}
	ctx, cancel := o.deadline(ctx, DefaultOpenTimeout)
	defer cancel()
	_, p, err := o.load()
	if err != nil {
		return Opened{}, err
	}
	if err := config.EnsurePrivateDir(p.Dir); err != nil {
		return Opened{}, err
	}
	var res Opened
	c := api.NewClient(p.Socket)
	err = withLock(ctx, p.SessionLock, func() error {
		// A busy agent is wiping after the last logout of another session:
		// wait for it to end, then start a fresh one.
		for try := 0; ; try++ {
			st, ag, err := ensureAgent(ctx, o, p, c)
			if err != nil {
				return err
			}
			if ag != nil {
				res.Started, res.Log = true, p.Log
			}
			resp, err := c.Session(ctx, api.SessionRequest{Action: ActionOpen, PID: o.PID})
			if errors.Is(err, &api.Error{Code: api.CodeBusy}) && try < 3 {
				if err := waitExit(ctx, st.PID); err != nil {
					return fmt.Errorf("the agent (pid %d) is ending after the last logout and did not finish: %w", st.PID, err)
				}
				continue
			}
			if err != nil {
				if ag != nil {
					ag.stop() // an agent that counts no session would never end
				}
				return fmt.Errorf("could not count the session with the agent: %w", err)
			}
			res.Sessions, res.Status = resp.Sessions, st
			return nil
		}
	})
	if err != nil {
		return res, err
	}
	// The session is counted: other logins need not wait for this token.
	res.Status, res.Ready = waitToken(ctx, c, res.Status)
	return res, nil
}

// ensureAgent returns the status of the agent answering on the socket,
// starting one first if none does. ag is the started agent, or nil.
func ensureAgent(ctx context.Context, o Options, p config.Runtime, c *api.Client) (st api.Status, ag *agentProc, err error) {
	st, err = c.Status(ctx)
	if err == nil {
		return st, nil, nil
	}
	if !errors.Is(err, api.ErrNoAgent) {
		return st, nil, fmt.Errorf("the agent on %s: %w", p.Socket, err)
	}
	// An agent this hook started may still be ending (it stops answering
	// before its mount is gone): starting another now would find the
	// directory mounted.
	if pid, ok := livePID(p.PIDFile); ok {
		if err := waitExit(ctx, pid); err != nil {
			return st, nil, fmt.Errorf("an agent (pid %d) is still running but does not answer on %s: end it with `kill %d` and log in again", pid, p.Socket, pid)
		}
	}
	ag, err = startAgent(o, p)
	if err != nil {
		return st, nil, err
	}
	st, err = ag.waitServing(ctx, c)
	if err != nil {
		ag.stop()
		return st, nil, err
	}
	return st, ag, nil
}

// agentProc is an agent Open started.
type agentProc struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{} // closed when the agent exited
	err    error         // its exit status, once exited is closed
}

// startAgent starts `tokend agent` detached from the login: in its own
// session, in /, its input /dev/null and its output the log file beside the
// socket (the log never holds a token).
func startAgent(o Options, p config.Runtime) (*agentProc, error) {
	exe := o.Agent
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("could not find the tokend binary: %w", err)
		}
	}
	args := []string{"agent"}
	if o.Config != "" {
		args = append(args, "--config", o.Config)
	}
	if o.Socket != "" {
		args = append(args, "--socket", o.Socket)
	}
	logf, err := os.OpenFile(p.Log, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("could not create the agent's log: %w", err)
	}
	defer logf.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer null.Close()
	cmd := exec.Command(exe, args...)
	cmd.Dir = "/"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("could not start the agent: %w", err)
	}
	ag := &agentProc{cmd: cmd, log: p.Log, exited: make(chan struct{})}
	go func() {
		ag.err = cmd.Wait()
		close(ag.exited)
	}()
	if err := writePIDFile(p.PIDFile, cmd.Process.Pid); err != nil {
		ag.stop()
		return nil, err
	}
	return ag, nil
}

// waitServing waits until the agent answers with its directory mounted.
func (ag *agentProc) waitServing(ctx context.Context, c *api.Client) (api.Status, error) {
	for wait := pollMin; ; wait = min(2*wait, pollMax) {
		select {
		case <-ag.exited:
			return api.Status{}, fmt.Errorf("the agent exited at once (%v); its log %s says:\n%s", ag.err, ag.log, tail(ag.log, 8))
		default:
		}
		st, err := c.Status(ctx)
		if err == nil && st.Mounted {
			return st, nil
		}
		if errors.Is(err, &api.Error{Code: api.CodeForbidden}) {
			return st, err
		}
		if pause(ctx, wait) != nil {
			return st, fmt.Errorf("the agent did not mount the token directory in time; its log %s says:\n%s", ag.log, tail(ag.log, 8))
		}
	}
}

// stop ends an agent Open started but could not use; it wipes on SIGTERM.
func (ag *agentProc) stop() {
	ag.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ag.exited:
	case <-time.After(5 * time.Second):
		ag.cmd.Process.Kill()
	}
}

// waitToken polls the agent until the session token is usable, the fetch
// failed, or it waits for approval; ready reports the first.
func waitToken(ctx context.Context, c *api.Client, last api.Status) (st api.Status, ready bool) {
	st = last
	for wait := pollMin; ; wait = min(2*wait, pollMax) {
		switch st.Session.State {
		case api.SessionValid:
			return st, true
		case api.SessionFailed, api.SessionWaiting, api.SessionRemoved:
			return st, false
		}
		if pause(ctx, wait) != nil {
			return st, false
		}
		if s, err := c.Status(ctx); err == nil {
			st = s
		}
	}
}

// Polling the agent: a status round trip costs tens of microseconds, and a
// login waits for every millisecond lost between polls; but many logins at
// once must not keep the agents busy answering.
const (
	pollMin = 200 * time.Microsecond
	pollMax = 10 * time.Millisecond
)

// pause sleeps for d unless ctx ends first.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
