package main

// Faults: what the agent does when the fetch command hangs, crashes or
// prints garbage, when its mount is taken away, when the machine lacks
// fusermount3 or a usable /dev/fuse, when memory cannot be locked, and when
// another user took its socket directory. Each must give a clear error and
// cost no token. Then the agent's own memory: no other process of the user
// may read it.

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/mounttab"
	"github.com/tokend/tokend/token"
)

// A fetch that hangs is killed at the timeout, with its whole process
// group; meanwhile the agent keeps serving, and a good token stays.
func TestFetchHangs(t *testing.T) {
	e := newEnv(t, nil)
	f := e.useFetcher(2 * time.Second)
	e.start()
	before := e.read().Pick
	extra := e.sign("extra@test.example", time.Hour)
	if errno := e.write("write", "zz-extra", extra); errno != "" { // sorts after the session token
		t.Fatalf("writing a second token: %s", errno)
	}

	f.set(fetchHang)
	fetch := e.cliAsync("fetch")
	testenv.Eventually(t, 10*time.Second, "the fetch command did not start", func() bool { return pidIn(f.pidFile) != 0 })
	hung := pidIn(f.pidFile)
	// While the fetch hangs: status answers, the tools read the tokens.
	if st := e.mustStatus(); !st.Mounted {
		t.Fatalf("status while a fetch hangs: %+v", st)
	}
	if r := e.read(); r.Pick != before || len(r.Files) != 2 {
		t.Fatalf("while a fetch hangs the tools read %+v", r.Files)
	}
	var res cliResult
	select {
	case res = <-fetch:
	case <-time.After(30 * time.Second):
		t.Fatal("tokend fetch did not return within 30 s of a 2 s fetch timeout")
	}
	if res.code != exitFetch {
		t.Fatalf("tokend fetch of a hanging command: exit %d, want %d: %s", res.code, exitFetch, res.stderr)
	}
	mustMatch(t, "tokend fetch's error", res.stderr, "condor_token_fetch timed out after 2s", "raise the fetch timeout")
	testenv.Eventually(t, 10*time.Second, "the hung fetch command was left running", func() bool { return !alive(hung) })
	if r := e.read(); r.Pick != before {
		t.Fatal("a fetch that timed out replaced the session token")
	}

	// The agent's own fetch at login hangs too: status says so, a token
	// already on disk is served meanwhile, and the agent retries.
	e.stop()
	e.writeFile(filepath.Join(e.dir, "zz-extra"), string(extra)+"\n", 0o600)
	e.launch()
	e.waitFailed("condor_token_fetch timed out after 2s")
	out, _, _ := e.cli("status")
	mustMatch(t, "tokend status", out, "last error:", "condor_token_fetch timed out after 2s")
	if r := e.read(); r.Pick != string(extra) {
		t.Fatalf("while the session fetch fails the tools pick %q, want the token from disk", r.Pick)
	}
	f.set(fetchGood)
	e.waitReady()
	e.running()

	// A logout while a fetch hangs does not wait for it: the agent exits
	// at once and takes the fetch command with it.
	os.Remove(f.pidFile)
	f.set(fetchHang)
	fetch = e.cliAsync("fetch")
	testenv.Eventually(t, 10*time.Second, "the fetch command did not start", func() bool { return pidIn(f.pidFile) != 0 })
	hung = pidIn(f.pidFile)
	stopped := time.Now()
	e.stop()
	if took := time.Since(stopped); took >= 2*time.Second {
		t.Errorf("the agent took %v to stop while a fetch hung: it waited for the fetch timeout (2s)", took)
	}
	if res := <-fetch; res.code == 0 {
		t.Errorf("tokend fetch succeeded although the agent stopped: %s", res.stdout)
	}
	testenv.Eventually(t, 10*time.Second, "the hung fetch command outlived the agent", func() bool { return !alive(hung) })
}

// A fetch command that fails as condor_token_fetch does: HTCondor's
// message reaches `tokend fetch` (exit 5) and `tokend status`.
func TestFetchCrashes(t *testing.T) {
	e := newEnv(t, nil)
	f := e.useFetcher(10 * time.Second)
	onDisk := e.sign("disk@test.example", time.Hour)
	e.mkdir(e.dir)
	e.writeFile(filepath.Join(e.dir, "zz-disk"), string(onDisk)+"\n", 0o600)
	f.set(fetchCrash)
	e.launch()
	e.waitFailed("Failed to request a session token: AUTHENTICATE:1003")
	out, _, _ := e.cli("status")
	mustMatch(t, "tokend status", out, "tokend-session: failed", "last error:", "Failed to request a session token: AUTHENTICATE:1003")
	e.waitLog("could not fetch the session token", "Failed to request a session token")
	if r := e.read(); r.Pick != string(onDisk) {
		t.Fatalf("while the session fetch fails the tools pick %q, want the token from disk", r.Pick)
	}
	_, stderr, code := e.cli("fetch")
	if code != exitFetch {
		t.Fatalf("tokend fetch: exit %d, want %d: %s", code, exitFetch, stderr)
	}
	mustMatch(t, "tokend fetch's error", stderr, "Failed to request a session token: AUTHENTICATE:1003")

	// The agent retries on its own; a later failure costs nothing.
	f.set(fetchGood)
	e.waitReady()
	session := e.sessionToken()
	f.set(fetchCrash)
	if _, stderr, code := e.cli("fetch"); code != exitFetch {
		t.Fatalf("tokend fetch: exit %d, want %d: %s", code, exitFetch, stderr)
	}
	if got := e.sessionToken(); string(got) != string(session) {
		t.Fatal("a failed fetch replaced the session token")
	}
	e.running()
}

