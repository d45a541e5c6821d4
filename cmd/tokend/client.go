package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
)

// clientFlags are shared by every command that talks to the agent.
type clientFlags struct {
	*flag.FlagSet
	name   string
	stderr io.Writer
	socket *string
	config *string
	json   *bool
}

func newClientFlags(name string, stderr io.Writer, withJSON bool) clientFlags {
	fl := flag.NewFlagSet("tokend "+name, flag.ContinueOnError)
	fl.SetOutput(stderr)
	cf := clientFlags{
		FlagSet: fl,
		name:    name,
		stderr:  stderr,
		socket:  fl.String("socket", "", "agent socket `path` (default $TOKEND_SOCKET, else the config's socket, else $XDG_RUNTIME_DIR/tokend/agent.sock)"),
		config:  fl.String("config", "", "config `file` naming the socket (default $TOKEND_CONFIG, else /etc/tokend/config.toml and ~/.config/tokend/config.toml)"),
	}
	if withJSON {
		cf.json = fl.Bool("json", false, "print JSON for scripts")
	}
	return cf
}

func (cf clientFlags) client() *api.Client { return api.NewClient(cf.socketPath()) }

// socketPath finds the agent as the agent itself does: --socket, else
// $TOKEND_SOCKET, else the configuration's socket, else the default. A
// configuration that does not load is reported and the default socket
// used, so that the CLI still reaches an agent while the file is fixed.
func (cf clientFlags) socketPath() string {
	if s := config.SocketOverride(*cf.socket); s != "" {
		return s
	}
	cfg, err := config.Load(config.FileOverride(*cf.config))
	if err != nil {
		def := config.DefaultSocket()
		fmt.Fprintf(cf.stderr, "tokend %s: the configuration does not load, so the agent is looked for at the default socket %s (fix the file, or give --socket):\n%v\n", cf.name, def, err)
		return def
	}
	return cfg.AgentSocket()
}

// fail prints err and returns the exit code that goes with it.
func fail(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "tokend %s: %v\n", cmd, err)
	var ae *api.Error
	switch {
	case errors.Is(err, api.ErrNoAgent):
		return exitNoAgent
	case errors.As(err, &ae) && ae.Code == api.CodeNotFound:
		return exitNotFound
	case errors.As(err, &ae) && ae.Code == api.CodeFetchFailed:
		return exitFetch
	}
	return exitFailure
}

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return exitFailure
	}
	return exitOK
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cf := newClientFlags("status", stderr, true)
	if err := cf.Parse(args); err != nil || cf.NArg() > 0 {
		return exitUsage
	}
	st, err := cf.client().Status(ctx)
	if err != nil {
		return fail(stderr, "status", err)
	}
	if *cf.json {
		return printJSON(stdout, st)
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	mounted := "mounted"
	if !st.Mounted {
		mounted = "NOT MOUNTED: the HTCondor tools see no tokens (tokend doctor)"
	}
	fmt.Fprintf(w, "agent:\trunning (pid %d, since %s, %s)\n", st.PID, st.Started.Format(time.DateTime), st.Version)
	fmt.Fprintf(w, "directory:\t%s (%s)\n", st.Dir, mounted)
	switch st.OpenMode {
	case api.OpenModeKernel:
		fmt.Fprintf(w, "opens:\tby the kernel (%s): reads cost no round trip\n", st.OpenMode)
	case api.OpenModeHandles:
		fmt.Fprintf(w, "opens:\tanswered by the agent (%s): this kernel lacks FUSE no_open/no_opendir support; tokens work, each open costs a round trip\n", st.OpenMode)
	}
	fmt.Fprintf(w, "tokens:\t%d shown, %d hidden\n", st.Tokens, st.Hidden)
	fmt.Fprintf(w, "session token:\t%s\n", describeSession(st.Session))
	if st.Session.LastError != "" {
		fmt.Fprintf(w, "last error:\t%s (%d failures in a row)\n", st.Session.LastError, st.Session.Failures)
	}
	fmt.Fprintf(w, "key check:\t%s\n", describeValidation(st.Validation))
	if st.Sessions > 0 {
		fmt.Fprintf(w, "login sessions:\t%d\n", st.Sessions)
	}
	if st.MemoryLocked {
		fmt.Fprintf(w, "memory:\tlocked (tokens cannot be swapped out)\n")
	} else {
		fmt.Fprintf(w, "memory:\tNOT locked: raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit)\n")
	}
	w.Flush()
	return exitOK
}

