package main

// Helpers for the fault tests: running the agent under a wrapper (a
// resource limit, a private mount namespace where the machine is broken on
// purpose), waiting for it to fail, a condor_token_fetch stand-in whose
// behaviour the test switches, and checks that nothing is left behind.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/proc"
	"github.com/tokend/tokend/mounttab"
)

// launchCmd starts cmd as the agent, its output going to the agent's log,
// without waiting for it to be ready. cmd may set an RLIMIT_MEMLOCK of its
// own, so cleanup checks the locked memory only of agents launch started.
func (e *env) launchCmd(cmd *exec.Cmd) {
	e.t.Helper()
	e.memlock = false
	e.log = &syncbuf.Buffer{}
	p, err := proc.Start(cmd, e.log)
	if err != nil {
		e.t.Fatal(err)
	}
	e.agent = p
}

// agentCmd is the agent's command line, as the user.
func (e *env) agentCmd(wrapper ...string) *exec.Cmd {
	args := append(wrapper, e.bin, "agent", "--config", e.config)
	return testenv.Command(e.u, args[0], args[1:]...)
}

// inNamespace returns a command that runs setup (a shell script) as root in
// a private mount namespace, then the agent as the user in it. Whatever
// setup mounts is seen by the agent alone and goes away with it.
func (e *env) inNamespace(setup string) *exec.Cmd {
	script := setup + `
exec setpriv --reuid="$1" --regid="$2" --init-groups -- "$3" agent --config "$4"`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--",
		"sh", "-euc", script, "sh", strconv.Itoa(e.u.UID), strconv.Itoa(e.u.GID), e.bin, e.config)
	user := testenv.Command(e.u, "true")
	cmd.Env = user.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// waitFailed waits until the agent, mounted, reports its session fetch
// failed with an error that says msg.
func (e *env) waitFailed(msg string) {
	e.t.Helper()
	testenv.Eventually(e.t, 30*time.Second, "status does not report the failed session fetch saying "+msg, func() bool {
		e.running()
		st, err := e.status()
		return err == nil && st.Mounted && st.Session.State == api.SessionFailed && strings.Contains(st.Session.LastError, msg)
	})
}

// waitExit waits for the agent to exit on its own and returns its exit code.
func (e *env) waitExit(within time.Duration) int {
	e.t.Helper()
	if !e.agent.Wait(within) {
		e.t.Fatalf("the agent did not exit within %v:\n%s", within, e.log)
	}
	code, err := proc.ExitCode(e.agent.Err())
	e.agent = nil
	if err != nil {
		e.t.Fatalf("waiting for the agent: %v", err)
	}
	return code
}

// failsToStart runs cmd as the agent and expects it to exit with an error
// at once, leaving nothing behind. It returns the agent's output.
func (e *env) failsToStart(cmd *exec.Cmd) string {
	e.t.Helper()
	e.launchCmd(cmd)
	if code := e.waitExit(20 * time.Second); code == 0 {
		e.t.Fatalf("the agent exited 0:\n%s", e.log)
	}
	e.nothingLeft()
	return e.log.String()
}

// nothingLeft fails unless the agent left no mount and no socket.
func (e *env) nothingLeft() {
	e.t.Helper()
	if mounttab.Mounted(e.dir) {
		e.t.Errorf("the agent left %s mounted", e.dir)
	}
	if _, err := os.Lstat(e.sock); !errors.Is(err, os.ErrNotExist) {
		e.t.Errorf("the agent left its socket %s (%v)", e.sock, err)
	}
}

// fetcher is a condor_token_fetch stand-in for the exec fetcher whose
// behaviour the test switches between calls.
type fetcher struct {
	e             *env
	path          string
	mode, token   string // files the script reads
	pidFile       string // the hanging mode writes its pid here
	garbageMarker string // in every line of garbage it prints
}

// Fetcher modes.
const (
	fetchGood    = "good"    // print the token in the token file
	fetchHang    = "hang"    // sleep far past any timeout
	fetchCrash   = "crash"   // HTCondor's failure: a message on stderr, exit 1
	fetchGarbage = "garbage" // lines that are not a token, one of them token-like
	fetchTwo     = "two"     // two tokens, where one is wanted
)

// useFetcher installs the stand-in as the agent's exec fetcher with the
// given timeout. The agent's session token comes from it too.
func (e *env) useFetcher(timeout time.Duration) *fetcher {
	e.t.Helper()
	f := &fetcher{
		e:             e,
		mode:          filepath.Join(e.work, "fetch-mode"),
		token:         filepath.Join(e.work, "fetch-token"),
		pidFile:       filepath.Join(e.work, "fetch-pid"),
		garbageMarker: fmt.Sprintf("GARBAGE%d", time.Now().UnixNano()),
	}
	f.path = e.standIn("condor_token_fetch", `case "$(cat `+f.mode+`)" in
  `+fetchGood+`) cat `+f.token+` ;;
  `+fetchHang+`) echo $$ > `+f.pidFile+`; exec sleep 600 ;;
  `+fetchCrash+`) echo "Failed to request a session token: AUTHENTICATE:1003:Failed to authenticate with any method|AUTHENTICATE:1004:Failed to authenticate using FS" >&2; exit 1 ;;
  `+fetchGarbage+`) echo "`+f.garbageMarker+` hello"; echo "eyJ`+f.garbageMarker+`.eyJnot.a-token" ;;
  `+fetchTwo+`) cat `+f.token+` `+f.token+` ;;
esac
`)
	f.set(fetchGood)
	e.config = rewrite(e.t, e, fmt.Sprintf("fetch.method = \"exec\"\nfetch.command = [%s]\nfetch.timeout = %q", quote(f.path), timeout.String()))
	return f
}

// set switches the stand-in's behaviour; for fetchGood it also makes the
// next token it prints.
func (f *fetcher) set(mode string) {
	f.e.t.Helper()
	if mode == fetchGood || mode == fetchTwo {
		f.e.writeFile(f.token, string(f.e.sign(f.e.u.Name+"@test.example", time.Hour))+"\n", 0o600)
	}
	f.e.writeFile(f.mode, mode, 0o600)
}

// cliResult is the outcome of a CLI command run in the background.
type cliResult struct {
	stdout, stderr string
	code           int
}

// cliAsync runs the CLI as the user in the background.
func (e *env) cliAsync(args ...string) <-chan cliResult {
	done := make(chan cliResult, 1)
	cmd := testenv.Command(e.u, e.bin, args...)
	cmd.Env = append(cmd.Env, "TOKEND_SOCKET="+e.sock)
	go func() {
		r, err := proc.Run(cmd, "")
		if err != nil {
			r = proc.Result{Stderr: err.Error(), Code: -1}
		}
		done <- cliResult{r.Stdout, r.Stderr, r.Code}
	}()
	return done
}

// alive reports whether process pid exists.
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// pidIn reads a pid written to a file, 0 if there is none yet.
func pidIn(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// mustMatch fails unless s contains every one of want.
func mustMatch(t *testing.T, what, s string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Fatalf("%s does not say %q:\n%s", what, w, s)
		}
	}
}
