package session

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/session/pamenv"
)

func TestActionFor(t *testing.T) {
	for _, tc := range []struct {
		pamType, want string
		notForPAM     bool
	}{
		{"open_session", ActionOpen, false},
		{"close_session", ActionClose, false},
		{"auth", "", true},
		{"account", "", true},
		{"password", "", true},
		{"", "", false},
	} {
		got, err := ActionFor(tc.pamType)
		if got != tc.want || errors.Is(err, ErrNotForPAMType) != tc.notForPAM || (tc.want == "") == (err == nil) {
			t.Errorf("ActionFor(%q) = %q, %v", tc.pamType, got, err)
		}
	}
}

// The user side gets who they are, a fixed PATH, its runtime directory, and
// only what the launcher carried from the PAM environment: HTCondor's
// variables and the locale.
func TestUserEnv(t *testing.T) {
	a := Account{Name: "alice", UID: 1234, GID: 1234, Home: "/home/alice"}
	pam := []string{
		"CONDOR_CONFIG=/evil", "LD_PRELOAD=/tmp/x.so", "PATH=/tmp/bin", "TOKEND_SOCKET=/tmp/s",
		"_CONDOR_SEC_TOKEN_DIRECTORY=/scratch/t", "XDG_RUNTIME_DIR=/tmp/r", "CONDOR_CONFIG=/etc/condor/condor_config",
		"LANG=C.UTF-8", "PAM_USER=alice",
	}
	launched, err := pamenv.Launch(pam)
	if err != nil {
		t.Fatal(err)
	}
	got := userEnv(a, "/run/user/1234", append(launched, "CONDOR_CONFIG=/not/from/the/launcher"))
	want := []string{
		"HOME=/home/alice", "USER=alice", "LOGNAME=alice", "PATH=" + DefaultPath, "XDG_RUNTIME_DIR=/run/user/1234",
		"CONDOR_CONFIG=/etc/condor/condor_config", "LANG=C.UTF-8", "_CONDOR_SEC_TOKEN_DIRECTORY=/scratch/t",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("userEnv:\n got %q\nwant %q", got, want)
	}
}

func TestEnsureRuntimeDir(t *testing.T) {
	testenv.RequireRoot(t, "it creates directories owned by other users")
	a := Account{Name: "someone", UID: 54321, GID: 54322}
	root := filepath.Join(t.TempDir(), "user")

	dir, err := EnsureRuntimeDir(root, a)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := st.Sys().(*syscall.Stat_t)
	if dir != filepath.Join(root, "54321") || !st.IsDir() || st.Mode().Perm() != 0o700 || s.Uid != 54321 || s.Gid != 54322 {
		t.Fatalf("%s: %v uid %d gid %d", dir, st.Mode(), s.Uid, s.Gid)
	}
	if rst, _ := os.Stat(root); rst.Mode().Perm() != 0o755 {
		t.Fatalf("%s: %v, want 0755", root, rst.Mode())
	}
	// Again: the existing directory is fine.
	if again, err := EnsureRuntimeDir(root, a); err != nil || again != dir {
		t.Fatalf("second call: %q, %v", again, err)
	}

	// Someone else's directory, a symlink, a file: refused, left alone.
	other := Account{Name: "other", UID: 54323, GID: 54323}
	if err := os.Chown(dir, other.UID, other.GID); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureRuntimeDir(root, a); err == nil || !strings.Contains(err.Error(), "not a directory owned by someone") {
		t.Fatalf("a directory owned by another user: %v", err)
	}
	os.Remove(dir)
	os.Symlink("/tmp", dir)
	if _, err := EnsureRuntimeDir(root, a); err == nil {
		t.Fatal("a symlink was accepted")
	}
	if fi, _ := os.Lstat("/tmp"); fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatal("the symlink's target was chowned")
	}
	os.Remove(dir)

	// A root directory others can write to: refused.
	os.Chmod(root, 0o777)
	if _, err := EnsureRuntimeDir(root, a); err == nil || !strings.Contains(err.Error(), "only root can write") {
		t.Fatalf("a world-writable root: %v", err)
	}
}

