package fusefs

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tokend/tokend/internal/reaper"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/store"
	"github.com/tokend/tokend/token"
)

// long is a fetch.wait no test waits out: a held request that answers
// within quick did not wait for it.
const (
	long  = 60 * time.Second
	quick = 10 * time.Second
)

// gateFixture is a mount owned by the test user, which root may use too
// (allow_root), as the agent mounts it for that user.
type gateFixture struct {
	*fixture
	user testenv.User
}

// mountForUser mounts for the test user. The agent is agent (a pid): the
// test process is an ancestor of every process the tests start, so it
// cannot be the agent where a process must be held.
func mountForUser(t *testing.T, agent int) *gateFixture {
	t.Helper()
	u := testenv.Lookup(t, testenv.UserName)
	f := mountAt(t, testenv.Dir(t, u), store.Limits{}, func(o *Options) {
		o.UID, o.GID = uint32(u.UID), uint32(u.GID)
		o.AllowRoot = true
		o.AgentPID = agent
	})
	return &gateFixture{fixture: f, user: u}
}

// standIn starts a process that stands for the agent (no process of the
// tests descends from it) and returns its pid.
func standIn(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("cat")
	w, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(); cmd.Wait() })
	return cmd.Process.Pid
}

// tool is a process run as the test user against the mount.
type tool struct {
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan error
	at   time.Time
}

// start runs script with sh as the test user, with $MOUNT set. The shell
// changes into the mount itself (see fixture.sh).
func (f *gateFixture) start(t *testing.T, script string) *tool {
	t.Helper()
	return f.startCmd(t, testenv.Command(f.user, "sh", "-c", script))
}

func (f *gateFixture) startCmd(t *testing.T, cmd *exec.Cmd) *tool {
	t.Helper()
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, "MOUNT="+f.dir)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	out := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	tl := &tool{cmd: cmd, out: out, done: make(chan error, 1), at: time.Now()}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { tl.done <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-tl.done:
		default:
			// The whole group: a held child would keep the output open.
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-tl.done
		}
	})
	return tl
}

// wait waits up to within for the tool to end and returns its error and
// how long it ran.
func (tl *tool) wait(t *testing.T, within time.Duration) (time.Duration, error) {
	t.Helper()
	select {
	case err := <-tl.done:
		tl.done <- err
		return time.Since(tl.at), err
	case <-time.After(within):
		t.Fatalf("%v still running after %v; output %q", tl.cmd.Args, within, tl.out.String())
		return 0, nil
	}
}

// running reports whether the tool has not ended yet.
func (tl *tool) running() bool {
	select {
	case err := <-tl.done:
		tl.done <- err
		return false
	default:
		return true
	}
}

func (f *gateFixture) parked() int {
	f.fs.gates.mu.Lock()
	defer f.fs.gates.mu.Unlock()
	return f.fs.gates.parked
}

func (f *gateFixture) pending() int {
	f.fs.notes.sendMu.Lock()
	defer f.fs.notes.sendMu.Unlock()
	return len(f.fs.notes.pending)
}

// waitParked waits until n requests are held.
func (f *gateFixture) waitParked(t *testing.T, n int) {
	t.Helper()
	testenv.Eventually(t, quick, "requests held: want "+strconv.Itoa(n), func() bool { return f.parked() == n })
}

// closeGate closes a gate and waits until it holds requests.
func (f *gateFixture) closeGate(t *testing.T, names []string, wait time.Duration) *Gate {
	t.Helper()
	g := f.fs.CloseGate(names, wait)
	testenv.Eventually(t, quick, "the gate was never armed", func() bool {
		f.fs.gates.mu.Lock()
		defer f.fs.gates.mu.Unlock()
		return g.armed
	})
	return g
}

