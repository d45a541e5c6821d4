package config

import (
	"errors"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// verifydFile redirects VerifydFile into a temporary directory and writes
// it (unless absent).
func verifydFile(t *testing.T, content string) string {
	t.Helper()
	old := VerifydFile
	t.Cleanup(func() { VerifydFile = old })
	VerifydFile = filepath.Join(t.TempDir(), "verifyd.toml")
	write(t, VerifydFile, content)
	return VerifydFile
}

func TestLoadVerifyd(t *testing.T) {
	// No file at the default place: the defaults.
	verifydFile(t, absent)
	got, err := LoadVerifyd("")
	if err != nil {
		t.Fatal(err)
	}
	if got != DefaultVerifydConfig() || got.Socket != DefaultVerifyd || got.Rate != DefaultVerifydRate || got.Burst != DefaultVerifydBurst || got.RefetchRate != 100 {
		t.Fatalf("no file: %+v, want the defaults", got)
	}
	if l, err := got.Level(); err != nil || l != slog.LevelInfo {
		t.Fatalf("default level %v, %v", l, err)
	}

	// The default file, when it exists; every key.
	verifydFile(t, `socket = "/run/v.sock"
password_dir = "/keys"
pool_key = "/pool/POOL"
trust_domain = "cm.example.org"
key_owner = -1
rate = 10.5
burst = 3
refetch_rate = 250.0
log_level = "debug"
`)
	got, err = LoadVerifyd("")
	want := Verifyd{Socket: "/run/v.sock", PasswordDir: "/keys", PoolKey: "/pool/POOL", TrustDomain: "cm.example.org", KeyOwner: -1, Rate: 10.5, Burst: 3, RefetchRate: 250, LogLevel: "debug"}
	if err != nil || got != want {
		t.Fatalf("every key: %+v, %v; want %+v", got, err, want)
	}

	// A named file must exist.
	missing := filepath.Join(t.TempDir(), "missing.toml")
	if _, err := LoadVerifyd(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing named file: %v", err)
	}
}

// verifyd's file gets the agent's errors: line numbers, unknown keys with
// the key meant (among verifyd's keys), and bad values naming the file.
func TestLoadVerifydErrors(t *testing.T) {
	for _, c := range []struct {
		name, file string
		want       []string // "FILE" is the file's path
	}{
		{"unknown key", "sockett = \"/x\"\n", []string{`FILE: unknown key "sockett"`, `did you mean "socket"?`}},
		{"wrong case", "Rate = 1.0\n", []string{`unknown key "Rate"`, `did you mean "rate"?`}},
		{"an agent key", "[validate]\nverifyd = \"/x\"\n", []string{`FILE: unknown key "validate"`}},
		{"syntax error", "socket = \"/x\"\nrate = \n", []string{"FILE:2:"}},
		{"type mismatch", "burst = \"many\"\n", []string{"FILE:1: burst: incompatible types"}},
		{"relative path", "password_dir = \"keys\"\n", []string{`config: FILE: password_dir = "keys": want an absolute path`}},
		{"negative rate", "rate = -1.0\n", []string{`FILE: rate = -1: want a positive number`}},
		{"zero burst", "burst = 0\n", []string{`FILE: burst = 0: want 1 or more`}},
		{"refetch rate too low", "refetch_rate = 0.5\n", []string{`FILE: refetch_rate = 0.5: want a number of refetches per second for the whole host, from 1 to 100000`}},
		{"refetch rate too high", "refetch_rate = 1e6\n", []string{`FILE: refetch_rate = 1e+06: want a number of refetches per second`}},
		{"refetch rate not a number", "refetch_rate = nan\n", []string{`FILE: refetch_rate = NaN: want a number of refetches per second`}},
		{"refetch rate as a string", "refetch_rate = \"100/s\"\n", []string{"FILE:1: refetch_rate: incompatible types"}},
		{"key owner", "key_owner = -2\n", []string{`FILE: key_owner = -2: want a uid`}},
		{"log level", "log_level = \"loud\"\n", []string{`FILE: log_level = "loud": want a log level: debug, info, warn or error`}},
		{"trust domain", "trust_domain = \"a b\"\n", []string{`FILE: trust_domain = "a b": want an issuer name`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := verifydFile(t, c.file)
			_, err := LoadVerifyd("")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if w = strings.ReplaceAll(w, "FILE", path); !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

// Check, after flags changed a loaded configuration, names no file.
func TestVerifydCheck(t *testing.T) {
	c := DefaultVerifydConfig()
	if err := c.Check(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	c.LogLevel, c.Socket = "", "rel.sock"
	err := c.Check()
	if err == nil || !strings.Contains(err.Error(), `config: log_level = "": want a log level`) || !strings.Contains(err.Error(), `socket = "rel.sock"`) {
		t.Fatalf("bad values: %v", err)
	}
}
