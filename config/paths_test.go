package config

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/store"
)

func TestDefaultSocket(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/4242")
	if got, want := DefaultSocket(), "/run/user/4242/tokend/agent.sock"; got != want {
		t.Errorf("DefaultSocket() = %q, want %q", got, want)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if got, want := DefaultSocket(), fmt.Sprintf("/run/user/%d/tokend/agent.sock", os.Getuid()); got != want {
		t.Errorf("without XDG_RUNTIME_DIR: DefaultSocket() = %q, want %q", got, want)
	}
	// $TOKEND_SOCKET is an override (SocketOverride), not the default.
	t.Setenv(SocketEnv, "/elsewhere.sock")
	if got := DefaultSocket(); strings.Contains(got, "elsewhere") {
		t.Errorf("DefaultSocket() = %q follows $%s", got, SocketEnv)
	}
}

// The socket is found in one order by every command: flag, environment,
// configuration, default.
func TestSocketOrder(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/xdg")
	resolve := func(flag string, c Config) string {
		if s := SocketOverride(flag); s != "" {
			return s
		}
		return c.AgentSocket()
	}
	withSocket := Default()
	withSocket.Socket = "/from/config.sock"

	t.Setenv(SocketEnv, "")
	if got := resolve("", Default()); got != "/xdg/tokend/agent.sock" {
		t.Errorf("nothing set: %q, want the default", got)
	}
	if got := resolve("", withSocket); got != "/from/config.sock" {
		t.Errorf("config set: %q, want the config's", got)
	}
	t.Setenv(SocketEnv, "/from/env.sock")
	if got := resolve("", withSocket); got != "/from/env.sock" {
		t.Errorf("config and $%s set: %q, want the environment's", SocketEnv, got)
	}
	if got := resolve("/from/flag.sock", withSocket); got != "/from/flag.sock" {
		t.Errorf("all set: %q, want the flag's", got)
	}
}

func TestFileOverride(t *testing.T) {
	t.Setenv(FileEnv, "")
	if got := FileOverride(""); got != "" {
		t.Errorf("FileOverride(\"\") = %q, want \"\" (the usual files)", got)
	}
	t.Setenv(FileEnv, "/from/env.toml")
	if got := FileOverride(""); got != "/from/env.toml" {
		t.Errorf("FileOverride(\"\") = %q, want $%s", got, FileEnv)
	}
	if got := FileOverride("/from/flag.toml"); got != "/from/flag.toml" {
		t.Errorf("FileOverride(flag) = %q, want the flag", got)
	}
}

func TestRuntimeFiles(t *testing.T) {
	got := RuntimeFiles("/run/user/7/tokend/agent.sock")
	want := Runtime{
		Socket:      "/run/user/7/tokend/agent.sock",
		Dir:         "/run/user/7/tokend",
		Lock:        "/run/user/7/tokend/agent.sock.lock",
		Log:         "/run/user/7/tokend/agent.log",
		PIDFile:     "/run/user/7/tokend/agent.pid",
		SessionLock: "/run/user/7/tokend/session.lock",
	}
	if got != want {
		t.Errorf("RuntimeFiles = %+v\nwant %+v", got, want)
	}
}

func TestTokenDir(t *testing.T) {
	// No HTCondor: PATH without condor_config_val.
	t.Setenv("PATH", t.TempDir())
	t.Setenv("_CONDOR_SEC_TOKEN_DIRECTORY", "")
	t.Setenv("HOME", "/not/the/home")

	c := Default()
	c.Dir = "/configured/tokens.d"
	if got, err := c.TokenDir(); err != nil || got != "/configured/tokens.d" {
		t.Errorf("with dir set: %q, %v", got, err)
	}

	c.Dir = ""
	u, err := user.LookupId(fmt.Sprint(os.Getuid()))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.TokenDir(); err != nil || got != filepath.Join(u.HomeDir, ".condor", "tokens.d") {
		t.Errorf("default: %q, %v; want <pw_dir>/.condor/tokens.d (not $HOME)", got, err)
	}

	t.Setenv("_CONDOR_SEC_TOKEN_DIRECTORY", "/condor/tokens")
	if got, err := c.TokenDir(); err != nil || got != "/condor/tokens" {
		t.Errorf("with SEC_TOKEN_DIRECTORY: %q, %v", got, err)
	}
}

func TestEnsurePrivateDir(t *testing.T) {
	root := t.TempDir()
	mode := func(p string) os.FileMode {
		t.Helper()
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode()
	}

	nested := filepath.Join(root, "a", "b")
	if err := EnsurePrivateDir(nested); err != nil {
		t.Fatal(err)
	}
	if m := mode(nested); !m.IsDir() || m.Perm() != 0o700 {
		t.Errorf("created %v, want a directory 0700", m)
	}

	open := filepath.Join(root, "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := EnsurePrivateDir(open); err != nil {
		t.Fatal(err)
	}
	if m := mode(open); m.Perm() != 0o700 {
		t.Errorf("an existing 0755 directory is left %v, want 0700", m.Perm())
	}

	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(root, "link")
	if err := os.Symlink(nested, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, link} {
		if err := EnsurePrivateDir(p); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Errorf("EnsurePrivateDir(%s) = %v, want not a directory", filepath.Base(p), err)
		}
	}

	if os.Geteuid() == 0 {
		theirs := filepath.Join(root, "theirs")
		if err := os.Mkdir(theirs, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(theirs, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		if err := EnsurePrivateDir(theirs); err == nil || !strings.Contains(err.Error(), "belongs to uid 4242") {
			t.Errorf("another user's directory: %v, want it refused", err)
		}
	}
}

// store keeps limits of its own for callers that give none; they must be
// the configuration's defaults until it asks config for them.
func TestStoreDefaultLimitsAreTheConfigs(t *testing.T) {
	l := Default().Limits
	if got := (store.Limits{MaxFiles: l.MaxFiles, MaxFileSize: l.MaxFileSize, MaxNameLen: l.MaxNameLen}); got != store.DefaultLimits {
		t.Errorf("config's default limits %+v differ from store.DefaultLimits %+v", got, store.DefaultLimits)
	}
}
