package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/verifyd"
)

// harden is secmem.Harden; tests that run verifyd in their own process
// replace it.
var harden = secmem.Harden

// runVerifyd is `tokend verifyd`: it reads the flags and the configuration
// file, loads the keys, listens (systemd socket activation first), tells
// systemd READY=1 and serves until ctx is done or SIGTERM/SIGINT arrives.
// The log goes to stderr. Exit codes: 0 stopped cleanly, 1 failed, 2 bad
// usage or configuration.
func runVerifyd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("tokend verifyd", flag.ContinueOnError)
	fl.SetOutput(stderr)
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			fl.SetOutput(stdout)
		}
	}
	configFile := fl.String("config", "", "configuration file (TOML; default "+config.VerifydFile+" when it exists)")
	socket := fl.String("socket", "", "socket to listen on when not socket-activated (default "+config.DefaultVerifyd+")")
	passwordDir := fl.String("password-dir", "", "SEC_PASSWORD_DIRECTORY (default: condor_config_val, else "+config.DefaultPasswordDir+")")
	poolKey := fl.String("pool-key", "", "SEC_TOKEN_POOL_SIGNING_KEY_FILE (default: condor_config_val, else <password-dir>/POOL)")
	trustDomain := fl.String("trust-domain", "", "the iss of the pool's tokens; tokens of other issuers get no verdict (default: condor_config_val TRUST_DOMAIN, else every token is judged)")
	logLevel := fl.String("log-level", "", "debug, info, warn or error (default info)")
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), "usage: tokend verifyd [--config FILE] [--socket PATH] [--password-dir DIR] [--pool-key FILE] [--trust-domain NAME] [--log-level LEVEL]\n\n"+
			"Holds the pool's signing keys and tells tokend agents whether a token's signature is good\nwith the current key. Runs as root (or the user owning the key files).\n\n")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "tokend verifyd: unexpected argument %q\n", fl.Arg(0))
		fl.Usage()
		return exitUsage
	}
	cfg, err := config.LoadVerifyd(*configFile)
	if err != nil {
		fmt.Fprintf(stderr, "tokend verifyd: %v\n", err)
		return exitUsage
	}
	fl.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "socket":
			cfg.Socket = *socket
		case "password-dir":
			cfg.PasswordDir = *passwordDir
		case "pool-key":
			cfg.PoolKey = *poolKey
		case "trust-domain":
			cfg.TrustDomain = *trustDomain
		case "log-level":
			cfg.LogLevel = *logLevel
		}
	})
	if err := cfg.Check(); err != nil {
		fmt.Fprintf(stderr, "tokend verifyd: %v\n", err)
		return exitUsage
	}
	level, _ := cfg.Level() // checked
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := harden(); err != nil {
		log.Warn("cannot harden the process against memory inspection", "error", err)
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	srv, err := verifyd.New(verifyd.Options{
		PasswordDir: cfg.PasswordDir,
		PoolKey:     cfg.PoolKey,
		TrustDomain: cfg.TrustDomain,
		KeyOwner:    cfg.KeyOwner,
		Rate:        cfg.Rate,
		Burst:       cfg.Burst,
		RefetchRate: cfg.RefetchRate,
		Logger:      log,
	})
	if err != nil {
		log.Error(err.Error())
		return exitFailure
	}
	l, err := verifyd.Listen(cfg.Socket)
	if err != nil {
		srv.Wipe()
		log.Error(err.Error())
		return exitFailure
	}
	defer l.Close()
	log.Info("verifyd listening", "socket", l.Addr().String(), "generation", srv.Generation(), "trust_domain", srv.TrustDomain(),
		"refetch_rate", cfg.RefetchRate)
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("cannot notify systemd", "error", err)
	}
	err = srv.Serve(ctx, l)
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	if err != nil {
		log.Error("serving failed", "error", err)
		return exitFailure
	}
	log.Info("verifyd stopped")
	return exitOK
}
