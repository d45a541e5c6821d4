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
	writeStatus(stdout, st)
	return exitOK
}

// writeStatus prints the agent's status for people. An agent of an
// earlier release sends no pools: then its one session token and key check
// are shown as before.
func writeStatus(out io.Writer, st api.Status) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
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
	tokens := fmt.Sprintf("%d shown, %d hidden", st.Tokens, st.Hidden)
	if st.Remembered > 0 {
		tokens += fmt.Sprintf(" (%d kept in memory: they come back when their key does)", st.Remembered)
	}
	fmt.Fprintf(w, "tokens:\t%s\n", tokens)
	if len(st.Pools) == 0 {
		writeSession(w, "", config.DefaultPool, st.Session, st.Validation)
	}
	for _, p := range st.Pools {
		fmt.Fprintf(w, "pool %s:\t%s\n", p.Name, describeTrust(p))
		writeSession(w, "  ", p.Name, p.Session, p.Validation)
		if p.LastError != "" {
			fmt.Fprintf(w, "  problem:\t%s\n", p.LastError)
		}
	}
	if st.Sessions > 0 {
		fmt.Fprintf(w, "login sessions:\t%d\n", st.Sessions)
	}
	fmt.Fprintf(w, "memory:\t%s\n", describeMemory(st))
	w.Flush()
}

// writeSession prints a pool's session token and key check lines.
func writeSession(w io.Writer, indent, pool string, s api.Session, v api.Validation) {
	fmt.Fprintf(w, "%ssession token:\t%s\n", indent, describePoolSession(pool, s))
	if s.LastError != "" {
		fmt.Fprintf(w, "%slast error:\t%s (%d failures in a row)\n", indent, s.LastError, s.Failures)
	}
	fmt.Fprintf(w, "%skey check:\t%s\n", indent, describeValidation(v))
}

// describeTrust says which tokens a pool speaks for.
func describeTrust(p api.PoolStatus) string {
	var s string
	if p.TrustDomain == "" {
		s = "trust domain unknown"
		if p.ClaimsOther {
			s += ": judges every issuer no other pool claims"
		}
		s += " (set trust_domain, or run verifyd --trust-domain)"
	} else {
		s = "trust domain " + p.TrustDomain
		if p.TrustFrom != "" {
			s += " (from " + p.TrustFrom + ")"
		}
	}
	if p.TokenMaxAge > 0 {
		s += fmt.Sprintf("; tokens older than %s are refused (SEC_TOKEN_MAX_AGE)", config.Duration(time.Duration(p.TokenMaxAge)*time.Second))
	}
	return s
}

func describeMemory(st api.Status) string {
	var used string
	if st.MemoryLockedBytes > 0 {
		used = kib(st.MemoryLockedBytes)
		if st.MemoryLockLimit > 0 {
			used += " of " + kib(st.MemoryLockLimit) + " RLIMIT_MEMLOCK"
		}
	}
	if !st.MemoryLocked {
		s := "NOT locked: raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit)"
		if used != "" {
			s += "; locked " + used
		}
		return s
	}
	if used != "" {
		return "locked, " + used + " (tokens cannot be swapped out)"
	}
	return "locked (tokens cannot be swapped out)"
}

// kib formats a byte count in KiB, rounded up.
func kib(n int64) string { return fmt.Sprintf("%d KiB", (n+1023)/1024) }

// describeSession describes the default pool's session token.
func describeSession(s api.Session) string { return describePoolSession(config.DefaultPool, s) }

// describePoolSession describes a pool's session token.
func describePoolSession(pool string, s api.Session) string {
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
		fmt.Fprintf(&b, " (by you; `%s` gets a new one)", fetchCommand(pool))
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

// fetchCommand is the command that fetches pool's session token.
func fetchCommand(pool string) string {
	if pool == "" || pool == config.DefaultPool {
		return "tokend fetch"
	}
	return "tokend fetch --pool " + pool
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
	writeTokens(stdout, toks)
	return exitOK
}

// writeTokens prints tokens as a table for people.
func writeTokens(out io.Writer, toks []api.Token) {
	if len(toks) == 0 {
		fmt.Fprintln(out, "no tokens")
		return
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tPOOL\tSUBJECT\tISSUER\tKEY\tEXPIRES\tSTATE")
	for _, t := range toks {
		pool := t.Pool
		if pool == "" {
			pool = "-" // of no configured pool (or an agent that does not say)
		}
		exp := "never"
		if t.Exp != nil {
			exp = time.Unix(*t.Exp, 0).Format(time.DateTime)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, pool, t.Sub, t.Iss, t.Kid, exp, describeState(t))
	}
	w.Flush()
}

// describeState is a token's state and why: "valid", "valid (unknown-key)",
// "hidden (expired)", "hidden (rotated-key, kept)".
func describeState(t api.Token) string {
	var why []string
	if t.Reason != "" {
		why = append(why, t.Reason)
	}
	if t.Remembered {
		why = append(why, "kept")
	}
	if len(why) == 0 {
		return t.State
	}
	return t.State + " (" + strings.Join(why, ", ") + ")"
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func runFetch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cf := newClientFlags("fetch", stderr, true)
	pool := cf.String("pool", "", "fetch from pool `NAME` (a [pools.NAME] table; default: the default pool)")
	name := cf.String("name", "", "token file `name` (default: the pool's session token)")
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
	tok, err := cf.client().Fetch(ctx, api.FetchRequest{Pool: *pool, Name: *name, Lifetime: *lifetime, Authz: authz}, progress)
	if live {
		fmt.Fprint(stderr, "\r\033[K")
	}
	if err != nil {
		return fail(stderr, "fetch", olderAgent(err, "pool"))
	}
	if *cf.json {
		return printJSON(stdout, tok)
	}
	fmt.Fprintln(stdout, describeFetched(tok))
	return exitOK
}

// olderAgent explains the refusal of a request field that an agent of an
// earlier release does not know (it refuses unknown fields).
func olderAgent(err error, field string) error {
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeBadRequest && strings.Contains(ae.Message, fmt.Sprintf("unknown field %q", field)) {
		return fmt.Errorf("the agent is of an earlier release and knows no %s: restart it to run this tokend (systemctl --user restart tokend, or log out and in): %w", field, err)
	}
	return err
}

func describeFetched(tok api.Token) string {
	exp := "no expiry"
	if tok.Exp != nil {
		exp = "expires " + time.Unix(*tok.Exp, 0).Format(time.DateTime)
	}
	pool := ""
	if tok.Pool != "" && tok.Pool != config.DefaultPool {
		pool = " (pool " + tok.Pool + ")"
	}
	return fmt.Sprintf("fetched %s%s: %s from %s, %s", tok.Name, pool, tok.Sub, tok.Iss, exp)
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
