// Package testenv is what the project's tests share: the test users, built
// binaries runnable by those users, directories they can reach, polling with
// a deadline, and the end-of-run check that nothing was left behind.
//
// What the benchmark (internal/bench, an ordinary program) shares with the
// tests is in subpackages that do not import testing: proc (processes run
// as a user, stopped with a bounded wait), poll (waiting for a condition),
// keys (key files and signed tokens), verifydproc (a verifyd run as root)
// and simwire (the JSON of condorsim and peek, and the read sequence in that
// form).
//
// Most end-to-end tests run as root (CI does, through `make test`): only root
// can act as the ordinary users that FUSE's access rules are about, and
// .ci/setup creates those users. Run by an ordinary user, such a test skips
// with a one-line reason, so `go test ./...` gives a newcomer a quick green
// run. Under `make test` (TOKEND_TEST_ALL=1) nothing may skip: a missing
// prerequisite fails the test and says what to do.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv/poll"
	"github.com/tokend/tokend/internal/testenv/proc"
)

// The ordinary users the tests act as; .ci/setup creates them.
const (
	UserName  = "tokend-test"
	OtherName = "tokend-other"
)

// User is a local account.
type User = proc.User

// AllEnv is set by `make test`: every test must run, none may skip.
const AllEnv = "TOKEND_TEST_ALL"

// RequireRoot skips the test, saying why it needs root, unless it runs as
// root; under `make test` it fails instead.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "needs root ("+why+"): run it as root (sudo make test), after .ci/setup")
	}
}

// missing skips the test for a prerequisite the machine lacks, or fails it
// where every test must run.
func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv(AllEnv) != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Lookup returns a test user, failing the test if it does not exist.
func Lookup(t testing.TB, name string) User {
	t.Helper()
	RequireRoot(t, "it acts as the test user "+name)
	u, err := proc.LookupUser(name)
	if err != nil {
		t.Fatalf("test user %s is missing (%v): run .ci/setup as root to create it", name, err)
	}
	return u
}

// RequireFUSE skips (or, under `make test`, fails) the test unless FUSE
// mounts can be made by ordinary users.
func RequireFUSE(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("fusermount3"); err != nil {
		missing(t, "fusermount3 is missing: apt-get install -y fuse3 (.ci/setup does)")
	}
	st, err := os.Stat("/dev/fuse")
	if err != nil {
		missing(t, fmt.Sprintf("/dev/fuse: %v: load the fuse module", err))
	}
	if st.Mode().Perm()&0o006 != 0o006 {
		missing(t, "/dev/fuse is not usable by ordinary users: chmod 666 /dev/fuse (.ci/setup does)")
	}
}

// Dir returns a new directory owned by u (mode 0700) that u can reach: its
// parent is traversable by everyone. It is removed at the end of the test.
func Dir(t testing.TB, u User) string {
	t.Helper()
	parent, err := os.MkdirTemp("", "tokend-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(parent); err != nil {
			t.Errorf("cleanup: %v (a mount left behind?)", err)
		}
	})
	if err := os.Chmod(parent, 0o711); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, u.UID, u.GID); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Command returns a command that runs as u with a clean environment
// (proc.Command).
func Command(u User, name string, args ...string) *exec.Cmd {
	return proc.Command(u, name, args...)
}

// Eventually polls cond, more and more rarely up to every 50 ms, until it
// is true or the deadline passes, then fails the test with what.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll.Until(timeout, cond) {
		t.Fatalf("after %v: %s", timeout, what)
	}
}

// CopyKeys copies the key files of the folder src (every file but the
// tokens, *.jwt) into dst with mode 0600: git does not keep modes.
func CopyKeys(t testing.TB, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".jwt") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dst, e.Name())
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

var (
	buildMu  sync.Mutex
	buildDir string
	built    = map[string]string{}
)

// Build compiles the main package at pkg (a path relative to the module
// root, like "./cmd/tokend") once per test binary, with the race detector
// when the test has it, into a directory every user can read and execute.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	return build(t, pkg, func(bin string) *exec.Cmd {
		args := []string{"build", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		return exec.Command("go", append(args, pkg)...)
	})
}

// BuildLauncher builds the PAM launcher tokend-pam (cmd/tokend-pam/main.c)
// as `make build` does, with `make launcher`: C, linked statically. It
// lands in the same directory as Build's binaries, beside tokend.
func BuildLauncher(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is missing: apt-get install -y make gcc libc6-dev (.ci/setup does)")
	}
	return build(t, "tokend-pam", func(bin string) *exec.Cmd {
		return exec.Command("make", "--no-print-directory", "launcher", "PAMBIN="+bin)
	})
}

func build(t testing.TB, pkg string, command func(bin string) *exec.Cmd) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin, ok := built[pkg]; ok {
		return bin
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "tokend-bin-")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	bin := filepath.Join(buildDir, filepath.Base(pkg))
	cmd := command(bin)
	cmd.Dir = ModuleRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	built[pkg] = bin
	return bin
}

// ModuleRoot returns the directory holding go.mod.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// runRoot holds every temporary directory of this test process (TMPDIR
// points there), so that leaks are looked for among its own mounts only:
// packages' tests run in parallel.
var runRoot string

// Main runs the tests, removes built binaries, and fails the run if a
// tokend mount under this process's temporary directories or a process
// started from a built binary is left behind.
func Main(m *testing.M) {
	if d, err := os.MkdirTemp("", "tokend-run-"); err == nil {
		// Traversable, so the test users reach the directories made for them.
		os.Chmod(d, 0o711)
		runRoot = d
		os.Setenv("TMPDIR", d)
	}
	code := m.Run()
	if leaks := Leaks(); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "tests left things behind:\n  %s\n", strings.Join(leaks, "\n  "))
		code = 1
	}
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	if runRoot != "" && code == 0 {
		os.RemoveAll(runRoot)
	}
	os.Exit(code)
}

// Leaks lists mounts under this process's temporary directories and
// processes running its built binaries.
func Leaks() []string {
	var leaks []string
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && runRoot != "" && strings.HasPrefix(f[4], runRoot+"/") {
				leaks = append(leaks, "mount: "+line)
			}
		}
	}
	if buildDir != "" {
		procs, _ := filepath.Glob("/proc/[0-9]*/exe")
		for _, p := range procs {
			exe, err := os.Readlink(p)
			if err == nil && strings.HasPrefix(exe, buildDir+"/") {
				leaks = append(leaks, "process: "+filepath.Base(filepath.Dir(p))+" "+exe)
			}
		}
	}
	return leaks
}
