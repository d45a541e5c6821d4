package main

// The PAM session hook end to end: pamtester drives a real PAM stack whose
// session line is pam_exec calling the built tokend, as sshd would; the hook
// starts the agent as the test user with the default socket under
// /run/user/UID.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/proc"
	"github.com/tokend/tokend/mounttab"
	"github.com/tokend/tokend/session"
)

// pamEnv is a test user's setup plus a PAM service whose session stack runs
// the hook.
type pamEnv struct {
	*env
	service string // name in /etc/pam.d
	runtime string // /run/user/UID
	hookLog string // the hook's output (pam_exec log=)
}

// newPAM writes /etc/pam.d/<service>. The auth stack prompts for a password
// (pam_exec expose_authtok reads it) and accepts any, so that
// `pamtester SERVICE USER open_session authenticate close_session` holds the
// session open until a line arrives on its standard input. The session line
// runs the launcher tokend-pam, as the shipped line does. pamOptions are
// pam_exec's options; "" logs the hook's output to a file.
func newPAM(t *testing.T, pamOptions string, settings map[string]string) *pamEnv {
	t.Helper()
	return newPAMAs(t, testenv.Lookup(t, testenv.UserName), pamOptions, settings, "")
}

// newPAMAs is newPAM for user u, with before (PAM lines) ahead of the
// session line.
func newPAMAs(t *testing.T, u testenv.User, pamOptions string, settings map[string]string, before string) *pamEnv {
	t.Helper()
	for _, tool := range []string{"pamtester", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: apt-get install -y pamtester util-linux (.ci/setup does)", tool)
		}
	}
	exclusive(t)
	all := map[string]string{"socket": `""`} // the default: $XDG_RUNTIME_DIR/tokend/agent.sock
	for k, v := range settings {
		all[k] = v
	}
	e := newEnvAs(t, u, all)
	p := &pamEnv{env: e, runtime: filepath.Join(session.RuntimeRoot, strconv.Itoa(e.u.UID))}
	e.sock = filepath.Join(p.runtime, "tokend", "agent.sock")
	p.hookLog = filepath.Join(e.work, "hook.log")
	if pamOptions == "" {
		pamOptions = "log=" + p.hookLog
	}
	p.service = "tokend-test-" + randomHex(4)
	conf := fmt.Sprintf("auth required pam_exec.so expose_authtok /bin/true\naccount required pam_permit.so\n%ssession optional pam_exec.so %s %s --config %s\n",
		before, pamOptions, testenv.BuildLauncher(t), e.config)
	if err := os.WriteFile(filepath.Join("/etc/pam.d", p.service), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := os.Lstat(p.runtime)
	hadRuntime := err == nil
	t.Cleanup(func() {
		os.Remove(filepath.Join("/etc/pam.d", p.service))
		p.stopAgent()
		if hadRuntime {
			os.RemoveAll(filepath.Join(p.runtime, "tokend"))
		} else {
			os.RemoveAll(p.runtime)
		}
	})
	return p
}

