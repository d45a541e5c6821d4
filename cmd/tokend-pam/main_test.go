// The launcher is C (main.c, built by `make launcher`); these tests run it
// and hold it to session/pamenv, the reference of the format `tokend
// session` reads.
package main

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/session/pamenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// launcher copies the built launcher into a directory of its own, beside a
// fake tokend that records there its arguments and the environment block
// it was started with, as it is (/proc/PID/environ: order and duplicates
// kept, nothing of the shell's own).
func launcher(t *testing.T) (bin, dir string) {
	t.Helper()
	built := testenv.BuildLauncher(t)
	dir = t.TempDir()
	data, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "tokend-pam")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	fake := "#!/bin/sh\nd=$(dirname \"$0\")\nprintf '%s\\n' \"$@\" > \"$d/args\"\ncat /proc/$$/environ > \"$d/env\"\n"
	if err := os.WriteFile(filepath.Join(dir, "tokend"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, dir
}

// ran returns the environment the fake tokend in dir was started with,
// failing the test if it did not run.
func ran(t *testing.T, dir string) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatalf("tokend did not run: %v", err)
	}
	return pamenv.Split(raw)
}

// start runs bin with exactly env (duplicates kept: exec.Cmd would drop
// them) and returns its exit code and standard error.
func start(t *testing.T, bin string, env []string, args ...string) (int, string) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := os.StartProcess(bin, append([]string{bin}, args...), &os.ProcAttr{Env: env, Files: []*os.File{nil, nil, w}})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	stderr, _ := io.ReadAll(r)
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if ws := st.Sys().(syscall.WaitStatus); ws.Signaled() {
		t.Fatalf("the launcher died of %v (core dumped: %v): %s", ws.Signal(), ws.CoreDump(), stderr)
	}
	return st.ExitCode(), string(stderr)
}

// The launcher runs the tokend beside it as `tokend session ARGS` with the
// environment it builds: the PAM items, no loader variable, the user's
// HTCondor settings under their carrying prefix.
func TestLauncherEnvironment(t *testing.T) {
	bin, dir := launcher(t)
	env := []string{
		"LD_PRELOAD=/nonexistent/evil.so", "LD_LIBRARY_PATH=/tmp", "PATH=/home/alice/bin",
		"CONDOR_CONFIG=/home/alice/condor_config",
		"PAM_USER=alice", "PAM_TYPE=open_session", "PAM_SERVICE=sshd", "PAM_TTY=/dev/pts/3",
	}
	code, stderr := start(t, bin, env, "--config", "/etc/tokend/site.toml")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	if string(args) != "session\n--config\n/etc/tokend/site.toml\n" {
		t.Errorf("tokend ran with %q", args)
	}
	got := ran(t, dir)
	want, _ := pamenv.Launch(env)
	if !slices.Equal(got, want) {
		t.Errorf("tokend's environment:\n%q\nwant, as pamenv.Launch:\n%q", got, want)
	}
	slices.Sort(got)
	want = []string{
		"PAM_SERVICE=sshd", "PAM_TYPE=open_session", "PAM_USER=alice",
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TOKEND_PAM_LAUNCHER=1",
		"TOKEND_USERENV_CONDOR_CONFIG=/home/alice/condor_config",
	}
	if !slices.Equal(got, want) {
		t.Errorf("tokend's environment:\n%q\nwant\n%q", got, want)
	}
}

// A second PAM_USER (or PAM_TYPE, PAM_SERVICE) in the block: nothing runs,
// the launcher says why and fails.
func TestLauncherRefusesDuplicates(t *testing.T) {
	bin, dir := launcher(t)
	for _, name := range []string{"PAM_USER", "PAM_TYPE", "PAM_SERVICE"} {
		env := []string{name + "=forged", "PAM_USER=alice", "PAM_TYPE=open_session", "PAM_SERVICE=sshd"}
		code, stderr := start(t, bin, env)
		if code != 1 || !strings.Contains(stderr, "tokend-pam: "+name+" appears 2 times") || !strings.Contains(stderr, "nothing done") {
			t.Errorf("%s twice: exit %d: %s", name, code, stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, "args")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("tokend ran although %s appeared twice", name)
		}
	}
}

