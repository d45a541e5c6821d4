package main

// The processes a run drives: users and their directories, agents run as
// those users (ready signalled through a private NOTIFY_SOCKET, as systemd
// would see it), one verifyd run as root, and the worker (this program run
// as a user).

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/internal/testenv/poll"
	"github.com/tokend/tokend/internal/testenv/proc"
	"github.com/tokend/tokend/internal/testenv/verifydproc"
	"github.com/tokend/tokend/mounttab"
	"github.com/tokend/tokend/token"
)

// ensureUser returns the user name, creating it (with a home, no login
// shell) if it is missing. Created users are kept for later runs.
func ensureUser(name string) (proc.User, error) {
	u, err := proc.LookupUser(name)
	if err != nil {
		out, err := exec.Command("useradd", "--create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if err != nil {
			return proc.User{}, fmt.Errorf("useradd %s: %v: %s", name, err, bytes.TrimSpace(out))
		}
		return proc.LookupUser(name)
	}
	return u, nil
}

// benchUser is the name of the i-th bench user.
func benchUser(i int) string { return fmt.Sprintf("tokend-bench-%03d", i) }

// logTimes returns the times of the log lines whose message is msg, from
// slog's text format (time=... level=... msg="...").
func logTimes(log, msg string) []time.Time {
	var out []time.Time
	want := "msg=" + strconv.Quote(msg)
	if !strings.ContainsAny(msg, " \"=") {
		want = "msg=" + msg
	}
	for line := range strings.SplitSeq(log, "\n") {
		if !strings.Contains(line, want+" ") && !strings.HasSuffix(line, want) {
			continue
		}
		ts, ok := strings.CutPrefix(line, "time=")
		if !ok {
			continue
		}
		ts, _, _ = strings.Cut(ts, " ")
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			out = append(out, t)
		}
	}
	return out
}

// home is one user's private bench directory: a copy of the pool key for
// the agent's embedded issuer (standing in for the schedd), the token
// directory, the control socket, the config.
type home struct {
	u      proc.User
	dir    string
	keys   string // the user's copy of the signing key
	tokens string
	sock   string
	config string
	key    []byte // the current POOL key file
}

// newHome makes u's bench directory under parent with key as its POOL.
func newHome(parent string, u proc.User, key []byte) (*home, error) {
	h := &home{
		u:    u,
		dir:  filepath.Join(parent, u.Name),
		key:  key,
		keys: filepath.Join(parent, u.Name, "keys"),
	}
	h.tokens = filepath.Join(h.dir, "tokens.d")
	h.sock = filepath.Join(h.dir, "run", "agent.sock")
	h.config = filepath.Join(h.dir, "config.toml")
	for _, d := range []string{h.dir, h.keys} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chown(d, u.UID, u.GID); err != nil {
			return nil, err
		}
	}
	return h, h.setKey(key)
}

// setKey replaces the user's copy of the POOL key.
func (h *home) setKey(key []byte) error {
	h.key = key
	return keys.Install(filepath.Join(h.keys, token.PoolKeyName), key, h.u.UID, h.u.GID)
}

// writeConfig writes the agent's config: the fetch is local (in-process
// signing, so that no fetch command's time is measured), validation uses
// verifydSock when set, else the user's key copy. extra overrides keys
// (dotted TOML keys to TOML values).
func (h *home) writeConfig(verifydSock string, extra map[string]string) error {
	s := map[string]string{
		"dir":                 strconv.Quote(h.tokens),
		"socket":              strconv.Quote(h.sock),
		"legacy":              `"ignore"`,
		"fetch.method":        `"local"`,
		"fetch.lifetime":      `"1h"`,
		"fetch.local.key_dir": strconv.Quote(h.keys),
		"fetch.local.issuer":  `"bench.example"`,
		"validate.verifyd":    strconv.Quote(verifydSock),
		"validate.key_dir":    `""`,
		"limits.max_files":    "256",
	}
	if verifydSock == "" {
		s["validate.key_dir"] = strconv.Quote(h.keys)
	}
	maps.Copy(s, extra)
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s)) {
		fmt.Fprintf(&b, "%s = %s\n", k, s[k])
	}
	if err := os.WriteFile(h.config, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Chown(h.config, h.u.UID, h.u.GID)
}

