package main

// The systemd user unit under a real systemd user manager. PID 1 is not
// systemd on the test machines; ENVIRONMENT.md's recipe makes `systemd
// --user` run anyway: /run/systemd/system, a delegated cgroup per
// hierarchy, a fresh /run/user/UID, and the manager started as the user.

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/proc"
	"github.com/tokend/tokend/mounttab"
)

const systemdBinary = "/lib/systemd/systemd"

// userManager is a running `systemd --user` for one user.
type userManager struct {
	t       *testing.T
	u       testenv.User
	runtime string // /run/user/UID, the manager's XDG_RUNTIME_DIR
	units   string // runtime/systemd/user: where the test's units go
	p       *proc.Proc
	log     *syncbuf.Buffer
}

// newUserManager prepares the user manager's surroundings and registers
// their removal; install and enable units in m.units, then call start.
func newUserManager(t *testing.T, u testenv.User) *userManager {
	t.Helper()
	for _, tool := range []string{systemdBinary, "/usr/bin/systemctl", "/usr/bin/setpriv"} {
		if _, err := os.Stat(tool); err != nil {
			t.Fatalf("%s is missing: apt-get install -y systemd util-linux (.ci/setup does)", tool)
		}
	}
	if exe, _ := os.Readlink("/proc/1/exe"); strings.Contains(exe, "systemd") {
		t.Fatal("PID 1 is systemd here: this test emulates a booted systemd (ENVIRONMENT.md) and would fight the real one; run it on a test machine")
	}
	exclusive(t)
	m := &userManager{t: t, u: u, runtime: filepath.Join("/run/user", strconv.Itoa(u.UID)), log: &syncbuf.Buffer{}}
	m.units = filepath.Join(m.runtime, "systemd", "user")

	// A cgroup per hierarchy, delegated to the user.
	for _, cg := range cgroupRoots() {
		m.makeCgroup(cg)
	}

	// A fresh runtime directory.
	if err := os.RemoveAll(m.runtime); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(m.units, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(m.runtime, 0o700); err != nil {
		t.Fatal(err)
	}
	m.chownTree(m.runtime)
	t.Cleanup(func() { os.RemoveAll(m.runtime) })
	return m
}

// cgroupRoots are the hierarchies a user manager needs a cgroup in: the
// named systemd v1 hierarchy and the unified one, or the root of a pure v2
// system.
func cgroupRoots() []string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.subtree_control"); err == nil {
		return []string{"/sys/fs/cgroup"}
	}
	var roots []string
	for _, h := range []string{"systemd", "unified"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", h, "cgroup.procs")); err == nil {
			roots = append(roots, filepath.Join("/sys/fs/cgroup", h))
		}
	}
	return roots
}

// cgroupDirs are the user's manager cgroup and its parents under root,
// outermost first.
func (m *userManager) cgroupDirs(root string) []string {
	uid := strconv.Itoa(m.u.UID)
	slice := filepath.Join(root, "user.slice")
	user := filepath.Join(slice, "user-"+uid+".slice")
	return []string{slice, user, filepath.Join(user, "user@"+uid+".service")}
}

func (m *userManager) makeCgroup(root string) {
	m.t.Helper()
	dirs := m.cgroupDirs(root)
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err == nil {
			m.t.Cleanup(func() { removeCgroup(m.t, d) })
		} else if !errors.Is(err, fs.ErrExist) {
			m.t.Fatal(err)
		}
	}
	m.chownTree(dirs[len(dirs)-1])
}

// removeCgroup removes a cgroup and the ones the manager made inside it,
// innermost first. A cgroup holding a process cannot go: that is a leak.
func removeCgroup(t *testing.T, dir string) {
	var dirs []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.Reverse(dirs)
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			procs, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			t.Errorf("cleanup: cgroup %s: %v (processes: %q)", d, err, procs)
		}
	}
}

func (m *userManager) chownTree(dir string) {
	m.t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, m.u.UID, m.u.GID)
	})
	if err != nil {
		m.t.Fatal(err)
	}
}

// install writes a unit file (or drop-in, for a name with a slash) into
// the user's runtime unit directory.
func (m *userManager) install(name, content string) {
	m.t.Helper()
	p := filepath.Join(m.units, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		m.t.Fatal(err)
	}
	m.chownTree(filepath.Join(m.runtime, "systemd"))
}

