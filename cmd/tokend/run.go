package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

// Exit codes, documented in the README and `tokend help`.
const (
	exitOK       = 0
	exitFailure  = 1 // something went wrong; the message says what
	exitUsage    = 2 // bad command line
	exitNoAgent  = 3 // no agent answers on the socket
	exitNotFound = 4 // no such token (rm)
	exitFetch    = 5 // the fetch failed (HTCondor's message is shown)
	exitDoctor   = 6 // doctor found problems
)

const usage = `usage: tokend <command> [flags]

Agent and services:
  agent    [--config FILE] [--dir DIR] [--socket PATH]   run the per-user agent (systemd user unit, PAM)
  verifyd  [--config FILE] [--socket PATH] [--password-dir DIR] [--pool-key FILE]
                                                  run the key-verification service (root)
  session  open|close                             PAM session hook (pam_exec); see docs/admin.md

Talking to the agent (--socket PATH, else $TOKEND_SOCKET, else the config's socket
(--config FILE, else $TOKEND_CONFIG, else /etc/tokend/config.toml and the user's own),
else $XDG_RUNTIME_DIR/tokend/agent.sock):
  status   [--json]                               what the agent holds and how it is doing
  list     [--all] [--json]                       tokens (--all: hidden ones too, with why)
  fetch    [--pool NAME] [--name N] [--lifetime D] [--authz A]...
                                                  fetch a fresh token now (--pool: from that [pools.NAME])
  rm       NAME                                   remove a token file
  wipe     [--logout]                             remove every token (--logout: and stop the agent)

Other:
  doctor   [--json]                               check this machine's setup and say how to fix it
  demo                                            the whole story on this machine, no pool needed
  version                                         print the version

Exit codes: 0 ok, 1 failure, 2 usage, 3 no agent, 4 no such token, 5 fetch failed, 6 doctor found problems.
`

// run is the whole program; main only wires it to the process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "agent":
		return runAgent(ctx, args, stderr)
	case "verifyd":
		return runVerifyd(ctx, args, stdout, stderr)
	case "session":
		return runSession(ctx, args, stdout, stderr)
	case "status":
		return runStatus(ctx, args, stdout, stderr)
	case "list", "ls":
		return runList(ctx, args, stdout, stderr)
	case "fetch":
		return runFetch(ctx, args, stdout, stderr)
	case "rm":
		return runRemove(ctx, args, stdout, stderr)
	case "wipe":
		return runWipe(ctx, args, stdout, stderr)
	case "doctor":
		return runDoctor(ctx, args, stdout, stderr)
	case "demo":
		return runDemo(ctx, args, stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "tokend %s\n", version)
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "tokend: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

// newLogger logs text to w; TOKEND_LOG=debug shows more.
func newLogger(w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if strings.EqualFold(os.Getenv("TOKEND_LOG"), "debug") {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}
