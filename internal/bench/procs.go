package main

// The processes a run drives: users and their directories, agents run as
// those users (ready signalled through a private NOTIFY_SOCKET, as systemd
// would see it), one verifyd run as root, and the worker (this program run
// as a user).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/mounttab"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// account is a local user.
type account struct {
	name     string
	uid, gid int
	home     string
}

// ensureUser returns the user name, creating it (with a home, no login
// shell) if it is missing. Created users are kept for later runs.
func ensureUser(name string) (account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		out, err := exec.Command("useradd", "--create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if err != nil {
			return account{}, fmt.Errorf("useradd %s: %v: %s", name, err, bytes.TrimSpace(out))
		}
		if u, err = user.Lookup(name); err != nil {
			return account{}, err
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return account{name: u.Username, uid: uid, gid: gid, home: u.HomeDir}, nil
}

// benchUser is the name of the i-th bench user.
func benchUser(i int) string { return fmt.Sprintf("tokend-bench-%03d", i) }

// asUser prepares cmd to run as u with a clean environment plus env.
func asUser(cmd *exec.Cmd, u account, env ...string) *exec.Cmd {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{uint32(u.gid)}},
		Setpgid:    true,
	}
	cmd.Env = append([]string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=" + u.home,
		"USER=" + u.name,
		"LOGNAME=" + u.name,
	}, env...)
	return cmd
}

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

// newKeyFile returns a new random key file, scrambled as condor_store_cred
// writes it.
func newKeyFile() []byte {
	key := make([]byte, 64)
	rand.Read(key)
	return token.Scramble(key)
}

// installFile writes data to path by writing a temporary file beside it and
// renaming it over path (as a site rolls out a key), owned by uid:gid with
// mode 0600.
func installFile(path string, data []byte, uid, gid int) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".new")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Chown(tmp, uid, gid); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// sign makes a token with a POOL key file, as the schedd would.
func sign(keyFile []byte, sub string) ([]byte, error) {
	key := token.DeriveKey(token.PoolKeyName, keyFile)
	defer clear(key)
	return token.Sign(token.Claims{Issuer: "bench.example", Subject: sub, Lifetime: time.Hour}, token.PoolKeyName, key)
}

// home is one user's private bench directory: a copy of the pool key for
// the agent's embedded issuer (standing in for the schedd), the token
// directory, the control socket, the config.
type home struct {
	u      account
	dir    string
	keys   string // the user's copy of the signing key
	tokens string
	sock   string
	config string
	key    []byte // the current POOL key file
}

// newHome makes u's bench directory under parent with key as its POOL.
func newHome(parent string, u account, key []byte) (*home, error) {
	h := &home{
		u:    u,
		dir:  filepath.Join(parent, u.name),
		key:  key,
		keys: filepath.Join(parent, u.name, "keys"),
	}
	h.tokens = filepath.Join(h.dir, "tokens.d")
	h.sock = filepath.Join(h.dir, "run", "agent.sock")
	h.config = filepath.Join(h.dir, "config.toml")
	for _, d := range []string{h.dir, h.keys} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chown(d, u.uid, u.gid); err != nil {
			return nil, err
		}
	}
	return h, h.setKey(key)
}

// setKey replaces the user's copy of the POOL key.
func (h *home) setKey(key []byte) error {
	h.key = key
	return installFile(filepath.Join(h.keys, token.PoolKeyName), key, h.u.uid, h.u.gid)
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
	return os.Chown(h.config, h.u.uid, h.u.gid)
}

// signN signs n tokens for the user with the current key.
func (h *home) signN(n int) ([][]byte, error) {
	var out [][]byte
	for range n {
		t, err := sign(h.key, h.u.name+"@bench.example")
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
	cmd       *exec.Cmd
	log       *syncbuf.Buffer
	start     time.Time     // just before exec
	startMono time.Duration // the same, CLOCK_MONOTONIC (to compare with a watcher's)
	ready     chan time.Time
	done      chan struct{} // closed when the process has exited
	err       error         // exit status, once done is closed
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
	sockPath := filepath.Join(b.notifyDir, fmt.Sprintf("%s-%d.sock", h.u.name, b.seq))
	b.mu.Unlock()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	if err := os.Chown(sockPath, h.u.uid, h.u.gid); err != nil {
		conn.Close()
		return nil, err
	}
	a := &agent{h: h, log: &syncbuf.Buffer{}, ready: make(chan time.Time, 1), done: make(chan struct{}), notify: conn}
	go a.readNotify()
	a.cmd = asUser(exec.Command(b.tokend, "agent", "--config", h.config), h.u, append([]string{"NOTIFY_SOCKET=" + sockPath}, env...)...)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	a.start, a.startMono = time.Now(), monotonic()
	if err := a.cmd.Start(); err != nil {
		conn.Close()
		return nil, err
	}
	b.mu.Lock()
	b.agents[a] = true
	b.mu.Unlock()
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
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
	case <-a.done:
		return 0, fmt.Errorf("agent of %s exited before it was ready (%v):\n%s", a.h.u.name, a.err, a.log)
	case <-time.After(timeout):
		return 0, fmt.Errorf("agent of %s not ready after %v:\n%s", a.h.u.name, timeout, a.log)
	}
}