// start runs `systemd --user` as the user, moved into its cgroups first,
// and waits until it is up.
func (m *userManager) start() {
	m.t.Helper()
	// Make the manager believe systemd booted. Only now: while this
	// exists, systemctl (and apt's scripts) believe it too and look for
	// a bus.
	if err := os.Mkdir("/run/systemd/system", 0o755); err == nil {
		m.t.Cleanup(func() {
			if err := os.Remove("/run/systemd/system"); err != nil {
				m.t.Errorf("cleanup: %v", err)
			}
		})
	} else if !errors.Is(err, fs.ErrExist) {
		m.t.Fatal(err)
	}
	var script strings.Builder
	for _, root := range cgroupRoots() {
		dirs := m.cgroupDirs(root)
		script.WriteString("echo $$ > " + filepath.Join(dirs[len(dirs)-1], "cgroup.procs") + " && ")
	}
	script.WriteString(`exec setpriv --reuid="$U" --regid="$G" --init-groups env -i HOME="$H" USER="$N" LOGNAME="$N" PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR="$R" ` + systemdBinary + " --user")
	cmd := exec.Command("/bin/sh", "-c", script.String())
	cmd.Env = []string{"U=" + strconv.Itoa(m.u.UID), "G=" + strconv.Itoa(m.u.GID), "H=" + m.u.Home, "N=" + m.u.Name, "R=" + m.runtime, "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var err error
	if m.p, err = proc.Start(cmd, m.log); err != nil {
		m.t.Fatal(err)
	}
	// Registered after the cgroups and directories: runs before their removal.
	m.t.Cleanup(m.stop)
	testenv.Eventually(m.t, 30*time.Second, "the user manager to start", func() bool {
		if m.p.Exited() {
			m.t.Fatalf("systemd --user exited:\n%s", m.log)
		}
		out, _ := m.systemctl("is-system-running")
		return out == "running" || out == "degraded"
	})
}

// stop ends the manager with SIGTERM, as at the last logout: it stops every
// unit first.
func (m *userManager) stop() {
	if m.p == nil {
		return
	}
	if err := m.p.Stop(30 * time.Second); errors.Is(err, proc.ErrKilled) {
		m.t.Errorf("the user manager did not stop within 30s of SIGTERM")
	}
	m.p = nil
}

// systemctl runs `systemctl --user ARGS` as the user.
func (m *userManager) systemctl(args ...string) (string, error) {
	cmd := testenv.Command(m.u, "systemctl", append([]string{"--user"}, args...)...)
	cmd.Env = append(cmd.Env, "XDG_RUNTIME_DIR="+m.runtime)
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (m *userManager) mainPID(unit string) int {
	m.t.Helper()
	out, err := m.systemctl("show", "--property=MainPID", "--value", unit)
	if err != nil {
		m.t.Fatalf("systemctl show: %v: %s", err, out)
	}
	pid, _ := strconv.Atoi(out)
	return pid
}

// The unit as shipped: started with the user manager (enabled through its
// [Install] section), mounted when systemctl start returns (Type=notify),
// wiped by systemctl stop, brought back with a fresh token after a
// SIGKILL, wiped when the manager stops at the last logout.
func TestSystemdUserUnit(t *testing.T) {
	e := newEnv(t, map[string]string{"socket": `""`})
	m := newUserManager(t, e.u)
	e.sock = filepath.Join(m.runtime, "tokend", "agent.sock")
	unit, err := os.ReadFile(filepath.Join(testenv.ModuleRoot(t), "systemd", "tokend.service"))
	if err != nil {
		t.Fatal(err)
	}
	agentLog := filepath.Join(e.work, "agent.log")
	m.install("tokend.service", string(unit))
	// Only the binary and the config differ from an installed system; the
	// unit has no journal here, so its output goes to a file.
	m.install("tokend.service.d/test.conf", "[Service]\nExecStart=\nExecStart="+e.bin+" agent --config "+e.config+
		"\nStandardOutput=append:"+agentLog+"\nStandardError=inherit\n")
	if out, err := m.systemctl("--runtime", "enable", "tokend.service"); err != nil {
		t.Fatalf("systemctl --user enable: %v: %s", err, out)
	}
	m.start()

	// Started with the manager, as at the first login.
	testenv.Eventually(t, 30*time.Second, "the unit to start with the manager", func() bool {
		out, _ := m.systemctl("is-active", "tokend.service")
		return out == "active"
	})
	pid := m.mainPID("tokend.service")
	assertRunsAsUser(t, pid, e.u)
	e.waitReady()
	first := e.read().Pick
	if first == "" {
		t.Fatal("the mount holds no token")
	}
	for path, want := range map[string]os.FileMode{filepath.Dir(e.sock): 0o700, e.sock: 0o600} {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: %v, %v; want %v", path, st.Mode(), err, want)
		}
	}

	// systemctl stop wipes and unmounts before it returns.
	if out, err := m.systemctl("stop", "tokend.service"); err != nil {
		t.Fatalf("systemctl --user stop: %v: %s", err, out)
	}
	if mounttab.Mounted(e.dir) || running(pid) {
		t.Fatalf("after systemctl stop: mounted %v, agent running %v", mounttab.Mounted(e.dir), running(pid))
	}
	if _, err := os.Stat(filepath.Dir(e.sock)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the runtime directory outlived the unit: %v", err)
	}

	// systemctl start returns once the directory is mounted (READY=1).
	if out, err := m.systemctl("start", "tokend.service"); err != nil {
		t.Fatalf("systemctl --user start: %v: %s\n%s", err, out, readFile(agentLog))
	}
	if !mounttab.Mounted(e.dir) {
		t.Fatal("systemctl start returned before the directory was mounted")
	}
	e.waitReady()
	second := e.read().Pick
	if second == "" || second == first {
		t.Fatalf("after a restart the tools read %q: want a fresh token", second)
	}

	// A crash: systemd restarts the agent, which recovers the dead mount.
	crashed := m.mainPID("tokend.service")
	syscall.Kill(crashed, syscall.SIGKILL)
	testenv.Eventually(t, 30*time.Second, "systemd to restart the killed agent", func() bool {
		pid := m.mainPID("tokend.service")
		out, _ := m.systemctl("is-active", "tokend.service")
		return pid != 0 && pid != crashed && out == "active"
	})
	e.waitReady()
	third := e.read().Pick
	if third == "" || third == second {
		t.Fatalf("after the crash the tools read %q: want a fresh token", third)
	}
	if log := readFile(agentLog); !strings.Contains(log, "detached a dead mount") {
		t.Errorf("the restarted agent did not recover the dead mount:\n%s", log)
	}

	// The last logout: the manager stops, and with it the unit.
	last := m.mainPID("tokend.service")
	m.stop()
	if mounttab.Mounted(e.dir) || running(last) {
		t.Fatalf("after the manager stopped: mounted %v, agent running %v", mounttab.Mounted(e.dir), running(last))
	}
	log := readFile(agentLog)
	if n := strings.Count(log, "tokens wiped and directory unmounted"); n != 2 {
		t.Errorf("the agent logged %d clean wipes, want 2 (stop, manager stop):\n%s", n, log)
	}
	e.log = &syncbuf.Buffer{} // the harness searches the agent's log for tokens
	e.log.Write([]byte(log))
	assertNoResidue(t, e.secrets)
}

// assertRunsAsUser checks that pid runs with u's uid and no capability.
func assertRunsAsUser(t *testing.T, pid int, u testenv.User) {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		if k == "Uid" && v != strings.Repeat(strconv.Itoa(u.UID)+"\t", 3)+strconv.Itoa(u.UID) {
			t.Errorf("agent uids %q, want %d", v, u.UID)
		}
		if k == "CapEff" && v != "0000000000000000" {
			t.Errorf("agent capabilities %s", v)
		}
	}
}