// signN signs n tokens for the user with the current key.
func (h *home) signN(n int) ([][]byte, error) {
	var out [][]byte
	for range n {
		t, err := keys.Sign(h.key, token.PoolKeyName, token.Claims{Issuer: "bench.example", Subject: h.u.Name + "@bench.example", Lifetime: time.Hour})
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// agent is one `tokend agent` run as a user.
type agent struct {
	h         *home
	p         *proc.Proc
	log       *syncbuf.Buffer
	start     time.Time     // just before exec
	startMono time.Duration // the same, CLOCK_MONOTONIC (to compare with a watcher's)
	ready     chan time.Time
	notify    *net.UnixConn
	stopped   time.Duration // SIGTERM to exit, once stopped
}

// startServing starts h's agent and waits until it is mounted and holds its
// session token.
func (b *bench) startServing(h *home, env ...string) (*agent, error) {
	a, err := b.startAgent(h, env...)
	if err != nil {
		return nil, err
	}
	if _, err := a.waitReady(20 * time.Second); err != nil {
		return nil, err
	}
	if _, err := a.waitLog("token fetched", a.start, 20*time.Second); err != nil {
		return nil, err
	}
	return a, nil
}

// startAgent runs an agent for h. It returns once the process has
// started; ready receives the time READY=1 arrived.
func (b *bench) startAgent(h *home, env ...string) (*agent, error) {
	b.mu.Lock()
	b.seq++
	sockPath := filepath.Join(b.notifyDir, fmt.Sprintf("%s-%d.sock", h.u.Name, b.seq))
	b.mu.Unlock()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	if err := os.Chown(sockPath, h.u.UID, h.u.GID); err != nil {
		conn.Close()
		return nil, err
	}
	a := &agent{h: h, log: &syncbuf.Buffer{}, ready: make(chan time.Time, 1), notify: conn}
	go a.readNotify()
	cmd := proc.Command(h.u, b.tokend, "agent", "--config", h.config)
	cmd.Env = append(cmd.Env, append([]string{"NOTIFY_SOCKET=" + sockPath}, env...)...)
	a.start, a.startMono = time.Now(), monotonic()
	if a.p, err = proc.Start(cmd, a.log); err != nil {
		conn.Close()
		return nil, err
	}
	b.mu.Lock()
	b.agents[a] = true
	b.mu.Unlock()
	go func() {
		<-a.p.Done()
		conn.Close()
	}()
	return a, nil
}

// readNotify waits for READY=1 on the agent's notify socket.
func (a *agent) readNotify() {
	buf := make([]byte, 4096)
	for {
		n, err := a.notify.Read(buf)
		if err != nil {
			return
		}
		for line := range strings.SplitSeq(string(buf[:n]), "\n") {
			if line == "READY=1" {
				select {
				case a.ready <- time.Now():
				default:
				}
			}
		}
	}
}

// waitReady returns how long the agent took from exec to READY=1.
func (a *agent) waitReady(timeout time.Duration) (time.Duration, error) {
	select {
	case t := <-a.ready:
		return t.Sub(a.start), nil
	case <-a.p.Done():
		return 0, fmt.Errorf("agent of %s exited before it was ready (%v):\n%s", a.h.u.Name, a.p.Err(), a.log)
	case <-time.After(timeout):
		return 0, fmt.Errorf("agent of %s not ready after %v:\n%s", a.h.u.Name, timeout, a.log)
	}
}

// waitLog waits until the agent has logged msg at or after since, and
// returns the time of the first such line.
func (a *agent) waitLog(msg string, since time.Time, timeout time.Duration) (time.Time, error) {
	var at time.Time
	poll.Until(timeout, func() bool {
		for _, t := range logTimes(a.log.String(), msg) {
			// Log times have millisecond precision.
			if !t.Before(since.Truncate(time.Millisecond)) {
				at = t
				return true
			}
		}
		return a.p.Exited()
	})
	switch {
	case !at.IsZero():
		return at, nil
	case a.p.Exited():
		return time.Time{}, fmt.Errorf("agent of %s exited (%v):\n%s", a.h.u.Name, a.p.Err(), a.log)
	default:
		return time.Time{}, fmt.Errorf("agent of %s: no %q logged within %v:\n%s", a.h.u.Name, msg, timeout, a.log)
	}
}

// stopAgent sends SIGTERM and waits for the agent to unmount and exit; it
// records how long that took. A stuck agent is killed and its mount
// detached.
func (b *bench) stopAgent(a *agent) error {
	defer func() {
		b.mu.Lock()
		delete(b.agents, a)
		b.mu.Unlock()
	}()
	if a.p.Exited() {
		return fmt.Errorf("agent of %s had already exited (%v):\n%s", a.h.u.Name, a.p.Err(), a.log)
	}
	t0 := time.Now()
	err := a.p.Stop(15 * time.Second)
	if errors.Is(err, proc.ErrKilled) {
		mounttab.Detach(a.h.tokens)
		return fmt.Errorf("agent of %s: %w", a.h.u.Name, err)
	}
	a.stopped = time.Since(t0)
	if mounttab.Mounted(a.h.tokens) {
		mounttab.Detach(a.h.tokens)
		return fmt.Errorf("agent of %s exited but left its mount", a.h.u.Name)
	}
	if err != nil {
		return fmt.Errorf("agent of %s: exit after SIGTERM: %v:\n%s", a.h.u.Name, err, a.log)
	}
	return nil
}

// pid is the agent's process id.
func (a *agent) pid() int { return a.p.Pid() }

// startVerifyd starts verifyd with key as its POOL and waits until it
// answers.
func (b *bench) startVerifyd(key []byte) (*verifydproc.Proc, error) {
	v, err := verifydproc.New(b.tokend, filepath.Join(b.work, "verifyd"))
	if err != nil {
		return nil, err
	}
	if err := keys.Install(filepath.Join(v.Keys, token.PoolKeyName), key, 0, 0); err != nil {
		return nil, err
	}
	b.atExit(func() { v.Stop(10 * time.Second) })
	if err := v.Start(10 * time.Second); err != nil {
		return nil, err
	}
	return v, nil
}

// workerCmd prepares this program's worker mode to run as u.
func (b *bench) workerCmd(u proc.User, args ...string) *exec.Cmd {
	return proc.Command(u, b.self, append([]string{workerFlag}, args...)...)
}

// runWorker runs a worker job as u with stdin and returns its stdout.
func (b *bench) runWorker(u proc.User, stdin []byte, args ...string) ([]byte, error) {
	r, err := proc.Run(b.workerCmd(u, args...), string(stdin))
	if err == nil && r.Code != 0 {
		err = fmt.Errorf("exit status %d", r.Code)
	}
	if err != nil {
		return nil, fmt.Errorf("worker %s as %s: %v: %s", args[0], u.Name, err, strings.TrimSpace(r.Stderr))
	}
	return []byte(r.Stdout), nil
}

// putTokens writes tokens into u's token directory through the mount, with
// HTCondor's writer, as files prefix-000, prefix-001, ...
func (b *bench) putTokens(h *home, prefix string, toks [][]byte) error {
	_, err := b.runWorker(h.u, bytes.Join(toks, []byte("\n")), "write", h.tokens, prefix)
	return err
}

// watcher is a running `watch` job: it polls a token directory as its
// owner and reports the CLOCK_MONOTONIC time at which the condition held.
type watcher struct {
	cmd  *exec.Cmd
	out  *bufio.Reader
	errb *bytes.Buffer
}

// startWatch starts a watch job and waits until it has taken its first
// look (for "gone": noted every token shown now).
func (b *bench) startWatch(u proc.User, dir, mode string, timeout time.Duration) (*watcher, error) {
	cmd := b.workerCmd(u, "watch", dir, mode, timeout.String())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	w := &watcher{cmd: cmd, out: bufio.NewReader(stdout), errb: &bytes.Buffer{}}
	cmd.Stderr = w.errb
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := w.out.ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		cmd.Wait()
		return nil, fmt.Errorf("watch %s: %q %v: %s", dir, line, err, w.errb)
	}
	return w, nil
}

// wait returns the monotonic time the watcher saw the condition hold.
func (w *watcher) wait() (time.Duration, error) {
	line, err := w.out.ReadString('\n')
	werr := w.cmd.Wait()
	if err != nil && !errors.Is(err, io.EOF) || werr != nil {
		return 0, fmt.Errorf("watch: %v %v: %s", err, werr, w.errb)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("watch: %q: %s", line, w.errb)
	}
	return time.Duration(ns), nil
}

// kill stops a watcher that is no longer needed.
func (w *watcher) kill() {
	w.cmd.Process.Kill()
	w.cmd.Wait()
}