// exclusive makes the tests that use machine-wide state — the test user's
// /run/user/UID and its default agent socket, /run/systemd/system, the dpkg
// database — wait for each other across test processes: two `go test` runs
// on one machine would otherwise share the test user's agent.
func exclusive(t *testing.T) {
	t.Helper()
	// A test may call it more than once (flock would wait for itself).
	if _, held := exclusiveHeld.LoadOrStore(t, true); held {
		return
	}
	t.Cleanup(func() { exclusiveHeld.Delete(t) })
	// A fixed path: test runs may have different TMPDIRs.
	path := "/run/lock/tokend-tests-machine.lock"
	if _, err := os.Stat("/run/lock"); err != nil {
		path = "/tmp/tokend-tests-machine.lock"
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // releases the lock
	deadline := time.Now().Add(10 * time.Minute)
	for said := false; ; {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			t.Fatalf("lock %s: %v", path, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("another test run held %s for 10 minutes", path)
		}
		if !said {
			t.Logf("waiting for another test run to release %s", path)
			said = true
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exclusiveHeld holds the tests that hold the machine lock.
var exclusiveHeld sync.Map

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// agentPID returns the pid of the agent the hook started ("PID STARTTIME").
func (p *pamEnv) agentPID() int {
	data, _ := os.ReadFile(filepath.Join(p.runtime, "tokend", "agent.pid"))
	pid, _ := strconv.Atoi(strings.Fields(string(data) + " 0")[0])
	return pid
}

// stopAgent ends an agent a failed test left running.
func (p *pamEnv) stopAgent() { stopAgentIn(p.t, filepath.Join(p.runtime, "tokend")) }

// stopAgentIn ends the agent recorded in dir/agent.pid if it still runs (it
// wipes on SIGTERM), and says so: a test that passed leaves none.
func stopAgentIn(t *testing.T, dir string) {
	data, _ := os.ReadFile(filepath.Join(dir, "agent.pid"))
	pid, _ := strconv.Atoi(strings.Fields(string(data) + " 0")[0])
	if pid <= 0 || !running(pid) {
		return
	}
	t.Errorf("the agent (pid %d) was still running at the end of the test", pid)
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for running(pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if running(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// running reports whether pid is a live process (not gone, not a zombie).
func running(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(data, ')')
	return i < 0 || i+2 >= len(data) || data[i+2] != 'Z'
}

// login is one pamtester holding a session open.
type login struct {
	t     *testing.T
	p     *proc.Proc
	stdin io.WriteCloser
	out   *syncbuf.Buffer
}

// login opens a session through PAM and holds it until logout or kill.
func (p *pamEnv) login() *login {
	p.t.Helper()
	l := p.startLogin()
	l.waitOpened()
	return l
}

func (p *pamEnv) startLogin() *login {
	p.t.Helper()
	l := &login{t: p.t, out: &syncbuf.Buffer{}}
	// stdbuf: pamtester's messages are block-buffered on a pipe otherwise.
	cmd := exec.Command("stdbuf", "-oL", "pamtester", p.service, p.u.Name, "open_session", "authenticate", "close_session")
	var err error
	if l.stdin, err = cmd.StdinPipe(); err != nil {
		p.t.Fatal(err)
	}
	if l.p, err = proc.Start(cmd, l.out); err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { l.kill() })
	return l
}

func (l *login) waitOpened() {
	l.t.Helper()
	testenv.Eventually(l.t, 20*time.Second, "pamtester to open the session", func() bool {
		if l.p.Exited() {
			l.t.Fatalf("pamtester ended before the session was open (%v):\n%s", l.p.Err(), l.out)
		}
		return strings.Contains(l.out.String(), "successfully opened a session")
	})
}

// logout lets pamtester go on to close_session and waits for it to finish:
// the hook returns only once the session is closed (and, for the last, the
// mount is gone).
func (l *login) logout() {
	l.t.Helper()
	io.WriteString(l.stdin, "password\n")
	l.stdin.Close()
	if !l.p.Wait(30 * time.Second) {
		l.t.Fatalf("pamtester did not finish the logout:\n%s", l.out)
	}
	if err := l.p.Err(); err != nil || !strings.Contains(l.out.String(), "session has successfully been closed") {
		l.t.Fatalf("pamtester logout: %v:\n%s", err, l.out)
	}
}

// kill ends pamtester without a close, as a crashed sshd would.
func (l *login) kill() { l.p.Kill() }

func (p *pamEnv) sessions() int {
	p.t.Helper()
	st, err := p.status()
	if err != nil {
		p.t.Fatalf("tokend status as the user: %v\nhook log:\n%s", err, readFile(p.hookLog))
	}
	return st.Sessions
}

func readFile(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return string(data)
}

// assertGone checks that the agent has exited and the mount and the socket
// are gone.
func (p *pamEnv) assertGone(agentPID int) {
	p.t.Helper()
	if running(agentPID) {
		p.t.Errorf("the agent (pid %d) still runs", agentPID)
	}
	if mounttab.Mounted(p.dir) {
		p.t.Errorf("%s is still mounted", p.dir)
	}
	if _, err := os.Stat(p.sock); !errors.Is(err, fs.ErrNotExist) {
		p.t.Errorf("the socket is still there: %v", err)
	}
	if _, stderr, code := p.cli("status"); code != exitNoAgent {
		p.t.Errorf("tokend status after the last logout: exit %d: %s", code, stderr)
	}
}

// Two logins share one agent; the first logout keeps the tokens; the last
// wipes them, unmounts and ends the agent before the hook returns.
func TestPAMSessionsShareOneAgent(t *testing.T) {
	p := newPAM(t, "", nil)
	a := p.login()
	if n := p.sessions(); n != 1 {
		t.Fatalf("after the first login the agent counts %d sessions", n)
	}
	pid := p.agentPID()
	if pid <= 0 {
		t.Fatalf("no agent pid file:\n%s", readFile(p.hookLog))
	}
	// The agent runs as the user, in its own session, with the user's
	// groups only, and its directories are private.
	assertRunsAs(t, pid, p.u)
	for path, want := range map[string]os.FileMode{p.runtime: 0o700, filepath.Dir(p.sock): 0o700, p.sock: 0o600, filepath.Join(p.runtime, "tokend", "agent.log"): 0o600} {
		st, err := os.Lstat(path)
		if err != nil || st.Mode().Perm() != want || int(st.Sys().(*syscall.Stat_t).Uid) != p.u.UID {
			t.Errorf("%s: %v (%v), want mode %v owned by %s", path, st.Mode(), err, want, p.u.Name)
		}
	}
	tok := p.read().Pick
	if tok == "" {
		t.Fatalf("no token after login:\n%s", readFile(p.hookLog))
	}

	b := p.login()
	if n := p.sessions(); n != 2 {
		t.Fatalf("after the second login the agent counts %d sessions", n)
	}
	if got := p.agentPID(); got != pid {
		t.Fatalf("the second login started another agent (%d, first %d)", got, pid)
	}

	a.logout()
	if n := p.sessions(); n != 1 {
		t.Fatalf("after the first logout the agent counts %d sessions", n)
	}
	if got := p.read().Pick; got != tok {
		t.Fatalf("after the first logout the tools read %q, want the session token", got)
	}

	b.logout()
	p.assertGone(pid)
	assertNoResidue(t, p.secrets)
	log := readFile(filepath.Join(p.runtime, "tokend", "agent.log"))
	if !strings.Contains(log, "the last login session ended") || !strings.Contains(log, "tokens wiped and directory unmounted") {
		t.Errorf("the agent's log does not tell the logout:\n%s", log)
	}
	hook := readFile(p.hookLog)
	for _, want := range []string{"agent started", "2 login sessions", "1 login sessions still open", "last login session closed: tokens wiped"} {
		if !strings.Contains(hook, want) {
			t.Errorf("the hook's messages lack %q:\n%s", want, hook)
		}
	}
}

// Logins at the same moment start one agent between them, and all count.
func TestPAMConcurrentLogins(t *testing.T) {
	p := newPAM(t, "", nil)
	var logins []*login
	for range 4 {
		logins = append(logins, p.startLogin())
	}
	for _, l := range logins {
		l.waitOpened()
	}
	if n := p.sessions(); n != 4 {
		t.Fatalf("the agent counts %d sessions, want 4:\n%s", n, readFile(p.hookLog))
	}
	if n := strings.Count(readFile(p.hookLog), "agent started"); n != 1 {
		t.Fatalf("%d agents started, want 1:\n%s", n, readFile(p.hookLog))
	}
	pid := p.agentPID()
	p.read()
	var wg sync.WaitGroup
	for _, l := range logins {
		wg.Go(func() {
			io.WriteString(l.stdin, "password\n")
			l.stdin.Close()
			<-l.p.Done()
		})
	}
	wg.Wait()
	testenv.Eventually(t, 10*time.Second, "the agent to end after the last logout", func() bool { return !running(pid) })
	p.assertGone(pid)
	assertNoResidue(t, p.secrets)
}

// A login whose process dies without a logout (a killed sshd) is dropped:
// the tokens are wiped once no session is left. This one uses pam_exec's
// options as shipped in systemd/pam/tokend-session.
func TestPAMKilledSessionIsWiped(t *testing.T) {
	opts := shippedPAMOptions(t)
	p := newPAM(t, opts, nil)
	l := p.login()
	pid := p.agentPID()
	if p.read().Pick == "" {
		t.Fatal("no token after login")
	}
	// With "stdout", what the user must act on reaches them; a good login
	// says nothing.
	if strings.Contains(l.out.String(), "tokend:") {
		t.Errorf("a good login showed the user: %s", l.out)
	}
	l.kill()
	testenv.Eventually(t, 10*time.Second, "the agent to drop the dead session and end", func() bool { return !running(pid) })
	p.assertGone(pid)
	assertNoResidue(t, p.secrets)
	if log := readFile(filepath.Join(p.runtime, "tokend", "agent.log")); !strings.Contains(log, "its process exited without a close") {
		t.Errorf("the agent's log does not say why it ended:\n%s", log)
	}
}

// shippedPAMOptions are pam_exec's options in the shipped line, which names
// the launcher.
func shippedPAMOptions(t *testing.T) string {
	t.Helper()
	line := shippedPAMLine(t)
	opts, ok := strings.CutSuffix(strings.TrimPrefix(line, "session optional pam_exec.so"), " /usr/bin/tokend-pam")
	if !ok {
		t.Fatalf("the shipped PAM line does not end in /usr/bin/tokend-pam: %s", line)
	}
	return strings.TrimSpace(opts)
}

// shippedPAMLine is the pam_exec line of systemd/pam/tokend-session.
func shippedPAMLine(t *testing.T) string {
	t.Helper()
	f, err := os.Open(filepath.Join(testenv.ModuleRoot(t), "systemd", "pam", "tokend-session"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.HasPrefix(line, "session ") {
			return line
		}
	}
	t.Fatal("systemd/pam/tokend-session has no session line")
	return ""
}

// A fetch that fails does not block the login: the session is counted, the
// user is told (pam_exec stdout), and the hook succeeds.
func TestPAMLoginWithFailingFetch(t *testing.T) {
	p := newPAM(t, "stdout", map[string]string{"fetch.method": `"exec"`, "fetch.command": `["/bin/false"]`})
	l := p.login()
	if n := p.sessions(); n != 1 {
		t.Fatalf("the agent counts %d sessions", n)
	}
	if out := l.out.String(); !strings.Contains(out, "tokend: no token yet, the fetch failed") {
		t.Errorf("the user was not told the fetch failed:\n%s", out)
	}
	// Diagnostics are for the logs, not the user's terminal.
	if out := l.out.String(); strings.Contains(out, "tokend session open:") {
		t.Errorf("the user was shown the hook's diagnostics:\n%s", out)
	}
	pid := p.agentPID()
	l.logout()
	p.assertGone(pid)
}

// The hook refuses, clearly and without failing the login, what it must not
// do; and it never acts for a user the environment names falsely. As root
// from PAM, it runs through the launcher, and refuses to run without it.
func TestSessionHookRefuses(t *testing.T) {
	e := newEnv(t, nil)
	launcher := testenv.BuildLauncher(t)
	// bin is tokend (run as `tokend session ARGS`) or the launcher (which
	// adds "session" itself).
	run := func(bin string, u testenv.User, env []string, args ...string) (string, int) {
		t.Helper()
		if bin == e.bin {
			args = append([]string{"session"}, args...)
		}
		cmd := testenv.Command(u, bin, args...)
		cmd.Env = append(cmd.Env, env...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return out.String() + errb.String(), cmd.ProcessState.ExitCode()
	}
	root := testenv.User{Name: "root", Home: "/root"}
	other := testenv.Lookup(t, testenv.OtherName)
	for _, tc := range []struct {
		name string
		bin  string
		u    testenv.User
		env  []string
		args []string
		code int
		want string
	}{
		{"root login", launcher, root, []string{"PAM_TYPE=open_session", "PAM_USER=root"}, nil, exitOK, "runs no agent for root"},
		{"auth stack", launcher, root, []string{"PAM_TYPE=auth", "PAM_USER=" + e.u.Name}, nil, exitOK, "belongs in the session stack"},
		{"action disagrees", launcher, root, []string{"PAM_TYPE=close_session", "PAM_USER=" + e.u.Name}, []string{"open"}, exitOK, "called for PAM_TYPE=close_session; nothing done"},
		{"unknown user", launcher, root, []string{"PAM_TYPE=open_session", "PAM_USER=no-such-user-tokend"}, nil, exitFailure, "no-such-user-tokend"},
		{"no PAM_USER", e.bin, root, nil, []string{"open"}, exitFailure, "PAM_USER is not set"},
		{"without the launcher", e.bin, root, []string{"PAM_TYPE=open_session", "PAM_USER=" + e.u.Name}, nil, exitFailure, "the PAM line must name " + launcher + ", not tokend"},
		{"another user", e.bin, e.u, []string{"PAM_TYPE=open_session", "PAM_USER=" + other.Name}, nil, exitFailure, "only root can open a session for another user"},
		{"no action", e.bin, e.u, nil, nil, exitUsage, "usage: tokend session"},
		{"bad action", e.bin, e.u, nil, []string{"start"}, exitUsage, `unknown action "start"`},
	} {
		out, code := run(tc.bin, tc.u, tc.env, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%s: exit %d, want %d with %q:\n%s", tc.name, code, tc.code, tc.want, out)
		}
	}
	if mounttab.Mounted(e.dir) {
		t.Fatal("a refused hook mounted the directory")
	}
}

// Driven directly as the user (`tokend session open|close --pid`): a
// configured grace keeps the tokens across a quick re-login, then wipes.
func TestSessionGrace(t *testing.T) {
	e := newEnv(t, map[string]string{"session.grace": `"1s"`})
	holder := func() *exec.Cmd {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	sess := func(action string, pid int) string {
		t.Helper()
		_, stderr, code := e.runAs(e.u, "", e.bin, "session", action, "--pid", strconv.Itoa(pid), "--config", e.config)
		if code != 0 {
			t.Fatalf("session %s: exit %d: %s", action, code, stderr)
		}
		return stderr
	}
	first := holder()
	sess("open", first.Process.Pid)
	t.Cleanup(func() { stopAgentIn(t, filepath.Join(e.work, "run")) })
	st, err := e.status()
	if err != nil {
		t.Fatal(err)
	}
	tok := e.read().Pick
	if out := sess("close", first.Process.Pid); !strings.Contains(out, "wiped in 1s unless you log in again") {
		t.Fatalf("close with a grace says: %s", out)
	}
	if !mounttab.Mounted(e.dir) {
		t.Fatal("the grace did not keep the mount")
	}
	second := holder()
	if out := sess("open", second.Process.Pid); !strings.Contains(out, "agent running") {
		t.Fatalf("a login during the grace: %s", out)
	}
	if got := e.read().Pick; got != tok {
		t.Fatal("a login during the grace lost the token")
	}
	if st2, _ := e.status(); st2.PID != st.PID {
		t.Fatalf("a login during the grace started another agent")
	}
	start := time.Now()
	sess("close", second.Process.Pid)
	testenv.Eventually(t, 10*time.Second, "the wipe after the grace", func() bool { return !running(st.PID) && !mounttab.Mounted(e.dir) })
	if d := time.Since(start); d < time.Second {
		t.Fatalf("wiped after %v, before the 1s grace", d)
	}
}

// assertRunsAs checks that pid runs with exactly u's credentials.
func assertRunsAs(t *testing.T, pid int, u testenv.User) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Uid":    fmt.Sprintf("%d\t%d\t%d\t%d", u.UID, u.UID, u.UID, u.UID),
		"Gid":    fmt.Sprintf("%d\t%d\t%d\t%d", u.GID, u.GID, u.GID, u.GID),
		"Groups": strconv.Itoa(u.GID),
		"CapEff": "0000000000000000",
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if w, ok := want[k]; ok && strings.TrimSpace(v) != w {
			t.Errorf("agent %s %q, want %q", k, strings.TrimSpace(v), w)
		}
	}
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		t.Errorf("the agent is not in a session of its own (sid %d, %v)", sid, err)
	}
}

// residueRoots are where a leaked token could land on disk.
var residueRoots = []string{"/home", "/tmp", "/run", "/var", "/dev/shm"}

// assertNoResidue fails if any regular file under residueRoots holds the
// claims or the signature of any of the tokens (the header is the same for
// every token of a pool, so it proves nothing). Files over 64 MiB are
// skipped, and said so.
func assertNoResidue(t *testing.T, secrets [][]byte) {
	t.Helper()
	var needles [][]byte
	for _, s := range secrets {
		parts := bytes.Split(bytes.TrimSpace(s), []byte("."))
		if len(parts) != 3 {
			t.Fatalf("not a token: %d parts", len(parts))
		}
		needles = append(needles, parts[1], parts[2])
	}
	if len(needles) == 0 {
		t.Fatal("no token was seen: nothing to search for")
	}
	const most = 64 << 20
	files := 0
	for _, root := range residueRoots {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil // unreadable (another user's FUSE mount, a dead mount) or not a file
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			if info.Size() > most {
				t.Logf("residue search: skipped %s (%d bytes)", path, info.Size())
				return nil
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			files++
			for _, n := range needles {
				if bytes.Contains(data, n) {
					t.Errorf("a token is left on disk in %s", path)
					break
				}
			}
			return nil
		})
	}
	if files < 10 {
		t.Fatalf("the residue search read only %d files", files)
	}
}