// systemd-analyze verify passes on every unit we ship: the system units as
// root, the user unit as a user. ExecStart must name an existing binary, so
// the units are checked with the built one in its place.
func TestSystemdUnitsVerify(t *testing.T) {
	u := testenv.Lookup(t, testenv.UserName)
	bin := testenv.Build(t, "./cmd/tokend")
	units, err := filepath.Glob(filepath.Join(testenv.ModuleRoot(t), "systemd", "*.s*"))
	if err != nil || len(units) < 3 {
		t.Fatalf("units in systemd/: %v, %v", units, err)
	}
	dir := testenv.Dir(t, u)
	runtime := testenv.Dir(t, u)
	var system, user []string
	for _, src := range units {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "ExecStart=/usr/bin/tokend ") && strings.HasSuffix(src, ".service") {
			t.Errorf("%s: ExecStart is not /usr/bin/tokend (make install and the package rewrite that path)", src)
		}
		dst := filepath.Join(dir, filepath.Base(src))
		if err := os.WriteFile(dst, []byte(strings.ReplaceAll(string(data), "/usr/bin/tokend", bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		if filepath.Base(src) == "tokend.service" {
			user = append(user, dst)
		} else {
			system = append(system, dst)
		}
	}
	check := func(what string, cmd *exec.Cmd) {
		t.Helper()
		cmd.Dir = "/"
		out, err := cmd.CombinedOutput()
		// Complaints about other files (root's unreadable unit
		// directories) are not ours.
		var ours []string
		for line := range strings.SplitSeq(string(out), "\n") {
			if strings.Contains(line, dir) {
				ours = append(ours, line)
			}
		}
		if err != nil || len(ours) > 0 {
			t.Errorf("%s: %v\n%s", what, err, out)
		}
	}
	// The man page named in Documentation= is checked where it is
	// installed (TestDebianPackage).
	check("systemd-analyze verify (system units)", exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, system...)...))
	cmd := testenv.Command(u, "systemd-analyze", append([]string{"--user", "verify", "--man=no"}, user...)...)
	cmd.Env = append(cmd.Env, "XDG_RUNTIME_DIR="+runtime)
	check("systemd-analyze --user verify (user unit)", cmd)
	if len(system) != 2 || len(user) != 1 {
		t.Fatalf("checked system units %v and user units %v", system, user)
	}
}
