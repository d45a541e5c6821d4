package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/logsafe"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/session"
	"github.com/tokend/tokend/session/pamenv"
)

const sessionUsage = `usage: tokend session [open|close] [--config FILE] [--socket PATH] [--pid PID] [--timeout D]

The PAM session hook. In /etc/pam.d/<service> (see /usr/share/tokend/pam-session):

  session optional pam_exec.so quiet stdout /usr/bin/tokend-pam

pam_exec runs the launcher tokend-pam as root at login (PAM_TYPE=open_session)
and logout (PAM_TYPE=close_session) with PAM_USER set; it runs tokend session
with its own arguments and an environment it builds, and tokend session
becomes that user before doing anything else. Run as a user, it opens or
closes a session of that user's own agent. See docs/admin.md.
`

// runSession is `tokend session open|close`. As root, the PAM hook, it
// logs as described below.
func runSession(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if os.Geteuid() != 0 {
		return sessionCommand(ctx, args, stdout, stderr)
	}
	// pam_exec sends the hook's output to /dev/null unless the PAM line
	// says log=FILE, or, with its stdout option, both standard output and
	// standard error to the user's terminal. There a good login shows
	// only what the user must act on (standard output); the diagnostics
	// are shown only when the hook fails. Syslog (authpriv) gets them
	// all, where there is one.
	var held *syncbuf.Buffer
	if os.Getenv(pamenv.Type) != "" && userSeesStderr() {
		held = &syncbuf.Buffer{}
		stderr = held
	}
	if sl, err := syslog.New(syslog.LOG_AUTHPRIV|syslog.LOG_NOTICE, "tokend"); err == nil {
		defer sl.Close()
		lw := &lineWriter{w: sl}
		defer lw.Flush()
		stderr = io.MultiWriter(stderr, lw)
	}
	code := sessionCommand(ctx, args, stdout, stderr)
	if held != nil && code != exitOK {
		stdout.Write(held.Bytes())
	}
	return code
}

// sessionCommand parses the arguments and the PAM items, then runs the
// root side (sessionHook) or the user side.
func sessionCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("tokend session", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() { fmt.Fprint(stderr, sessionUsage); fl.PrintDefaults() }
	configFile := fl.String("config", "", "the agent's config `file` (default /etc/tokend/config.toml, then the user's own; run by a user: $TOKEND_CONFIG first)")
	socket := fl.String("socket", "", "the agent's socket `path` (default the config's socket, else $XDG_RUNTIME_DIR/tokend/agent.sock; run by a user: $TOKEND_SOCKET first)")
	pid := fl.Int("pid", 0, "a process of the login session; the session lasts while it lives (default: the caller)")
	timeout := fl.Duration("timeout", 0, "give up waiting after this `long` (default 5s for open, 10s for close)")
	var action string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[0], args[1:]
	}
	if err := fl.Parse(args); err != nil {
		return exitUsage
	}
	if action == "" && fl.NArg() > 0 {
		action = fl.Arg(0)
	} else if fl.NArg() > 0 {
		fl.Usage()
		return exitUsage
	}
	if action != "" && action != session.ActionOpen && action != session.ActionClose {
		fmt.Fprintf(stderr, "tokend session: unknown action %q: want open or close\n", action)
		return exitUsage
	}
	env := os.Environ()
	pamType, err := pamenv.Get(env, pamenv.Type)
	if err != nil {
		fmt.Fprintf(stderr, "tokend session: %v\n", err)
		return exitFailure
	}
	if pamType != "" && os.Geteuid() == 0 {
		if v, _ := pamenv.Get(env, pamenv.Launched); v != "1" {
			// The dynamic loader has read the PAM environment already;
			// what is left to do is to make the mistake known.
			fmt.Fprintf(stderr, "tokend session: run as root by PAM without the launcher: the PAM line must name %s, not tokend (pam_exec gives the program the PAM environment, which users may set, and the dynamic loader reads it); nothing done\n", launcherPath())
			return exitFailure
		}
	}
	if pamType != "" {
		fromPAM, err := session.ActionFor(pamType)
		if err != nil {
			// Misplaced in the PAM configuration: say so, but never make
			// a login fail for it.
			fmt.Fprintf(stderr, "tokend session: %v; nothing done\n", err)
			return exitOK
		}
		if action != "" && action != fromPAM {
			fmt.Fprintf(stderr, "tokend session %s: called for PAM_TYPE=%s; nothing done (write `tokend session` without an action in the PAM line)\n", action, pamType)
			return exitOK
		}
		action = fromPAM
	}
	if action == "" {
		fl.Usage()
		return exitUsage
	}
	if *pid == 0 {
		*pid = os.Getppid() // the PAM application (sshd, login, ...) or the shell
	}
	if *pid < 0 {
		fmt.Fprintf(stderr, "tokend session: --pid %d: want a process id\n", *pid)
		return exitUsage
	}

	if os.Geteuid() == 0 {
		// The hook leaves the PAM environment behind when it becomes the
		// user, $TOKEND_CONFIG and $TOKEND_SOCKET with it.
		return sessionHook(ctx, action, session.Options{Config: *configFile, Socket: *socket, PID: *pid, Timeout: *timeout}, env, stdout, stderr)
	}
	pamUser, err := pamenv.Get(env, pamenv.User)
	if err != nil {
		fmt.Fprintf(stderr, "tokend session: %v\n", err)
		return exitFailure
	}
	if pamUser != "" {
		if u, err := user.Current(); err == nil && u.Username != pamUser {
			fmt.Fprintf(stderr, "tokend session: PAM_USER is %s but this runs as %s: only root can open a session for another user\n", pamUser, u.Username)
			return exitFailure
		}
	}
	// The agent Open starts reads the same environment.
	o := session.Options{Config: config.FileOverride(*configFile), Socket: *socket, PID: *pid, Timeout: *timeout}
	if action == session.ActionOpen {
		return sessionOpen(ctx, o, stdout, stderr)
	}
	return sessionClose(ctx, o, stderr)
}

