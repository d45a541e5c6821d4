package main

// The PAM hook's trust boundary, end to end: what a user may set in the PAM
// environment (pam_env with user_readenv=1) does not reach root, a user known
// only to an NSS module logs in through the same line, the launcher is
// static and tokend is not, a fetch command cannot forge lines in the hook's
// log, and doctor says what it sees in /etc/pam.d.

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/doctor"
	"github.com/tokend/tokend/internal/testenv"
)

// preloadLib builds a library that appends "uid N exe PATH" to a marker
// file whenever a program loads it, and checks that it does so. It returns
// the library and the marker file, which does not exist yet.
func preloadLib(t *testing.T) (lib, marker string) {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Fatal("gcc is missing: apt-get install -y gcc (.ci/setup does)")
	}
	dir, err := os.MkdirTemp("", "tokend-preload-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Every user may load the library, and write the marker.
	os.Chmod(dir, 0o755)
	marks := filepath.Join(dir, "marks")
	if err := os.Mkdir(marks, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(marks, os.ModeSticky|0o777)
	marker = filepath.Join(marks, "loaded")
	src := filepath.Join(dir, "mark.c")
	code := `#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
	char exe[512] = "", line[600];
	if (readlink("/proc/self/exe", exe, sizeof exe - 1) < 0) {}
	int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0666);
	if (fd < 0) return;
	int n = snprintf(line, sizeof line, "uid %d exe %s\n", (int)getuid(), exe);
	if (write(fd, line, n) < 0) {}
	close(fd);
}
`
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	lib = filepath.Join(dir, "mark.so")
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", lib, fmt.Sprintf("-DMARKER=%q", marker), src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	// The library works: a dynamic program that gets it loads it.
	cmd := exec.Command("/bin/true")
	cmd.Env = []string{"LD_PRELOAD=" + lib}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("LD_PRELOAD=%s /bin/true: %v\n%s", lib, err, out)
	}
	if data, _ := os.ReadFile(marker); !strings.Contains(string(data), "exe /usr/bin/true") {
		t.Fatalf("the preload library did not mark its load: %q", data)
	}
	os.Remove(marker)
	return lib, marker
}

// setPAMEnvironment writes the test user's ~/.pam_environment (pam_env's
// syntax), and removes it at the end of the test.
func setPAMEnvironment(t *testing.T, u testenv.User, lines ...string) {
	t.Helper()
	path := filepath.Join(u.Home, ".pam_environment")
	if _, err := os.Lstat(path); err == nil {
		t.Fatalf("%s exists; this test would overwrite it", path)
	}
	t.Cleanup(func() { os.Remove(path) })
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, u.UID, u.GID); err != nil {
		t.Fatal(err)
	}
}

// Where a site lets users set PAM environment variables, through the
// shipped line: a forged PAM_USER makes the launcher refuse the login's
// hook (no agent for anyone, the login goes on), LD_PRELOAD is loaded by
// no process of the hook, and HTCondor's variables reach the user's agent
// only.
func TestPamUserEnvironment(t *testing.T) {
	lib, marker := preloadLib(t)
	p := newPAMAs(t, testenv.Lookup(t, testenv.UserName), shippedPAMOptions(t), nil, "session required pam_env.so readenv=0 user_readenv=1\n")
	other := testenv.Lookup(t, testenv.OtherName)
	otherSock := filepath.Join("/run/user", strconv.Itoa(other.UID), "tokend", "agent.sock")
	preload := "LD_PRELOAD DEFAULT=" + lib
	// The test's own auth stack (pam_exec /bin/true) loads the library,
	// as root, showing what user_readenv=1 does to any dynamic program on
	// a PAM line; no program of tokend's may.
	assertNotLoaded := func(when string) {
		t.Helper()
		data, _ := os.ReadFile(marker)
		if !strings.Contains(string(data), "exe /usr/bin/true") {
			t.Errorf("%s: the PAM environment did not hold the library: the test proves nothing (%q)", when, data)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if strings.Contains(line, "tokend") { // tokend, tokend-pam, and the agent
				t.Errorf("%s: a program of tokend's loaded the user's LD_PRELOAD library: %s", when, line)
			}
		}
		os.Remove(marker)
	}

	// A second PAM_USER, naming another user.
	setPAMEnvironment(t, p.u, "PAM_USER DEFAULT="+other.Name, preload)
	l := p.login()
	if out := l.out.String(); !strings.Contains(out, "tokend-pam: PAM_USER appears 2 times in the PAM environment") || !strings.Contains(out, `"`+other.Name+`"`) {
		t.Errorf("the refusal is not told:\n%s", out)
	}
	if pid := p.agentPID(); pid != 0 {
		t.Errorf("an agent (pid %d) started for %s", pid, p.u.Name)
	}
	for _, sock := range []string{p.sock, otherSock} {
		if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %v, want no agent socket", sock, err)
		}
	}
	l.logout()
	assertNotLoaded("a forged PAM_USER")
	os.Remove(filepath.Join(p.u.Home, ".pam_environment"))

	// No forged item: the login's hook runs, without the library, and the
	// user's HTCondor settings reach their agent.
	condorConfig := "/nonexistent/condor_config-" + randomHex(4)
	setPAMEnvironment(t, p.u, preload, "CONDOR_CONFIG DEFAULT="+condorConfig, "_CONDOR_TOKEND_TEST DEFAULT=yes")
	l = p.login()
	if n := p.sessions(); n != 1 {
		t.Fatalf("the agent counts %d sessions:\n%s", n, l.out)
	}
	pid := p.agentPID()
	assertRunsAs(t, pid, p.u)
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(string(raw), "\x00")
	for _, want := range []string{"CONDOR_CONFIG=" + condorConfig, "_CONDOR_TOKEND_TEST=yes", "USER=" + p.u.Name} {
		if !slices.Contains(env, want) {
			t.Errorf("the agent's environment lacks %s: %q", want, env)
		}
	}
	for _, e := range env {
		if strings.HasPrefix(e, "LD_") || strings.HasPrefix(e, "TOKEND_USERENV_") || strings.HasPrefix(e, "PAM_") {
			t.Errorf("the agent's environment holds %s", e)
		}
	}
	l.logout()
	p.assertGone(pid)
	assertNotLoaded("a login with the user's environment")
}

