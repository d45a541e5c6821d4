package verifyd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/tokend/tokend/secmem"
)

// DefaultConfigFile is read by Run when --config is not given, if it
// exists.
const DefaultConfigFile = "/etc/tokend/verifyd.toml"

// Listen returns the listener verifyd serves on. Under systemd socket
// activation it is the (first Unix stream) socket systemd passed, and socket
// is ignored. Otherwise it creates socket (""means DefaultSocket): a
// missing parent directory is made with mode 0755, the socket gets mode
// 0666 (any local user may ask: answers hold no secrets, requests are rate
// limited per uid). An existing socket file is removed only when nothing
// answers on it (a stale one left by a crash); a live one is an error, and
// so is anything else at that path.
func Listen(socket string) (net.Listener, error) {
	passed, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("verifyd: socket activation: %w", err)
	}
	var l net.Listener
	for _, pl := range passed {
		switch {
		case pl == nil:
		case l == nil && pl.Addr().Network() == "unix":
			l = pl
		default:
			pl.Close()
		}
	}
	if l != nil {
		return l, nil
	}
	if len(passed) > 0 {
		return nil, fmt.Errorf("verifyd: systemd passed %d sockets but none is a Unix stream socket: check ListenStream= in tokend-verifyd.socket", len(passed))
	}

	if socket == "" {
		socket = DefaultSocket
	}
	dir := filepath.Dir(socket)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("verifyd: cannot create the socket directory: %w", err)
		}
		if err := os.Chmod(dir, 0o755); err != nil { // past the umask
			return nil, fmt.Errorf("verifyd: %w", err)
		}
	}
	if fi, err := os.Lstat(socket); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("verifyd: %s exists and is not a socket; refusing to remove it: move it away or choose another --socket", socket)
		}
		c, err := net.DialTimeout("unix", socket, 2*time.Second)
		switch {
		case err == nil:
			c.Close()
			return nil, fmt.Errorf("verifyd: another process is already listening on %s (is verifyd already running? systemctl status tokend-verifyd); not replacing it", socket)
		case errors.Is(err, syscall.ECONNREFUSED):
			// Stale: left by a process that is gone.
			if err := os.Remove(socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("verifyd: cannot remove the stale socket: %w", err)
			}
		default:
			return nil, fmt.Errorf("verifyd: cannot tell whether %s is in use: %w", socket, err)
		}
	}
	l, err = net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("verifyd: %w", err)
	}
	if err := os.Chmod(socket, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("verifyd: %w", err)
	}
	return l, nil
}

// fileConfig is the verifyd configuration file (TOML).
type fileConfig struct {
	Socket      string  `toml:"socket"`
	PasswordDir string  `toml:"password_dir"`
	PoolKey     string  `toml:"pool_key"`
	KeyOwner    int     `toml:"key_owner"`
	Rate        float64 `toml:"rate"`
	Burst       int     `toml:"burst"`
	LogLevel    string  `toml:"log_level"`
}

// loadConfig reads path, which must exist; with path "" it reads
// DefaultConfigFile if that exists. Unknown keys are errors.
func loadConfig(path string) (fileConfig, error) {
	var c fileConfig
	optional := path == ""
	if optional {
		path = DefaultConfigFile
	}
	f, err := os.Open(path)
	if optional && errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > 1<<20 {
		return c, fmt.Errorf("config %s: larger than 1 MiB", path)
	}
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return c, fmt.Errorf("config %s: unknown keys %s (known: socket, password_dir, pool_key, key_owner, rate, burst, log_level)", path, strings.Join(keys, ", "))
	}
	return c, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if s == "" {
		return slog.LevelInfo, nil
	}
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// harden is secmem.Harden; tests replace it.
var harden = secmem.Harden

// Run is `tokend verifyd`: it reads the flags and the configuration file,
// loads the keys, listens (systemd socket activation first), tells systemd
// READY=1 and serves until ctx is done or SIGTERM/SIGINT arrives. The log
// goes to stderr. Exit codes: 0 stopped cleanly, 1 failed, 2 bad usage or
// configuration.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("tokend verifyd", flag.ContinueOnError)
	fl.SetOutput(stderr)
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			fl.SetOutput(stdout)
		}
	}
	configFile := fl.String("config", "", "configuration file (TOML; default "+DefaultConfigFile+" when it exists)")
	socket := fl.String("socket", "", "socket to listen on when not socket-activated (default "+DefaultSocket+")")
	passwordDir := fl.String("password-dir", "", "SEC_PASSWORD_DIRECTORY (default: condor_config_val, else "+DefaultPasswordDir+")")
	poolKey := fl.String("pool-key", "", "SEC_TOKEN_POOL_SIGNING_KEY_FILE (default: condor_config_val, else <password-dir>/POOL)")
	logLevel := fl.String("log-level", "", "debug, info, warn or error (default info)")
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), "usage: tokend verifyd [--config FILE] [--socket PATH] [--password-dir DIR] [--pool-key FILE] [--log-level LEVEL]\n\n"+
			"Holds the pool's signing keys and tells tokend agents whether a token's signature is good\nwith the current key. Runs as root (or the user owning the key files).\n\n")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "tokend verifyd: unexpected argument %q\n", fl.Arg(0))
		fl.Usage()
		return 2
	}
	cfg, err := loadConfig(*configFile)
	if err != nil {
		fmt.Fprintf(stderr, "tokend verifyd: %v\n", err)
		return 2
	}
	fl.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "socket":
			cfg.Socket = *socket
		case "password-dir":
			cfg.PasswordDir = *passwordDir
		case "pool-key":
			cfg.PoolKey = *poolKey
		case "log-level":
			cfg.LogLevel = *logLevel
		}
	})
	level, err := parseLevel(cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "tokend verifyd: log level %q: want debug, info, warn or error\n", cfg.LogLevel)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := harden(); err != nil {
		log.Warn("cannot harden the process against memory inspection", "error", err)
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	srv, err := New(Options{
		PasswordDir: cfg.PasswordDir,
		PoolKey:     cfg.PoolKey,
		Socket:      cfg.Socket,
		KeyOwner:    cfg.KeyOwner,
		Rate:        cfg.Rate,
		Burst:       cfg.Burst,
		Logger:      log,
	})
	if err != nil {
		log.Error(err.Error())
		return 1
	}
	l, err := Listen(cfg.Socket)
	if err != nil {
		srv.wipe()
		log.Error(err.Error())
		return 1
	}
	defer l.Close()
	log.Info("verifyd listening", "socket", l.Addr().String(), "generation", srv.Generation())
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("cannot notify systemd", "error", err)
	}
	err = srv.Serve(ctx, l)
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	if err != nil {
		log.Error("serving failed", "error", err)
		return 1
	}
	log.Info("verifyd stopped")
	return 0
}
