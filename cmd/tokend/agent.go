package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/tokend/tokend/agent"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/secmem"
)

func runAgent(ctx context.Context, args []string, stderr io.Writer) int {
	fl := flag.NewFlagSet("tokend agent", flag.ContinueOnError)
	fl.SetOutput(stderr)
	configFile := fl.String("config", "", "config `file` (default $TOKEND_CONFIG, else /etc/tokend/config.toml and ~/.config/tokend/config.toml)")
	dir := fl.String("dir", "", "token `directory` (overrides the config)")
	socket := fl.String("socket", "", "control socket `path` (default $TOKEND_SOCKET, else the config's socket, else $XDG_RUNTIME_DIR/tokend/agent.sock)")
	if err := fl.Parse(args); err != nil || fl.NArg() > 0 {
		return exitUsage
	}
	log := newLogger(stderr)
	if err := secmem.Harden(); err != nil {
		log.Warn("could not harden the process", "err", err)
	}
	secmem.SetWarn(func(err error) { log.Warn(err.Error()) })

	cfg, err := config.Load(config.FileOverride(*configFile))
	if err != nil {
		fmt.Fprintf(stderr, "tokend agent: %v\n", err)
		return exitUsage
	}
	if *dir != "" {
		cfg.Dir = *dir
	}
	// The clients look for the agent in the same order.
	if s := config.SocketOverride(*socket); s != "" {
		cfg.Socket = s
	}
	if err := cfg.Check(); err != nil {
		fmt.Fprintf(stderr, "tokend agent: %v\n", err)
		return exitUsage
	}
	// An access point runs hundreds of agents: keep each small (see
	// agent/footprint.go). Before the mount: go-fuse sizes its readers
	// from GOMAXPROCS.
	agent.PinProcs(os.Getenv("GOMAXPROCS"))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go agent.ReturnMemory(ctx)
	err = agent.Run(ctx, agent.Options{
		Config:  cfg,
		Logger:  log,
		Version: version,
		Ready:   func() { notifyReady(log) },
	})
	if err != nil {
		log.Error("agent failed", "err", err)
		return exitFailure
	}
	return exitOK
}

// notifyReady tells systemd (Type=notify) that the mount is up.
func notifyReady(log *slog.Logger) {
	if _, err := daemon.SdNotify(true, daemon.SdNotifyReady); err != nil {
		log.Warn("could not notify systemd", "err", err)
	}
}