// sessionHook is the root side: it becomes PAM_USER for good, then opens or
// closes their session as the user would.
func sessionHook(ctx context.Context, action string, o session.Options, env []string, stdout, stderr io.Writer) int {
	name, err := pamenv.Get(env, pamenv.User)
	if err != nil {
		fmt.Fprintf(stderr, "tokend session %s: %v\n", action, err)
		return exitFailure
	}
	if _, err := session.Become(name, action, env); err != nil {
		if errors.Is(err, session.ErrRoot) {
			fmt.Fprintf(stderr, "tokend session %s: %v; nothing done\n", action, err)
			return exitOK
		}
		fmt.Fprintf(stderr, "tokend session %s for %s: %s\n", action, logsafe.Text(name), logsafe.Text(err.Error()))
		return exitFailure
	}
	// From here on this process is the user. Open and Close keep their own
	// deadlines; this one is for a call that hangs regardless (a home
	// directory on a dead file server), so that a login never hangs on it.
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = map[string]time.Duration{session.ActionOpen: session.DefaultOpenTimeout, session.ActionClose: session.DefaultCloseTimeout}[action]
	}
	watchdog := time.AfterFunc(timeout+2*time.Second, func() {
		fmt.Fprintf(stderr, "tokend session %s for %s: did not finish within %v; giving up\n", action, logsafe.Text(name), timeout+2*time.Second)
		os.Exit(exitFailure)
	})
	defer watchdog.Stop()
	o.Timeout = timeout
	if action == session.ActionOpen {
		return sessionOpen(ctx, o, stdout, stderr)
	}
	return sessionClose(ctx, o, stderr)
}