func describeSession(s api.Session) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", s.Name, s.State)
	switch s.State {
	case api.SessionValid:
		if s.Exp != nil {
			exp := time.Unix(*s.Exp, 0)
			fmt.Fprintf(&b, ", expires %s (in %s)", exp.Format(time.DateTime), time.Until(exp).Round(time.Second))
		} else {
			b.WriteString(", no expiry")
		}
	case api.SessionWaiting:
		fmt.Fprintf(&b, " (request %s; an administrator approves it with condor_token_request_approve -reqid %s)", s.RequestID, s.RequestID)
	case api.SessionRemoved:
		b.WriteString(" (by you; `tokend fetch` gets a new one)")
	}
	if s.NextRefresh != nil {
		what := "refresh"
		if s.State != api.SessionValid {
			what = "next try"
		}
		fmt.Fprintf(&b, ", %s at %s", what, s.NextRefresh.Format(time.TimeOnly))
	}
	fmt.Fprintf(&b, " [%s]", s.Method)
	return b.String()
}

func describeValidation(v api.Validation) string {
	s := v.KeyCheck
	if v.Verifyd != "" {
		if v.VerifydUp {
			s += fmt.Sprintf(" (verifyd up, key generation %d)", v.Generation)
		} else {
			s += fmt.Sprintf(" (verifyd at %s not answering)", v.Verifyd)
		}
	}
	if v.LastCheck != nil {
		s += fmt.Sprintf("; last check %s", v.LastCheck.Format(time.TimeOnly))
	}
	return s
}

func runList(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cf := newClientFlags("list", stderr, true)
	all := cf.Bool("all", false, "include hidden tokens and why they are hidden")
	if err := cf.Parse(args); err != nil || cf.NArg() > 0 {
		return exitUsage
	}
	toks, err := cf.client().Tokens(ctx, *all)
	if err != nil {
		return fail(stderr, "list", err)
	}
	if *cf.json {
		return printJSON(stdout, toks)
	}
	if len(toks) == 0 {
		fmt.Fprintln(stdout, "no tokens")
		return exitOK
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tSUBJECT\tISSUER\tKEY\tEXPIRES\tSTATE")
	for _, t := range toks {
		exp := "never"
		if t.Exp != nil {
			exp = time.Unix(*t.Exp, 0).Format(time.DateTime)
		}
		state := t.State
		if t.Reason != "" {
			state += " (" + t.Reason + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Sub, t.Iss, t.Kid, exp, state)
	}
	w.Flush()
	return exitOK
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func runFetch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cf := newClientFlags("fetch", stderr, true)
	name := cf.String("name", "", "token file `name` (default: the session token)")
	lifetime := cf.String("lifetime", "", "token lifetime, e.g. 8h (default: the config's)")
	var authz stringList
	cf.Var(&authz, "authz", "limit the token to `AUTHZ` (READ, WRITE, ...); repeatable")
	if err := cf.Parse(args); err != nil || cf.NArg() > 0 {
		return exitUsage
	}
	live := isTerminal(stderr)
	var lastLine time.Time
	var lastID string
	progress := func(p api.Progress) {
		// A terminal gets one line updated in place; a log gets a line
		// when the request id appears and every ten seconds.
		switch {
		case live:
			fmt.Fprintf(stderr, "\r\033[K%s", p.Message)
		case p.RequestID != lastID || time.Since(lastLine) >= 10*time.Second:
			fmt.Fprintln(stderr, p.Message)
			lastLine, lastID = time.Now(), p.RequestID
		}
	}
	tok, err := cf.client().Fetch(ctx, api.FetchRequest{Name: *name, Lifetime: *lifetime, Authz: authz}, progress)
	if live {
		fmt.Fprint(stderr, "\r\033[K")
	}
	if err != nil {
		return fail(stderr, "fetch", err)
	}
	if *cf.json {
		return printJSON(stdout, tok)
	}
	exp := "no expiry"
	if tok.Exp != nil {
		exp = "expires " + time.Unix(*tok.Exp, 0).Format(time.DateTime)
	}
	fmt.Fprintf(stdout, "fetched %s: %s from %s, %s\n", tok.Name, tok.Sub, tok.Iss, exp)
	return exitOK
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func runRemove(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cf := newClientFlags("rm", stderr, false)
	if err := cf.Parse(args); err != nil || cf.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: tokend rm NAME")
		return exitUsage
	}
	if err := cf.client().Remove(ctx, cf.Arg(0)); err != nil {
		return fail(stderr, "rm", err)
	}
	return exitOK
}

func runWipe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cf := newClientFlags("wipe", stderr, false)
	logout := cf.Bool("logout", false, "also unmount and stop the agent")
	if err := cf.Parse(args); err != nil || cf.NArg() > 0 {
		return exitUsage
	}
	if err := cf.client().Wipe(ctx, *logout); err != nil {
		return fail(stderr, "wipe", err)
	}
	return exitOK
}