// A fetch command that prints something other than one token: an error,
// nothing stored, and what it printed appears nowhere.
func TestFetchPrintsGarbage(t *testing.T) {
	e := newEnv(t, nil)
	f := e.useFetcher(10 * time.Second)
	e.start()
	listing := func() string { b, _ := json.Marshal(e.tokens(true)); return string(b) }
	before := listing()
	pick := e.read().Pick

	for _, c := range []struct{ mode, says string }{
		{fetchGarbage, "printed 2 lines that are not a token"},
		{fetchTwo, "printed 2 tokens, want exactly one"},
	} {
		f.set(c.mode)
		_, stderr, code := e.cli("fetch", "--name", "fresh")
		if code != exitFetch {
			t.Fatalf("%s: tokend fetch: exit %d, want %d: %s", c.mode, code, exitFetch, stderr)
		}
		mustMatch(t, c.mode+": tokend fetch's error", stderr, c.says)
		if strings.Contains(stderr, f.garbageMarker) {
			t.Fatalf("%s: the error quotes what the command printed: %s", c.mode, stderr)
		}
	}
	// A token signed with another key: structurally fine, not usable.
	otherKey := make([]byte, 32)
	rand.Read(otherKey)
	stranger, err := token.Sign(token.Claims{Issuer: "test.example", Subject: e.u.Name + "@test.example", Lifetime: time.Hour}, token.PoolKeyName, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	e.secrets = append(e.secrets, stranger)
	e.writeFile(f.token, string(stranger)+"\n", 0o600)
	e.writeFile(f.mode, fetchGood, 0o600)
	_, stderr, code := e.cli("fetch", "--name", "fresh")
	if code != exitFetch {
		t.Fatalf("a token with another key: exit %d, want %d: %s", code, exitFetch, stderr)
	}
	mustMatch(t, "tokend fetch's error", stderr, "the fetched token is not usable: rotated-key")

	if after := listing(); after != before {
		t.Fatalf("failed fetches changed the tokens:\nbefore %s\nafter  %s", before, after)
	}
	if r := e.read(); r.Pick != pick || len(r.Files) != 1 {
		t.Fatalf("after failed fetches the tools read %+v", r.Files)
	}
	if strings.Contains(e.log.String(), f.garbageMarker) {
		t.Fatal("what the fetch command printed reached the agent's log")
	}
	e.running()
}

// Someone unmounts the token directory under the agent (fusermount3 -u,
// umount): the tools no longer see the tokens, so the agent wipes them and
// exits with an error rather than hold them for nobody; its service
// manager starts it again, which mounts afresh.
func TestMountRemovedUnderAgent(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	before := e.read().Pick
	// Unmounted, and the mount point itself removed.
	if _, stderr, code := e.runAs(e.u, "", "sh", "-c", `fusermount3 -u -z "$0" && rmdir "$0"`, e.dir); code != 0 {
		t.Fatalf("fusermount3 -u -z and rmdir: exit %d: %s", code, stderr)
	}
	if code := e.waitExit(10 * time.Second); code != exitFailure {
		t.Fatalf("after its mount was taken away the agent exited %d, want %d:\n%s", code, exitFailure, e.log)
	}
	mustMatch(t, "the agent's log", e.log.String(), "was unmounted under the agent: tokens wiped", "systemctl --user restart tokend")
	e.nothingLeft()
	if _, stderr, code := e.cli("status"); code != exitNoAgent {
		t.Fatalf("status after the agent exited: exit %d: %s", code, stderr)
	}
	// Started again (as systemd's Restart=on-failure does), it makes the
	// directory, mounts and fetches afresh.
	e.start()
	if after := e.read().Pick; after == "" || after == before {
		t.Fatalf("after a restart the tools pick %q (before: %q)", after, before)
	}
}

// The mount point made unreachable (its parent's permissions taken away)
// is the user's doing and the agent cannot undo it: the agent keeps
// serving, and once the parent is reachable again the token is as it was.
func TestMountPointUnreadable(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	before := e.read().Pick
	// The mount point itself keeps its mode.
	if _, stderr, code := e.runAs(e.u, "", "chmod", "000", e.dir); code == 0 || !strings.Contains(stderr, "Operation not permitted") {
		t.Fatalf("chmod 000 of the mount point: exit %d: %s", code, stderr)
	}
	if err := os.Chmod(e.work, 0o000); err != nil {
		t.Fatal(err)
	}
	var res map[string]string
	e.sim(e.u, &res, "", "access", e.dir, "tokend-session")
	if res["readdir"] != "EACCES" || res["stat"] != "EACCES" {
		t.Fatalf("with its parent at mode 0000 the mount gives %v, want EACCES", res)
	}
	if err := os.Chmod(e.work, 0o700); err != nil {
		t.Fatal(err)
	}
	e.running()
	if after := e.read().Pick; after != before {
		t.Fatalf("after the parent came back the tools pick %q, want the same token", after)
	}
	if st := e.mustStatus(); !st.Mounted || st.Session.State != api.SessionValid {
		t.Fatalf("status: %+v", st)
	}
}

// Without fusermount3 (fuse3 not installed) an ordinary user cannot mount:
// the agent says what to install, exits non-zero, leaves nothing behind.
func TestFusermountMissing(t *testing.T) {
	e := newEnv(t, nil)
	// Hide every fusermount: a non-executable file over the binary, seen
	// only in the agent's mount namespace.
	empty := filepath.Join(t.TempDir(), "not-fusermount3")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	bin, err := filepath.EvalSymlinks("/usr/bin/fusermount3")
	if err != nil {
		t.Fatal(err)
	}
	out := e.failsToStart(e.inNamespace("mount --bind " + empty + " " + bin))
	mustMatch(t, "the agent's error", out, "fusermount3 is missing or not executable: install fuse3", "tokend doctor")
}

// A /dev/fuse that ordinary users cannot open (a fresh machine's
// crw------- root): a clear error, exit non-zero, nothing left behind.
func TestDevFuseUnusable(t *testing.T) {
	e := newEnv(t, nil)
	// A private /dev/fuse of mode 0600 in the agent's mount namespace: the
	// machine's own stays as it is for the tests running beside this one.
	node := filepath.Join(t.TempDir(), "fuse")
	out := e.failsToStart(e.inNamespace("mknod -m 600 " + node + " c 10 229 && mount --bind " + node + " /dev/fuse"))
	mustMatch(t, "the agent's error", out, "cannot open /dev/fuse (permission denied)", "chmod 666 /dev/fuse", "tokend doctor")
}

// With RLIMIT_MEMLOCK at 0 nothing can be locked in memory: the agent
// works, warns once, and status says memory is not locked.
func TestMemlockZero(t *testing.T) {
	e := newEnv(t, nil)
	e.launchCmd(e.agentCmd("prlimit", "--memlock=0:0", "--"))
	e.waitReady()
	e.waitLog("secret memory is not locked", "RLIMIT_MEMLOCK")
	if n := strings.Count(e.log.String(), "secret memory is not locked"); n != 1 {
		t.Errorf("the warning was logged %d times, want once", n)
	}
	if st := e.mustStatus(); st.MemoryLocked {
		t.Fatalf("status says memory is locked with RLIMIT_MEMLOCK 0: %+v", st)
	}
	out, _, _ := e.cli("status")
	mustMatch(t, "tokend status", out, "NOT locked", "RLIMIT_MEMLOCK")
	if r := e.read(); r.Pick == "" {
		t.Fatal("without locked memory the tools see no token")
	}
	// The control: with the default limit memory is locked.
	e.stop()
	e.start()
	if st := e.mustStatus(); !st.MemoryLocked {
		t.Fatalf("with the default RLIMIT_MEMLOCK status says memory is not locked")
	}
}

// Another user took the socket directory: the agent refuses it, says whose
// it is, exits non-zero, and mounts nothing.
func TestSocketDirTaken(t *testing.T) {
	e := newEnv(t, nil)
	other := testenv.Lookup(t, testenv.OtherName)
	dir := filepath.Dir(e.sock)
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, other.UID, other.GID); err != nil {
		t.Fatal(err)
	}
	out := e.failsToStart(e.agentCmd())
	mustMatch(t, "the agent's error", out, dir, "belongs to uid "+itoa(other.UID), "another user took it")
	if _, err := os.Stat(e.dir); err == nil && mounttab.Mounted(e.dir) {
		t.Fatal("the agent mounted although it could not serve its socket")
	}
}