// A user known only to an NSS module (libnss-extrausers, standing in for
// SSSD or LDAP) logs in through the launcher: tokend, linked dynamically,
// finds them and starts their agent.
func TestPamNSSUser(t *testing.T) {
	testenv.RequireRoot(t, "it adds a user to the NSS module's files and logs in through PAM")
	if _, err := exec.Command("dpkg-query", "-W", "libnss-extrausers").Output(); err != nil {
		t.Fatal("libnss-extrausers is missing: apt-get install -y libnss-extrausers (.ci/setup does)")
	}
	exclusive(t)
	u := testenv.User{Name: "tokend-nss", UID: 61234, GID: 61234}
	if _, err := user.LookupId(strconv.Itoa(u.UID)); err == nil {
		t.Fatalf("uid %d is taken on this machine", u.UID)
	}
	u.Home = testenv.Dir(t, u)
	addExtraUser(t, u)
	if got, err := user.Lookup(u.Name); err != nil || got.Uid != strconv.Itoa(u.UID) {
		t.Fatalf("the NSS module does not know %s: %v %+v", u.Name, err, got)
	}
	if data, _ := os.ReadFile("/etc/passwd"); bytes.Contains(data, []byte(u.Name+":")) {
		t.Fatalf("%s is in /etc/passwd", u.Name)
	}

	p := newPAMAs(t, u, shippedPAMOptions(t), nil, "")
	l := p.login()
	pid := p.agentPID()
	if pid <= 0 {
		t.Fatalf("no agent for %s:\n%s", u.Name, l.out)
	}
	assertRunsAs(t, pid, u)
	if p.read().Pick == "" {
		t.Fatalf("no token after the login of %s", u.Name)
	}
	l.logout()
	p.assertGone(pid)
}

// addExtraUser adds u to libnss-extrausers' files and the module to the
// passwd and group lines of /etc/nsswitch.conf, and puts both back at the
// end of the test.
func addExtraUser(t *testing.T, u testenv.User) {
	t.Helper()
	const dir = "/var/lib/extrausers"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, line := range map[string]string{
		"passwd": fmt.Sprintf("%s:x:%d:%d:tokend NSS test:%s:/bin/sh\n", u.Name, u.UID, u.GID, u.Home),
		"group":  fmt.Sprintf("%s:x:%d:\n", u.Name, u.GID),
	} {
		path := filepath.Join(dir, name)
		old, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if old == nil {
				os.Remove(path)
			} else if err := os.WriteFile(path, old, 0o644); err != nil {
				t.Errorf("restore %s: %v", path, err)
			}
		})
		if err := os.WriteFile(path, append(old, line...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const conf = "/etc/nsswitch.conf"
	old, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(conf, old, 0o644); err != nil {
			t.Errorf("restore %s: %v", conf, err)
		}
	})
	lines := strings.Split(string(old), "\n")
	added := 0
	for i, l := range lines {
		if f := strings.Fields(l); len(f) > 0 && (f[0] == "passwd:" || f[0] == "group:") {
			lines[i] = l + " extrausers"
			added++
		}
	}
	if added != 2 {
		t.Fatalf("%s has no passwd and group lines to add extrausers to", conf)
	}
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
}