// waitLog waits until the agent has logged msg at or after since, and
// returns the time of the first such line.
func (a *agent) waitLog(msg string, since time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, t := range logTimes(a.log.String(), msg) {
			// Log times have millisecond precision.
			if !t.Before(since.Truncate(time.Millisecond)) {
				return t, nil
			}
		}
		select {
		case <-a.done:
			return time.Time{}, fmt.Errorf("agent of %s exited (%v):\n%s", a.h.u.name, a.err, a.log)
		default:
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("agent of %s: no %q logged within %v:\n%s", a.h.u.name, msg, timeout, a.log)
		}
		time.Sleep(5 * time.Millisecond)
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
	select {
	case <-a.done:
		return fmt.Errorf("agent of %s had already exited (%v):\n%s", a.h.u.name, a.err, a.log)
	default:
	}
	t0 := time.Now()
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		a.stopped = time.Since(t0)
	case <-time.After(15 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
		mounttab.Detach(a.h.tokens)
		return fmt.Errorf("agent of %s did not exit within 15 s of SIGTERM; killed", a.h.u.name)
	}
	if mounttab.Mounted(a.h.tokens) {
		mounttab.Detach(a.h.tokens)
		return fmt.Errorf("agent of %s exited but left its mount", a.h.u.name)
	}
	if a.err != nil {
		return fmt.Errorf("agent of %s: exit after SIGTERM: %v:\n%s", a.h.u.name, a.err, a.log)
	}
	return nil
}

// pid is the agent's process id.
func (a *agent) pid() int { return a.cmd.Process.Pid }

// verifydProc is `tokend verifyd` run as root over its own password
// directory (root-owned 0600 key files) with a socket every user can reach.
type verifydProc struct {
	keys string
	sock string
	cmd  *exec.Cmd
	log  *syncbuf.Buffer
	done chan struct{}
}

// startVerifyd starts verifyd with key as its POOL and waits until it
// answers.
func (b *bench) startVerifyd(key []byte) (*verifydProc, error) {
	root := filepath.Join(b.work, "verifyd")
	v := &verifydProc{keys: filepath.Join(root, "passwords.d"), sock: filepath.Join(root, "run", "verify.sock"), log: &syncbuf.Buffer{}, done: make(chan struct{})}
	if err := os.MkdirAll(v.keys, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(root, 0o711); err != nil {
		return nil, err
	}
	if err := installFile(filepath.Join(v.keys, token.PoolKeyName), key, 0, 0); err != nil {
		return nil, err
	}
	config := filepath.Join(root, "verifyd.toml") // empty: /etc/tokend/verifyd.toml is not read
	if err := os.WriteFile(config, nil, 0o600); err != nil {
		return nil, err
	}
	v.cmd = exec.Command(b.tokend, "verifyd", "--config", config, "--socket", v.sock, "--password-dir", v.keys)
	v.cmd.Stdout, v.cmd.Stderr = v.log, v.log
	if err := v.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { v.cmd.Wait(); close(v.done) }()
	b.atExit(v.stop)
	c := verifyapi.NewClient(v.sock)
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Generation(ctx)
		cancel()
		if err == nil {
			return v, nil
		}
		select {
		case <-v.done:
			return nil, fmt.Errorf("verifyd exited:\n%s", v.log)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("verifyd does not answer: %v\n%s", err, v.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rotate installs a new POOL key by rename.
func (v *verifydProc) rotate(key []byte) error {
	return installFile(filepath.Join(v.keys, token.PoolKeyName), key, 0, 0)
}

// stop ends verifyd with SIGTERM.
func (v *verifydProc) stop() {
	select {
	case <-v.done:
		return
	default:
	}
	v.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-v.done:
	case <-time.After(10 * time.Second):
		v.cmd.Process.Kill()
		<-v.done
	}
}

// workerCmd prepares this program's worker mode to run as u.
func (b *bench) workerCmd(u account, args ...string) *exec.Cmd {
	return asUser(exec.Command(b.self, append([]string{workerFlag}, args...)...), u)
}

// runWorker runs a worker job as u with stdin and returns its stdout.
func (b *bench) runWorker(u account, stdin []byte, args ...string) ([]byte, error) {
	cmd := b.workerCmd(u, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("worker %s as %s: %v: %s", args[0], u.name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
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
func (b *bench) startWatch(u account, dir, mode string, timeout time.Duration) (*watcher, error) {
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