// No other process of the user can read the agent's memory or environment:
// not /proc/PID/mem, not environ, not process_vm_readv, not ptrace. An
// ordinary process of the same user, the control, can be read all four ways.
func TestAgentMemoryUnreadable(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	peek := testenv.Build(t, "./internal/testenv/peek")
	try := func(pid int) map[string]string {
		out, stderr, code := e.runAs(e.u, "", peek, itoa(pid))
		if code != 0 {
			t.Fatalf("peek %d: exit %d: %s", pid, code, stderr)
		}
		var res map[string]string
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("peek: %v: %s", err, out)
		}
		return res
	}

	control := testenv.Command(e.u, "sleep", "60")
	if err := control.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { control.Process.Kill(); control.Wait() })
	for op, errno := range try(control.Process.Pid) {
		if errno != "" {
			t.Fatalf("control: the user cannot even read its own ordinary process (%s: %s); the test proves nothing here", op, errno)
		}
	}

	res := try(e.agent.Pid())
	for _, op := range []string{"maps", "mem", "environ", "process_vm_readv", "ptrace"} {
		if errno := res[op]; errno != "EACCES" && errno != "EPERM" {
			t.Errorf("another process of the user: %s of the agent -> %q, want EACCES or EPERM", op, errno)
		}
	}
	e.running()
	if r := e.read(); r.Pick == "" {
		t.Fatal("the agent lost its token")
	}
}