// sessionOpen opens a session of the current user and says how it went.
// What the user's agent answers, and errors (which may quote it, the
// user's config or the agent's log), reach the root hook's log escaped and
// bounded (logsafe.Text).
func sessionOpen(ctx context.Context, o session.Options, stdout, stderr io.Writer) int {
	res, err := session.Open(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "tokend session open for %s: %s\n", who(), logsafe.Text(err.Error()))
		return exitFailure
	}
	st := res.Status
	how := "agent running"
	if res.Started {
		how = fmt.Sprintf("agent started (pid %d, log %s)", st.PID, logsafe.Text(res.Log))
	}
	fmt.Fprintf(stderr, "tokend session open for %s: %s; %d login sessions; %s\n", who(), how, res.Sessions, logsafe.Text(describeSession(st.Session)))
	// What the user must know at login also goes to standard output, which
	// pam_exec's stdout option shows them.
	var note string
	switch {
	case res.Ready:
	case st.Session.State == api.SessionWaiting:
		id := logsafe.Text(st.Session.RequestID)
		note = fmt.Sprintf("token request %s waits for approval: an administrator runs condor_token_request_approve -reqid %s", id, id)
	case st.Session.State == api.SessionFailed:
		note = fmt.Sprintf("no token yet, the fetch failed: %s; the agent tries again (`tokend status` shows when)", logsafe.Text(st.Session.LastError))
	default:
		note = fmt.Sprintf("the token is still being fetched; it appears in %s when ready (`tokend status`)", logsafe.Text(st.Dir))
	}
	if note != "" {
		fmt.Fprintf(stdout, "tokend: %s\n", note)
	}
	return exitOK
}

// sessionClose closes a session of the current user and says how it went.
func sessionClose(ctx context.Context, o session.Options, stderr io.Writer) int {
	res, err := session.Close(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "tokend session close for %s: %s\n", who(), logsafe.Text(err.Error()))
		return exitFailure
	}
	switch {
	case res.NoAgent:
		fmt.Fprintf(stderr, "tokend session close for %s: no agent is running; nothing to close\n", who())
	case res.Wiped:
		fmt.Fprintf(stderr, "tokend session close for %s: last login session closed: tokens wiped, %s unmounted\n", who(), logsafe.Text(res.Dir))
	case res.Sessions == 0:
		fmt.Fprintf(stderr, "tokend session close for %s: last login session closed: tokens are wiped in %v unless you log in again\n", who(), res.Grace)
	default:
		fmt.Fprintf(stderr, "tokend session close for %s: %d login sessions still open; tokens kept\n", who(), res.Sessions)
	}
	return exitOK
}

// launcherPath is where tokend-pam is: beside this binary.
func launcherPath() string {
	if exe, err := os.Executable(); err == nil {
		return filepath.Join(filepath.Dir(exe), "tokend-pam")
	}
	return "/usr/bin/tokend-pam"
}

// who names the user for the logs: $USER (the hook sets it), else the uid.
func who() string {
	if u := os.Getenv("USER"); u != "" {
		return logsafe.Text(u)
	}
	return "uid " + strconv.Itoa(os.Getuid())
}

// userSeesStderr reports whether standard output and standard error are
// one pipe: pam_exec's stdout option, which shows both to the user.
func userSeesStderr() bool {
	var out, err unix.Stat_t
	if unix.Fstat(1, &out) != nil || unix.Fstat(2, &err) != nil {
		return false
	}
	return out.Mode&unix.S_IFMT == unix.S_IFIFO && out.Dev == err.Dev && out.Ino == err.Ino
}

// Bytes returns a copy of what was written.

// lineWriter sends each complete line to w (a syslog writer: one message
// per line), at most 64 lines.
type lineWriter struct {
	w     io.Writer
	mu    sync.Mutex
	buf   bytes.Buffer
	lines int
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		i := bytes.IndexByte(l.buf.Bytes(), '\n')
		if i < 0 {
			break
		}
		line := l.buf.Next(i + 1)
		if l.lines < 64 {
			l.w.Write(bytes.TrimRight(line, "\n"))
			l.lines++
		}
	}
	if l.buf.Len() > 4096 {
		l.buf.Reset()
	}
	return len(p), nil
}

// Flush sends what is left without a newline.
func (l *lineWriter) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() > 0 && l.lines < 64 {
		l.w.Write(l.buf.Bytes())
	}
	l.buf.Reset()
}