// `make build` links tokend-pam statically (no program interpreter, no
// shared library) and tokend dynamically.
func TestLauncherStaticTokendDynamic(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is missing: apt-get install -y make")
	}
	dir := t.TempDir()
	runMake(t, "build", "BIN="+filepath.Join(dir, "tokend"))
	interp := func(name string) (bool, []string) {
		t.Helper()
		f, err := elf.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		libs, _ := f.ImportedLibraries()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				return true, libs
			}
		}
		return false, libs
	}
	if dyn, libs := interp("tokend-pam"); dyn || len(libs) > 0 {
		t.Errorf("tokend-pam is dynamically linked (PT_INTERP %v, needs %v)", dyn, libs)
	}
	if dyn, libs := interp("tokend"); !dyn || len(libs) == 0 {
		t.Errorf("tokend is statically linked (PT_INTERP %v, needs %v): its user lookups would not go through NSS", dyn, libs)
	}
}

// A fetch command's stderr holding a newline and a line of its own making
// reaches the hook's log escaped, on the hook's line.
func TestPamForgedFetchLine(t *testing.T) {
	forged := "Nov 30 12:00:00 host sshd[1]: Accepted publickey for root"
	script := `printf 'no luck\n` + forged + `\n' >&2; exit 1`
	p := newPAM(t, "", map[string]string{"fetch.method": `"exec"`, "fetch.command": `["/bin/sh", "-c", ` + strconv.Quote(script) + `]`})
	l := p.login()
	pid := p.agentPID()
	l.logout()
	p.assertGone(pid)
	log := readFile(p.hookLog)
	if !strings.Contains(log, `no luck\n`+forged) {
		t.Errorf("the hook's log does not show the fetch's message escaped:\n%s", log)
	}
	for line := range strings.SplitSeq(log, "\n") {
		if strings.HasPrefix(line, forged) {
			t.Errorf("the fetch command forged a line in the hook's log:\n%s", log)
		}
	}
}

// doctor, as root, warns about a PAM service that runs tokend-pam and lets
// users set PAM environment variables, and fails one that runs tokend
// itself; as a user it does not look.
func TestDoctorPAM(t *testing.T) {
	e := newEnv(t, nil)
	exclusive(t)
	service := "tokend-test-" + randomHex(4)
	path := filepath.Join("/etc/pam.d", service)
	t.Cleanup(func() { os.Remove(path) })
	pamCheck := func(u testenv.User) (doctor.Check, bool) {
		t.Helper()
		out, stderr, _ := e.runAs(u, "", e.bin, "doctor", "--json", "--config", e.config)
		var checks []doctor.Check
		if err := json.Unmarshal([]byte(out), &checks); err != nil {
			t.Fatalf("doctor --json: %v\n%s%s", err, out, stderr)
		}
		for _, c := range checks {
			if c.Name == "PAM hook" {
				return c, true
			}
		}
		return doctor.Check{}, false
	}
	root := testenv.User{Name: "root", Home: "/root"}
	write := func(data string) {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	write("session required pam_env.so user_readenv=1 envfile=/etc/default/locale\nsession optional pam_exec.so quiet stdout /usr/bin/tokend-pam\n")
	if c, ok := pamCheck(root); !ok || c.Status != doctor.Warn || !strings.Contains(c.Detail, service) || !strings.Contains(c.Detail, "user_readenv=1") || c.Fix == "" {
		t.Errorf("a stack with user_readenv=1: %v %+v", ok, c)
	}
	write("session optional pam_exec.so quiet stdout /usr/bin/tokend session\n")
	if c, ok := pamCheck(root); !ok || c.Status != doctor.Fail || !strings.Contains(c.Detail, service) || !strings.Contains(c.Fix, "tokend-pam") {
		t.Errorf("a line naming tokend itself: %v %+v", ok, c)
	}
	if c, ok := pamCheck(e.u); ok {
		t.Errorf("doctor run by a user checked PAM: %+v", c)
	}
}

// doctor reads tokens: like the agent, it is not dumpable (its /proc files
// belong to root) and makes no core dump, while it runs.
func TestDoctorHardened(t *testing.T) {
	e := newEnv(t, nil)
	sock := filepath.Join(e.work, "silent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Chmod(sock, 0o666)
	conns := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			conns <- c
		}
	}()
	cmd := testenv.Command(e.u, e.bin, "doctor", "--socket", sock, "--config", e.config)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	var conn net.Conn
	testenv.Eventually(t, 10*time.Second, "doctor to ask the (silent) agent", func() bool {
		select {
		case conn = <-conns:
			return true
		default:
			return false
		}
	})
	defer conn.Close()
	// doctor waits for an answer now.
	st, err := os.Stat(fmt.Sprintf("/proc/%d/environ", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; uid != 0 {
		t.Errorf("doctor's /proc files belong to uid %d: it is dumpable", uid)
	}
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", cmd.Process.Pid))
	for line := range strings.SplitSeq(string(limits), "\n") {
		if f := strings.Fields(line); strings.HasPrefix(line, "Max core file size") && (len(f) < 6 || f[4] != "0" || f[5] != "0") {
			t.Errorf("doctor may dump core: %s", line)
		}
	}
}