// Without a tokend beside it, the launcher says so.
func TestLauncherWithoutTokend(t *testing.T) {
	bin, dir := launcher(t)
	os.Remove(filepath.Join(dir, "tokend"))
	code, stderr := start(t, bin, []string{"PAM_USER=alice", "PAM_TYPE=open_session"})
	if code != 1 || !strings.Contains(stderr, "cannot run "+filepath.Join(dir, "tokend")) {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

// Whatever the block holds, the launcher runs tokend with the environment
// pamenv.Launch builds from it, in its order.
func TestLauncherMatchesPamenv(t *testing.T) {
	bin, dir := launcher(t)
	for _, env := range [][]string{
		{},
		{"PAM_USER=", "PAM_TYPE=open_session"},
		{"noequals", "=x", "PAM_USER=alice", "PAM_TYPE=close_session", "PAM_SERVICE=login", "PAM_RHOST=h"},
		{
			"TOKEND_PAM_LAUNCHER=0", "TOKEND_USERENV_LD_PRELOAD=/x.so", "TOKEND_USERENV_LANG=fr",
			"CONDOR_CONFIG=/first", "_CONDOR_B=2", "CONDOR_CONFIG=/second", "_CONDOR_A.b_9=1", "_CONDOR_B=3",
			"_CONDOR_=empty", "_CONDOR_X\nY=odd", "_CONDOR_é=no", "_CONDOR_X-Y=no", "_CONDOR_Z=a=b",
			"LC_ALL=C", "LC_ALLX=no", "LANG", "LANG=C.UTF-8", "TZ=", "tz=no", "CONDOR_CONFIGX=no",
			"PAM_USER=alice", "PAM_TYPE=open_session", "PAM_SERVICE=sshd",
		},
	} {
		os.Remove(filepath.Join(dir, "env"))
		code, stderr := start(t, bin, env)
		if code != 0 || stderr != "" {
			t.Fatalf("%q: exit %d: %s", env, code, stderr)
		}
		want, err := pamenv.Launch(pamenv.Split([]byte(strings.Join(env, "\x00") + "\x00")))
		if err != nil {
			t.Fatal(err)
		}
		if got := ran(t, dir); !slices.Equal(got, want) {
			t.Errorf("%q:\ntokend's environment:\n%q\nwant, as pamenv.Launch:\n%q", env, got, want)
		}
	}
}

// A refusal says what pamenv's error says, values made safe for a log line
// the same way (logsafe), and stays bounded however many copies there are.
func TestLauncherRefusalMatchesPamenv(t *testing.T) {
	bin, _ := launcher(t)
	long := strings.Repeat("é", 300) + strings.Repeat("x", 200)
	for _, forged := range []string{
		"bob\nfake: tokend session open", "cr\rtab\tesc\x1b[31m\x7f", "bad \xff\xfe utf8 \xe2\x80",
		"c1 \u0085 ls \u2028 ps \u2029 rlo \u202e \u2066 alm \u061c", "overlong \xc0\xaf surrogate \xed\xa0\x80",
		"", long, strings.Repeat("\n", 300), "a" + long,
	} {
		env := []string{"PAM_USER=" + forged, "PAM_USER=alice", "PAM_TYPE=open_session"}
		_, err := pamenv.Launch(env)
		if err == nil {
			t.Fatal("pamenv.Launch took a duplicate")
		}
		code, stderr := start(t, bin, env)
		if want := "tokend-pam: " + err.Error() + "\n"; code != 1 || stderr != want {
			t.Errorf("exit %d:\n%q\nwant\n%q", code, stderr, want)
		}
	}
	env := []string{"PAM_TYPE=open_session"}
	for range 500 {
		env = append(env, "PAM_USER="+long)
	}
	code, stderr := start(t, bin, env)
	if code != 1 || !strings.HasPrefix(stderr, "tokend-pam: PAM_USER appears 500 times in the PAM environment") || len(stderr) > 4200 {
		t.Errorf("500 copies: exit %d, %d bytes: %.300q", code, len(stderr), stderr)
	}
}

// The launcher reads at most 512 KiB of environment: a larger one is
// refused, saying so.
func TestLauncherRefusesHugeEnvironment(t *testing.T) {
	bin, dir := launcher(t)
	env := []string{"PAM_USER=alice", "PAM_TYPE=open_session"}
	for i := range 5 {
		env = append(env, "_CONDOR_BIG"+strings.Repeat("X", i)+"="+strings.Repeat("x", 120<<10))
	}
	code, stderr := start(t, bin, env)
	if code != 1 || stderr != "tokend-pam: the PAM environment is larger than 512 KiB: a user may have set huge variables (pam_env with user_readenv=1); nothing done for this login\n" {
		t.Errorf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "args")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("tokend ran although the environment was too large to read")
	}
}

// The variables a language runtime or the dynamic loader would read before
// main have no effect on the launcher (Go's runtime, for one, would make
// 100000 threads as root, or dump core), and none reaches tokend.
func TestLauncherIgnoresRuntimeVariables(t *testing.T) {
	bin, dir := launcher(t)
	hostile := []string{
		"GOMAXPROCS=100000", "GOTRACEBACK=crash", "GODEBUG=inittrace=1", "GOGC=1", "GOMEMLIMIT=1",
		"LD_PRELOAD=/nonexistent/evil.so", "LD_LIBRARY_PATH=/tmp", "LD_DEBUG=all", "LD_SHOW_AUXV=1",
		"MALLOC_PERTURB_=165",
	}
	items := []string{"PAM_USER=alice", "PAM_TYPE=open_session", "PAM_SERVICE=sshd"}
	// A dynamic program would at least say it cannot preload the library,
	// Go's runtime would trace its init on standard error: it stays empty.
	code, stderr := start(t, bin, append(hostile, items...), "--timeout", "2s")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TOKEND_PAM_LAUNCHER=1"}, items...)
	if got := ran(t, dir); !slices.Equal(got, want) {
		t.Errorf("tokend's environment:\n%q\nwant\n%q", got, want)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	if string(args) != "session\n--timeout\n2s\n" {
		t.Errorf("tokend ran with %q", args)
	}
	// A refusal, too, is the launcher's own: exit 1, one line.
	os.Remove(filepath.Join(dir, "args"))
	code, stderr = start(t, bin, append(append(hostile, "PAM_USER=bob"), items...))
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "tokend-pam: PAM_USER appears 2 times") {
		t.Errorf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "args")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("tokend ran although PAM_USER appeared twice")
	}
}