func TestLockSerializes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	var mu sync.Mutex
	inside, most := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			err := withLock(context.Background(), path, func() error {
				mu.Lock()
				inside++
				most = max(most, inside)
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
				mu.Lock()
				inside--
				mu.Unlock()
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if most != 1 {
		t.Fatalf("%d holders at once", most)
	}
	// A holder that does not let go: the waiter gives up at its deadline.
	release := make(chan struct{})
	held := make(chan struct{})
	go withLock(context.Background(), path, func() error { close(held); <-release; return nil })
	<-held
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := withLock(ctx, path, func() error { return nil })
	if err == nil || !strings.Contains(err.Error(), "did not finish in time") {
		t.Fatalf("waiting on a held lock: %v", err)
	}
}

func TestPIDFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.pid")
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := writePIDFile(path, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if pid, ok := livePID(path); !ok || pid != cmd.Process.Pid {
		t.Fatalf("livePID = %d, %v; want %d, true", pid, ok, cmd.Process.Pid)
	}
	cmd.Process.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Exited but not reaped yet: a zombie counts as exited.
	if err := waitExit(ctx, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if _, ok := livePID(path); ok {
		t.Fatal("a dead agent counts as live")
	}
	// Another process with the recorded pid (pid reuse): not the agent.
	os.WriteFile(path, []byte("1 12345\n"), 0o600)
	if _, ok := livePID(path); ok {
		t.Fatal("a reused pid counts as the agent")
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, ok := livePID(path); ok {
		t.Fatal("a malformed pid file counts")
	}
}

func TestTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	os.WriteFile(path, []byte("one\ntwo\nthree\n"), 0o600)
	if got := tail(path, 2); got != "  two\n  three" {
		t.Fatalf("tail = %q", got)
	}
	os.WriteFile(path, nil, 0o600)
	if got := tail(path, 2); got != "  (empty)" {
		t.Fatalf("tail of an empty log = %q", got)
	}
}

// Open starts an agent when none answers, counts sessions on it, and the
// last Close ends it.
func TestOpenClose(t *testing.T) {
	f := newFake(t, fakeServe)
	ctx := context.Background()
	res, err := Open(ctx, f.options(100))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Started || res.Sessions != 1 || !res.Ready || res.Log != filepath.Join(f.dir, "run", "agent.log") {
		t.Fatalf("first open: %+v", res)
	}
	st, _ := os.Stat(filepath.Dir(f.socket))
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory %v, want 0700", st.Mode())
	}
	if pid, ok := livePID(filepath.Join(f.dir, "run", "agent.pid")); !ok || pid != res.Status.PID {
		t.Fatalf("pid file names %d (%v), agent is %d", pid, ok, res.Status.PID)
	}
	res2, err := Open(ctx, f.options(200))
	if err != nil {
		t.Fatal(err)
	}
	if res2.Started || res2.Sessions != 2 || res2.Status.PID != res.Status.PID {
		t.Fatalf("second open: %+v", res2)
	}
	c, err := Close(ctx, f.options(100))
	if err != nil || c.Wiped || c.Sessions != 1 {
		t.Fatalf("first close: %+v, %v", c, err)
	}
	c, err = Close(ctx, f.options(200))
	if err != nil || !c.Wiped || c.Sessions != 0 {
		t.Fatalf("last close: %+v, %v", c, err)
	}
	c, err = Close(ctx, f.options(200))
	if err != nil || !c.NoAgent {
		t.Fatalf("close without an agent: %+v, %v", c, err)
	}
	if got := f.events(); !slices.Equal(got, []string{"open 100 1", "open 200 2", "close 100 1", "close 200 0"}) {
		t.Fatalf("the agent saw %q", got)
	}
}

// A session tied to init would never end.
func TestOpenRefusesInit(t *testing.T) {
	f := newFake(t, fakeServe)
	if _, err := Open(context.Background(), f.options(1)); err == nil || !strings.Contains(err.Error(), "pid 1") {
		t.Fatalf("Open for pid 1: %v", err)
	}
	if n := len(f.starts()); n != 0 {
		t.Fatalf("%d agents started", n)
	}
}

// Concurrent logins start one agent between them.
func TestConcurrentOpensShareOneAgent(t *testing.T) {
	f := newFake(t, fakeServe)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := range 6 {
		wg.Go(func() {
			_, err := Open(context.Background(), f.options(1000+i))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(f.starts()); n != 1 {
		t.Fatalf("%d agents started, want 1", n)
	}
}

// An agent that dies at once (a config error) makes Open fail with what it
// said.
func TestOpenReportsAnAgentThatExits(t *testing.T) {
	f := newFake(t, fakeFail)
	_, err := Open(context.Background(), f.options(100))
	if err == nil || !strings.Contains(err.Error(), "exited at once") || !strings.Contains(err.Error(), `fetch.method = "nope"`) {
		t.Fatalf("Open with a failing agent: %v", err)
	}
}

// An agent that never answers: Open gives up at its deadline and stops it,
// so it cannot linger without a session.
func TestOpenStopsAnAgentThatHangs(t *testing.T) {
	f := newFake(t, fakeHang)
	o := f.options(100)
	o.Timeout = 300 * time.Millisecond
	start := time.Now()
	_, err := Open(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "did not mount") {
		t.Fatalf("Open with a hanging agent: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Open took %v with a 300ms deadline", d)
	}
	pid, ok := livePID(filepath.Join(f.dir, "run", "agent.pid"))
	if ok {
		t.Fatalf("the hanging agent %d still runs", pid)
	}
}

// A login while the agent wipes after the last logout waits for it to end
// and starts a fresh one.
func TestOpenDuringWipeStartsAFreshAgent(t *testing.T) {
	f := newFake(t, fakeSlow, fakeServe)
	ctx := context.Background()
	first, err := Open(ctx, f.options(100))
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() {
		_, err := Close(ctx, f.options(100))
		closed <- err
	}()
	// Wait until the first agent wipes (it answers busy for 300 ms).
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(f.events(), "close 100 0") {
		if time.Now().After(deadline) {
			t.Fatal("the close never reached the agent")
		}
		time.Sleep(time.Millisecond)
	}
	second, err := Open(ctx, f.options(200))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if !second.Started || second.Status.PID == first.Status.PID || second.Sessions != 1 {
		t.Fatalf("open during the wipe: %+v (first agent %d)", second, first.Status.PID)
	}
	if !slices.Contains(f.events(), "busy") {
		t.Fatalf("the open never met the wiping agent: %q", f.events())
	}
}

// Become turns the hook into the user for good: every id, the user's
// groups only, no way back to root, a clean environment (with what the
// launcher carried for the agent, under its own name), and the runtime
// directory made.
func TestBecome(t *testing.T) {
	testenv.RequireRoot(t, "it creates directories owned by other users")
	u := testenv.Lookup(t, testenv.UserName)
	root := filepath.Join(t.TempDir(), "user")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = []string{
		"TOKEND_TEST_BECOME=" + u.Name, "TOKEND_TEST_RUNTIME_ROOT=" + root,
		"PATH=/tmp/evil", "LD_PRELOAD=/tmp/evil.so", "CONDOR_CONFIG=/not/carried", "HOME=/root",
		"TOKEND_USERENV_CONDOR_CONFIG=/etc/condor/condor_config",
	}
	cmd.Dir = t.TempDir()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var b became
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if b.Err != "" {
		t.Fatal(b.Err)
	}
	if b.UID != u.UID || b.EUID != u.UID || b.GID != u.GID || b.EGID != u.GID || !slices.Equal(b.Groups, []int{u.GID}) {
		t.Errorf("after Become: uid %d/%d gid %d/%d groups %v; want %d, %d, [%d]", b.UID, b.EUID, b.GID, b.EGID, b.Groups, u.UID, u.GID, u.GID)
	}
	if !strings.Contains(b.RegainRoot, "operation not permitted") {
		t.Errorf("setuid(0) after Become: %s", b.RegainRoot)
	}
	runtime := filepath.Join(root, strconv.Itoa(u.UID))
	want := []string{"HOME=" + u.Home, "USER=" + u.Name, "LOGNAME=" + u.Name, "PATH=" + DefaultPath,
		"XDG_RUNTIME_DIR=" + runtime, "CONDOR_CONFIG=/etc/condor/condor_config"}
	slices.Sort(want)
	slices.Sort(b.Env)
	if !slices.Equal(b.Env, want) {
		t.Errorf("environment after Become:\n got %q\nwant %q", b.Env, want)
	}
	if b.Cwd != "/" || b.Umask != 0o077 {
		t.Errorf("cwd %q, umask %#o; want /, 077", b.Cwd, b.Umask)
	}
	if st, err := os.Stat(runtime); err != nil || int(st.Sys().(*syscall.Stat_t).Uid) != u.UID {
		t.Errorf("runtime directory %s: %v", runtime, err)
	}

	// Root is never become.
	cmd = exec.Command(exe)
	cmd.Env = []string{"TOKEND_TEST_BECOME=root", "TOKEND_TEST_RUNTIME_ROOT=" + root}
	out, _ = cmd.Output()
	json.Unmarshal(out, &b)
	if !strings.Contains(b.Err, ErrRoot.Error()) || b.EUID != 0 {
		t.Errorf("Become(root): %+v", b)
	}
}
