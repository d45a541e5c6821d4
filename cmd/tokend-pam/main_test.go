package main

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tokend/tokend/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// launcher copies the built launcher into a directory of its own, beside a
// fake tokend that records its arguments and environment there.
func launcher(t *testing.T) (bin, dir string) {
	t.Helper()
	built := testenv.BuildStatic(t, "./cmd/tokend-pam")
	dir = t.TempDir()
	data, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "tokend-pam")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	fake := "#!/bin/sh\nd=$(dirname \"$0\")\nprintf '%s\\n' \"$@\" > \"$d/args\"\nenv -0 > \"$d/env\"\n"
	if err := os.WriteFile(filepath.Join(dir, "tokend"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, dir
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
	raw, _ := os.ReadFile(filepath.Join(dir, "env"))
	var got []string
	for e := range strings.SplitSeq(strings.TrimSuffix(string(raw), "\x00"), "\x00") {
		if !strings.HasPrefix(e, "PWD=") && !strings.HasPrefix(e, "SHLVL=") && !strings.HasPrefix(e, "_=") { // the shell's own
			got = append(got, e)
		}
	}
	slices.Sort(got)
	want := []string{
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