// hide hides every token of name, as a key change does.
func (f *gateFixture) hide(t *testing.T, name string) {
	t.Helper()
	hid := false
	for _, info := range f.store.Infos() {
		if info.Name == name && !info.Hidden {
			hid = f.store.Hide(info.ID, token.RotatedKey, 0) || hid
		}
	}
	if !hid {
		t.Fatalf("nothing of %s to hide", name)
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// A tool's first look after a key change waits for the fresh token and
// finds it: the waiter wakes on the store change, and a miss of the name is
// never cached (the kernel still asks after a tool found nothing).
func TestGateWaitsForFreshToken(t *testing.T) {
	f := mountForUser(t, standIn(t))
	old, fresh := newToken(t, "old@x"), newToken(t, "fresh@x")
	f.put(t, "tokend-session", append(old, '\n'))
	if _, err := f.start(t, `cat "$MOUNT/tokend-session"; ls "$MOUNT"`).wait(t, quick); err != nil {
		t.Fatalf("warming the caches: %v", err)
	}
	f.hide(t, "tokend-session")
	g := f.closeGate(t, []string{"tokend-session"}, long)
	if isClosed(g.Waiting()) {
		t.Fatal("Waiting closed before anyone looked")
	}

	tl := f.start(t, `cat "$MOUNT/tokend-session"`)
	f.waitParked(t, 1)
	if !isClosed(g.Waiting()) {
		t.Fatal("a tool waits, but Waiting is not closed")
	}
	f.put(t, "tokend-session", append(fresh, '\n'))
	took, err := tl.wait(t, quick)
	if err != nil || tl.out.String() != string(fresh)+"\n" {
		t.Fatalf("the waiting cat: %v, %q (after %v), want the fresh token", err, tl.out.String(), took)
	}
	if n := f.pending(); n != 0 {
		t.Errorf("%d invalidations still held back with no request held", n)
	}
	// A miss of a gated name is never cached; other names' are.
	for name, want := range map[string]time.Duration{"tokend-session": 0, "other": f.fs.opt.CacheTTL} {
		h := fuse.InHeader{NodeId: rootIno, Caller: fuse.Caller{Owner: fuse.Owner{Uid: f.fs.opt.UID}}}
		if name == "tokend-session" {
			f.store.Remove(name)
		}
		var out fuse.EntryOut
		if st := f.fs.Lookup(nil, &h, name, &out); st != fuse.OK || out.NodeId != 0 || out.EntryTimeout() != want {
			t.Errorf("miss of %s: %v, node %d, cached for %v, want %v", name, st, out.NodeId, out.EntryTimeout(), want)
		}
	}
}

// With nothing coming, a waiting lookup answers by fetch.wait; Open
// answers at once.
func TestGateDeadlineAndOpen(t *testing.T) {
	f := mountForUser(t, standIn(t))
	t.Run("deadline", func(t *testing.T) {
		const wait = 700 * time.Millisecond
		f.closeGate(t, []string{"tokend-session"}, wait)
		tl := f.start(t, `test ! -e "$MOUNT/tokend-session"`)
		took, err := tl.wait(t, quick)
		if err != nil {
			t.Fatalf("test -e: %v, %s", err, tl.out.String())
		}
		if took < wait {
			t.Fatalf("answered after %v, before fetch.wait (%v)", took, wait)
		}
		// Expired: the next look does not wait.
		if took, _ := f.start(t, `test ! -e "$MOUNT/tokend-session"`).wait(t, quick); took >= wait {
			t.Fatalf("a look after the deadline took %v", took)
		}
	})
	t.Run("open", func(t *testing.T) {
		g := f.closeGate(t, []string{"tokend-session"}, long)
		tl := f.start(t, `ls "$MOUNT"; test ! -e "$MOUNT/tokend-session"`)
		f.waitParked(t, 1)
		g.Open()
		if _, err := tl.wait(t, quick); err != nil {
			t.Fatalf("after Open: %v, %s", err, tl.out.String())
		}
		if !isClosed(g.opened) {
			t.Fatal("Open did not open the gate")
		}
	})
	t.Run("already fresh", func(t *testing.T) {
		f.put(t, "tokend-session", append(newToken(t, "fresh@x"), '\n'))
		if g := f.fs.CloseGate([]string{"tokend-session"}, long); !isClosed(g.opened) {
			t.Fatal("a gate closed on a name the store shows")
		}
		if err := f.store.Remove("tokend-session"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unmount", func(t *testing.T) {
		f.closeGate(t, []string{"tokend-session"}, long)
		tl := f.start(t, `cat "$MOUNT/tokend-session"`)
		f.waitParked(t, 1)
		f.store.Wipe()
		if err := f.fs.Unmount(); err != nil {
			t.Fatal(err)
		}
		tl.wait(t, quick)
		if g := f.fs.CloseGate([]string{"tokend-session"}, long); !isClosed(g.opened) {
			t.Fatal("a gate closed after the unmount")
		}
	})
}

// Ctrl-C interrupts a waiting ls at once.
func TestGateInterrupt(t *testing.T) {
	f := mountForUser(t, standIn(t))
	f.closeGate(t, []string{"tokend-session"}, long)
	tl := f.startCmd(t, testenv.Command(f.user, "ls", f.dir))
	f.waitParked(t, 1)
	if err := tl.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	took, err := tl.wait(t, quick)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGINT {
		t.Fatalf("ls after SIGINT: %v after %v, want killed by SIGINT", err, took)
	}
	f.waitParked(t, 0)
}

// Two tokens hidden at once, a listing held at both gates, and a file
// created while it is held: nothing deadlocks with the notifier, whose
// entry invalidations wait for the held listing while its inode ones go on.
func TestGateTwoTokensAndTouch(t *testing.T) {
	f := mountForUser(t, standIn(t))
	other := newToken(t, "other@x")
	f.put(t, "other", append(other, '\n'))
	for _, name := range []string{"tokend-session", "tokend-b"} {
		f.put(t, name, append(newToken(t, name+"-old@x"), '\n'))
	}
	if _, err := f.start(t, `ls "$MOUNT"; cat "$MOUNT/tokend-session" "$MOUNT/tokend-b" >/dev/null`).wait(t, quick); err != nil {
		t.Fatalf("warming the caches: %v", err)
	}
	// A reader keeps another token open, its pages cached.
	fd, err := os.Open(f.path("other"))
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	reads := func() bool {
		buf := make([]byte, 4096)
		n, _ := fd.ReadAt(buf, 0)
		return strings.Contains(string(buf[:n]), string(other))
	}
	if !reads() {
		t.Fatal("cannot read the other token")
	}
	f.hide(t, "tokend-session")
	f.hide(t, "tokend-b")
	a := f.closeGate(t, []string{"tokend-session"}, long)
	b := f.closeGate(t, []string{"tokend-b"}, long)

	ls := f.start(t, `ls "$MOUNT"`)
	f.waitParked(t, 1)
	// Creating takes the directory's lock, which the held listing has:
	// touch waits for it, and its entry changes queue behind it.
	touch := f.start(t, `touch "$MOUNT/x" && echo touched`)
	freshA := append(newToken(t, "a@x"), '\n')
	f.put(t, "tokend-session", freshA)
	testenv.Eventually(t, quick, "gate a did not open on its fresh token", func() bool { return isClosed(a.opened) })
	if isClosed(b.opened) || !ls.running() {
		t.Fatal("the listing went on with gate b still closed")
	}
	// The fresh token's entry invalidation is held back; an inode
	// invalidation after it goes at once: the open reader stops reading
	// a removed token while the listing is still held.
	testenv.Eventually(t, quick, "the fresh token's entry invalidation was not held back", func() bool { return f.pending() > 0 })
	if err := f.store.Remove("other"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, quick, "an open reader still reads a removed token while a listing is held", func() bool { return !reads() })
	if f.parked() != 1 {
		t.Fatal("the listing is no longer held")
	}
	f.put(t, "tokend-b", append(newToken(t, "b@x"), '\n'))
	if _, err := ls.wait(t, quick); err != nil || !strings.Contains(ls.out.String(), "tokend-b") || !strings.Contains(ls.out.String(), "tokend-session") {
		t.Fatalf("ls: %v, %q: want both fresh tokens", err, ls.out.String())
	}
	if _, err := touch.wait(t, quick); err != nil || touch.out.String() != "touched\n" {
		t.Fatalf("touch: %v, %q", err, touch.out.String())
	}
	testenv.Eventually(t, quick, "invalidations still held back", func() bool { return f.pending() == 0 })
	tl := f.start(t, `cat "$MOUNT/tokend-session"`)
	if _, err := tl.wait(t, quick); err != nil || tl.out.String() != string(freshA) {
		t.Fatalf("cat after the gates: %v, %q", err, tl.out.String())
	}
}

// A gate holds requests only once its hide's invalidations have been
// sent: not while another gate holds a request (they are held back then).
func TestGateArmsAfterHide(t *testing.T) {
	f := mountForUser(t, standIn(t))
	for _, name := range []string{"tokend-a", "tokend-b"} {
		f.put(t, name, append(newToken(t, name+"@x"), '\n'))
	}
	if _, err := f.start(t, `cat "$MOUNT/tokend-a" "$MOUNT/tokend-b" >/dev/null`).wait(t, quick); err != nil {
		t.Fatalf("warming the caches: %v", err)
	}
	f.hide(t, "tokend-a")
	a := f.closeGate(t, []string{"tokend-a"}, long)
	tl := f.start(t, `cat "$MOUNT/tokend-a"`)
	f.waitParked(t, 1)

	f.hide(t, "tokend-b")
	b := f.fs.CloseGate([]string{"tokend-b"}, long)
	armed := func() bool {
		f.fs.gates.mu.Lock()
		defer f.fs.gates.mu.Unlock()
		return b.armed
	}
	// b's hide (a delete) and its arming are held back behind the held
	// request.
	testenv.Eventually(t, quick, "b's hide and arming were not held back", func() bool { return f.pending() >= 2 })
	if armed() {
		t.Fatal("gate b armed before its hide's invalidations were sent")
	}
	a.Open()
	if _, err := tl.wait(t, quick); err == nil {
		t.Fatalf("cat of a hidden token succeeded: %q", tl.out.String())
	}
	testenv.Eventually(t, quick, "gate b was not armed once its hide was sent", armed)
	if n := f.pending(); n != 0 {
		t.Fatalf("%d invalidations still held back", n)
	}
}

// rotate stands for a key change: a session token is shown, hidden (which
// drops the kernel's caches of it and of the listing), and its gate closed.
func (f *gateFixture) rotate(t *testing.T) *Gate {
	t.Helper()
	f.put(t, "tokend-session", append(newToken(t, "old@x"), '\n'))
	f.hide(t, "tokend-session")
	return f.closeGate(t, []string{"tokend-session"}, long)
}

// Only the user's own processes wait: never root (allow_root: HTCondor's
// schedd), never a process whose uids are not all the user's, never the
// agent or its descendants (its fetch command reads the directory too).
func TestGateWhoWaits(t *testing.T) {
	// The stand-in agent runs a fetcher that reads the directory when
	// told where it is.
	u := testenv.Lookup(t, testenv.UserName)
	agentIn, agentOut, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer agentIn.Close()
	agentOutput := &syncbuf.Buffer{}
	agent := testenv.Command(u, "sh", "-c", `read MOUNT; ls "$MOUNT"; cat "$MOUNT/tokend-session"; echo "fetched"`)
	agent.Stdin, agent.Stdout, agent.Stderr = agentIn, agentOutput, agentOutput
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	agentIn.Close()
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Wait() }()
	t.Cleanup(func() { agentOut.Close(); agent.Process.Kill(); <-agentDone })
	f := mountForUser(t, agent.Process.Pid)

	t.Run("agent's descendants", func(t *testing.T) {
		f.rotate(t)
		// A user's tool waits...
		user := f.start(t, `ls "$MOUNT"; cat "$MOUNT/tokend-session"`)
		f.waitParked(t, 1)
		// ...while the agent's fetcher lists the directory and looks up
		// the session token, and gets on. (It does not look up the name
		// a held request is looking up: the kernel would queue it
		// behind that one.)
		if _, err := io.WriteString(agentOut, f.dir+"\n"); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-agentDone:
			agentDone <- err
		case <-time.After(quick):
			t.Fatalf("the agent's fetcher was held: %q", agentOutput.String())
		}
		if !strings.HasSuffix(agentOutput.String(), "fetched\n") || f.parked() != 1 {
			t.Fatalf("fetcher output %q, %d held", agentOutput.String(), f.parked())
		}
		// Its token reaches the waiting tool.
		fresh := append(newToken(t, "fresh@x"), '\n')
		f.put(t, "tokend-session", fresh)
		if _, err := user.wait(t, quick); err != nil || user.out.String() != "tokend-session\n"+string(fresh) {
			t.Fatalf("the waiting tool: %v, %q", err, user.out.String())
		}
	})
	t.Run("root", func(t *testing.T) {
		g := f.rotate(t)
		root := testenv.Command(testenv.User{UID: 0}, "sh", "-c", `ls "$MOUNT"; test ! -e "$MOUNT/tokend-session"`)
		tl := f.startCmd(t, root)
		if took, err := tl.wait(t, quick); err != nil || isClosed(g.Waiting()) {
			t.Fatalf("root: %v after %v (%q), a tool waiting: %v", err, took, tl.out.String(), isClosed(g.Waiting()))
		}
	})
	t.Run("mixed uids", func(t *testing.T) {
		g := f.rotate(t)
		other := testenv.Lookup(t, testenv.OtherName)
		cmd := exec.Command("setpriv", "--ruid="+strconv.Itoa(other.UID), "--euid="+strconv.Itoa(u.UID),
			"--rgid="+strconv.Itoa(other.GID), "--egid="+strconv.Itoa(u.GID), "--clear-groups",
			// -p: the shell keeps the mixed uids.
			"sh", "-p", "-c", `grep ^Uid: /proc/self/status; ls "$MOUNT"; test ! -e "$MOUNT/tokend-session"`)
		tl := f.startCmd(t, cmd)
		want := fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d\n", other.UID, u.UID, u.UID, u.UID)
		if _, err := tl.wait(t, quick); err != nil || tl.out.String() != want || isClosed(g.Waiting()) {
			t.Fatalf("%v, %q (want %q), a tool waiting: %v", err, tl.out.String(), want, isClosed(g.Waiting()))
		}
	})
}

// The agent is a child subreaper: a double-forked child of its fetch
// command stays its descendant, and is never held; once it exits, the
// reaper reaps it.
func TestGateDoubleForkedChildOfAgent(t *testing.T) {
	if err := reaper.Start(slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	f := mountForUser(t, 0) // this process is the agent
	g := f.closeGate(t, []string{"tokend-session"}, long)
	out := testenv.Dir(t, f.user)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// The grandchild writes its pid, waits until told (its parents are
	// gone by then), then reads the directory.
	cmd := testenv.Command(f.user, "sh", "-c", `(sh -c 'echo $$ > "$OUT/pid"; read x; ls "$MOUNT"; test ! -e "$MOUNT/tokend-session" && echo done > "$OUT/done"' &); exit 0`)
	cmd.Env = append(cmd.Env, "MOUNT="+f.dir, "OUT="+out)
	cmd.Stdin = r
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	var pid int
	testenv.Eventually(t, quick, "the grandchild did not start", func() bool {
		b, err := os.ReadFile(out + "/pid")
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	st, err := readProcStatus(pid)
	if err != nil || st.ppid != os.Getpid() {
		t.Fatalf("the orphan's parent is %d (%v), want this process %d (a child subreaper)", st.ppid, err, os.Getpid())
	}
	w.WriteString("go\n")
	testenv.Eventually(t, quick, "the double-forked child was held", func() bool {
		_, err := os.Stat(out + "/done")
		return err == nil
	})
	if isClosed(g.Waiting()) {
		t.Error("the agent's double-forked child counted as a waiting tool")
	}
	testenv.Eventually(t, quick, "the exited orphan was not reaped", func() bool {
		_, err := os.Stat("/proc/" + strconv.Itoa(pid))
		return errors.Is(err, os.ErrNotExist)
	})
}

// A second key change's gate on the same name opens the first: one gate
// per name, the newest.
func TestGateSupersededByNewer(t *testing.T) {
	f := mountForUser(t, standIn(t))
	f.put(t, "tokend-session", append(newToken(t, "a@x"), '\n'))
	f.hide(t, "tokend-session")
	older := f.closeGate(t, []string{"tokend-session"}, long)
	newer := f.closeGate(t, []string{"tokend-session"}, long)
	if !isClosed(older.opened) {
		t.Fatal("the older gate on the name stayed closed under the newer one")
	}
	if isClosed(newer.opened) {
		t.Fatal("the newer gate opened")
	}
	newer.Open()
}