// Root without allow_root is refused every operation on the mount, as
// another user is (TestOthersAreRefused): a process whose uids are all 0,
// not only this test process.
func TestRootRefusedEverywhere(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	root := testenv.User{Name: "root", UID: 0, GID: 0, Home: "/root"}
	var res map[string]string
	e.sim(root, &res, "", "access", e.dir, "tokend-session")
	// statfs is answered by the kernel for everyone, with nothing in it.
	delete(res, "statfs")
	for op, errno := range res {
		if errno != "EACCES" {
			t.Errorf("root: %s -> %q, want EACCES", op, errno)
		}
	}
	if len(res) < 20 {
		t.Fatalf("only %d operations tried: %v", len(res), res)
	}
	if r := e.read(); r.Pick == "" {
		t.Fatal("the owner lost the token")
	}
}

// The kernel's connection to the agent aborted (an administrator writing
// to /sys/fs/fuse/connections/N/abort): the mount point answers ENOTCONN.
// The agent notices as it does an unmount, wipes, detaches the dead mount
// and exits with an error.
func TestConnectionAborted(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	conn := fuseConnection(t, e.dir)
	// fusectl mounted in a namespace of its own: the machine's /sys stays as it is.
	abort := exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-euc",
		`mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections; echo 1 > /sys/fs/fuse/connections/$1/abort`, "sh", conn)
	if out, err := abort.CombinedOutput(); err != nil {
		t.Fatalf("aborting FUSE connection %s: %v: %s", conn, err, out)
	}
	if code := e.waitExit(10 * time.Second); code != exitFailure {
		t.Fatalf("after its connection was aborted the agent exited %d, want %d:\n%s", code, exitFailure, e.log)
	}
	mustMatch(t, "the agent's log", e.log.String(), "tokens wiped")
	e.nothingLeft()
	var res map[string]string
	e.sim(e.u, &res, "", "access", e.dir, "tokend-session")
	if res["stat-dir"] != "" {
		t.Fatalf("after the agent exited the mount point gives %q, want a plain directory", res["stat-dir"])
	}
}

// fuseConnection returns the FUSE connection number (the device minor) of
// the mount at dir.
func fuseConnection(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			_, minor, _ := strings.Cut(f[2], ":")
			return minor
		}
	}
	t.Fatalf("%s is not mounted", dir)
	return ""
}

// legacy = "move" deletes the token files it imported from disk only once
// the mount is up: when the mount fails they stay where they were.
func TestLegacyMoveSurvivesFailedMount(t *testing.T) {
	e := newEnv(t, map[string]string{"legacy": `"move"`})
	e.mkdir(e.dir)
	old := e.sign("disk@test.example", time.Hour)
	file := filepath.Join(e.dir, "ondisk")
	e.writeFile(file, string(old)+"\n", 0o600)

	node := filepath.Join(t.TempDir(), "fuse")
	e.failsToStart(e.inNamespace("mknod -m 600 " + node + " c 10 229 && mount --bind " + node + " /dev/fuse"))
	if got, err := os.ReadFile(file); err != nil || string(got) != string(old)+"\n" {
		t.Fatalf("a mount that failed cost the token on disk: %q, %v", got, err)
	}

	e.start()
	if !strings.Contains(strings.Join(e.read().Files[0].Tokens, ""), string(old)) {
		t.Fatal("the token on disk was not imported")
	}
	e.stop()
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("legacy = move left the file once the mount was up: %v", err)
	}
}
