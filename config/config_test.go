package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// absent marks a config file that must not exist.
const absent = "\x00absent"

type env struct {
	system, user string // paths of the system and user files
}

// setup redirects the system and user files into a temporary directory and
// writes them (unless absent). It must not run in parallel tests.
func setup(t *testing.T, system, user string) env {
	t.Helper()
	root := t.TempDir()
	old := SystemFile
	t.Cleanup(func() { SystemFile = old })
	SystemFile = filepath.Join(root, "etc", "tokend", "config.toml")
	t.Setenv("HOME", filepath.Join(root, "home"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(root, "xdg"))
	e := env{system: SystemFile, user: filepath.Join(root, "xdg", "tokend", "config.toml")}
	if got := UserFile(); got != e.user {
		t.Fatalf("UserFile() = %q, want %q", got, e.user)
	}
	write(t, e.system, system)
	write(t, e.user, user)
	return e
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if content == absent {
		return
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestDefault(t *testing.T) {
	d := Default()
	if err := d.Check(); err != nil {
		t.Fatalf("Default().Check() = %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"dir", d.Dir, ""},
		{"socket", d.Socket, ""},
		{"session_token", d.SessionToken, "tokend-session"},
		{"legacy", d.Legacy, "import"},
		{"allow_root", d.AllowRoot, false},
		{"audit", d.Audit, false},
		{"fetch.method", d.Fetch.Method, "exec"},
		{"fetch.command", len(d.Fetch.Command), 0},
		{"fetch.lifetime", d.Fetch.Lifetime.Std(), time.Duration(0)},
		{"fetch.authz", len(d.Fetch.Authz), 0},
		{"fetch.timeout", d.Fetch.Timeout.Std(), 60 * time.Second},
		{"fetch.wait", d.Fetch.Wait.Std(), 2 * time.Second},
		{"trust_domain", d.TrustDomain, ""},
		{"pools", len(d.Pools), 0},
		{"fetch.local.key", d.Fetch.Local.Key, "POOL"},
		{"fetch.local.key_dir", d.Fetch.Local.KeyDir, ""},
		{"validate.trust_domains", len(d.Validate.TrustDomains), 0},
		{"validate.verifyd", d.Validate.Verifyd, "/run/tokend/verify.sock"},
		{"validate.interval", d.Validate.Interval.Std(), 5 * time.Minute},
		{"validate.exp_margin", d.Validate.ExpMargin.Std(), 30 * time.Second},
		{"session.grace", d.Session.Grace.Std(), time.Duration(0)},
		{"limits.max_files", d.Limits.MaxFiles, 64},
		{"limits.max_file_size", d.Limits.MaxFileSize, 65536},
		{"limits.max_name_len", d.Limits.MaxNameLen, 255},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("Default() %s = %v, want %v", c.name, c.got, c.want)
		}
	}

	// Each call returns fresh slices.
	d.Fetch.Command = append(d.Fetch.Command, "x")
	d.Validate.Probe = append(d.Validate.Probe[:0], "y")
	if e := Default(); len(e.Fetch.Command) != 0 || len(e.Validate.Probe) != 0 {
		t.Errorf("Default() shares slices between calls: %+v", e)
	}
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name         string
		system, user string
		explicit     string // content of an explicit file; absent = Load("")
		want         func(*Config)
	}{
		{
			name: "no files", system: absent, user: absent, explicit: absent,
			want: func(*Config) {},
		},
		{
			name: "empty files", system: "", user: "", explicit: absent,
			want: func(*Config) {},
		},
		{
			name:   "system only",
			system: "legacy = \"move\"\n[fetch]\ntimeout = \"10s\"\n", user: absent, explicit: absent,
			want: func(c *Config) { c.Legacy = "move"; c.Fetch.Timeout = Duration(10 * time.Second) },
		},
		{
			name:   "user only",
			system: absent, user: "audit = true\n[limits]\nmax_files = 8\n", explicit: absent,
			want: func(c *Config) { c.Audit = true; c.Limits.MaxFiles = 8 },
		},
		{
			name:     "user overrides system key by key",
			system:   "legacy = \"move\"\nallow_root = true\n[fetch]\ntimeout = \"10s\"\npool = \"cm.example.org\"\n",
			user:     "[fetch]\ntimeout = \"20s\"\n[fetch.local]\nissuer = \"me\"\n",
			explicit: absent,
			want: func(c *Config) {
				c.Legacy = "move"
				c.AllowRoot = true
				c.Fetch.Timeout = Duration(20 * time.Second)
				c.Fetch.Pool = "cm.example.org"
				c.Fetch.Local.Issuer = "me"
			},
		},
		{
			name:     "user array replaces system array",
			system:   "[fetch]\ncommand = [\"a\", \"b\", \"c\"]\nauthz = [\"READ\", \"WRITE\"]\n",
			user:     "[fetch]\ncommand = [\"x\"]\nauthz = []\n",
			explicit: absent,
			want: func(c *Config) {
				c.Fetch.Command = []string{"x"}
				c.Fetch.Authz = []string{}
			},
		},
		{
			name:     "explicit file ignores system and user",
			system:   "legacy = \"move\"\n",
			user:     "legacy = \"ignore\"\n",
			explicit: "audit = true\n[validate]\ntrust_domains = [\"cm.example.org\"]\ninterval = \"1m\"\n",
			want: func(c *Config) {
				c.Audit = true
				c.Validate.TrustDomains = []string{"cm.example.org"}
				c.Validate.Interval = Duration(time.Minute)
			},
		},
		{
			name:     "explicit file ignores broken system file",
			system:   "this is not toml",
			user:     "nor = this",
			explicit: "",
			want:     func(*Config) {},
		},
		{
			name:   "every table",
			system: absent, explicit: absent,
			user: `dir = "/tmp/tokens"
socket = "/tmp/agent.sock"
session_token = "s"
[fetch]
method = "local"
lifetime = "1h"
[fetch.local]
key_dir = "/tmp/keys"
key = "KEY"
identity = "alice@example.org"
[validate]
verifyd = ""
key_dir = "/tmp/keys"
pool_key = "/tmp/keys/POOL"
probe = ["condor_ping", "-type", "collector", "READ"]
exp_margin = "0s"
[session]
grace = "1m30s"
[limits]
max_file_size = 1048576
max_name_len = 1
`,
			want: func(c *Config) {
				c.Dir = "/tmp/tokens"
				c.Socket = "/tmp/agent.sock"
				c.SessionToken = "s" // max_name_len = 1
				c.Fetch.Method = "local"
				c.Fetch.Lifetime = Duration(time.Hour)
				c.Fetch.Local = Local{KeyDir: "/tmp/keys", Key: "KEY", Identity: "alice@example.org"}
				c.Validate.Verifyd = ""
				c.Validate.KeyDir = "/tmp/keys"
				c.Validate.PoolKey = "/tmp/keys/POOL"
				c.Validate.Probe = []string{"condor_ping", "-type", "collector", "READ"}
				c.Validate.ExpMargin = 0
				c.Session.Grace = Duration(90 * time.Second)
				c.Limits.MaxFileSize = 1 << 20
				c.Limits.MaxNameLen = 1
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setup(t, tt.system, tt.user)
			path := ""
			if tt.explicit != absent {
				path = filepath.Join(t.TempDir(), "explicit.toml")
				write(t, path, tt.explicit)
			}
			got, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := Default()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Load:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestUserFile(t *testing.T) {
	tests := []struct {
		xdg, home, want string
	}{
		{"/x", "/h", "/x/tokend/config.toml"},
		{"", "/h", "/h/.config/tokend/config.toml"},
		{"relative", "/h", "/h/.config/tokend/config.toml"}, // the XDG spec says to ignore relative paths
		{"", "", ""},
		{"", "relative", ""},
	}
	for _, tt := range tests {
		t.Setenv("XDG_CONFIG_HOME", tt.xdg)
		t.Setenv("HOME", tt.home)
		if got := UserFile(); got != tt.want {
			t.Errorf("XDG_CONFIG_HOME=%q HOME=%q: UserFile() = %q, want %q", tt.xdg, tt.home, got, tt.want)
		}
	}
}

func TestLoadUserFileFromHome(t *testing.T) {
	e := setup(t, absent, absent)
	t.Setenv("XDG_CONFIG_HOME", "")
	home := os.Getenv("HOME")
	write(t, filepath.Join(home, ".config", "tokend", "config.toml"), "legacy = \"ignore\"\n")
	write(t, e.user, "legacy = \"move\"\n") // not used: XDG_CONFIG_HOME is unset
	got, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if got.Legacy != "ignore" {
		t.Errorf("legacy = %q, want ignore (from ~/.config)", got.Legacy)
	}
}

func TestLoadErrors(t *testing.T) {
	const big = MaxFileBytes + 1
	tests := []struct {
		name string
		file string   // content of the user file
		want []string // substrings of the error; "FILE" is replaced by the file's path
		not  []string // substrings that must not appear
	}{
		{"unknown key", "colour = \"blue\"\n", []string{`FILE: unknown key "colour"`}, nil},
		{"unknown nested key", "[fetch]\nlifetme = \"1s\"\n", []string{`FILE: unknown key "fetch.lifetme"`, `did you mean "fetch.lifetime"?`}, nil},
		{"key in wrong table", "timeout = \"1s\"\n", []string{`unknown key "timeout"`, `did you mean "fetch.timeout"?`}, nil},
		{"unknown table reported once", "[colours]\nred = 1\nblue = 2\n", []string{`FILE: unknown key "colours"`}, []string{"colours.red", "colours.blue"}},
		{"wrong case", "Dir = \"/x\"\n", []string{`FILE: unknown key "Dir"`, `did you mean "dir"?`}, nil},
		{"wrong case nested", "[Fetch]\nmethod = \"exec\"\n", []string{`FILE: unknown key "Fetch"`, `did you mean "fetch"?`}, nil},
		{"several unknown keys", "a = 1\nb = 2\n", []string{`unknown key "a"`, `unknown key "b"`}, nil},
		{"syntax error", "legacy = \"import\"\n\ndir = \"unterminated\n", []string{"FILE:3:"}, nil},
		{"syntax error no value", "[fetch]\nmethod =\n", []string{"FILE:2:"}, nil},
		{"duplicate key", "dir = \"/a\"\ndir = \"/b\"\n", []string{"FILE:2:", "dir"}, nil},
		{"type mismatch", "\n[limits]\nmax_files = \"many\"\n", []string{`FILE:3: limits.max_files: incompatible types: TOML value has type string; want integer`}, nil},
		{"array expected", "[fetch]\ncommand = \"condor_token_fetch\"\n", []string{`FILE:2: fetch.command: incompatible types: TOML value has type string; want an array`}, nil},
		{"table expected", "fetch = 3\n", []string{`FILE:`, `fetch`}, nil},
		{"bad legacy", "legacy = \"copy\"\n", []string{`config: FILE: legacy = "copy": want import, move or ignore`}, nil},
		{"bad method", "[fetch]\nmethod = \"ftp\"\n", []string{`FILE: fetch.method = "ftp": want exec, request or local`}, nil},
		{"bad duration", "\n[fetch]\ntimeout = \"soon\"\n", []string{`FILE:3: fetch.timeout: invalid duration "soon"`}, nil},
		{"duration without unit", "[fetch]\ntimeout = 60\n", []string{`FILE:2: fetch.timeout: invalid duration "60"`, `"30s"`}, nil},
		{"negative duration", "[validate]\nexp_margin = \"-5s\"\n", []string{`FILE:2: validate.exp_margin: negative duration "-5s"`}, nil},
		{"negative grace", "[session]\ngrace = \"-1m\"\n", []string{`session.grace: negative duration`}, nil},
		{"zero timeout", "[fetch]\ntimeout = \"0s\"\n", []string{`FILE: fetch.timeout = "0s": want a positive duration`}, nil},
		{"zero interval", "[validate]\ninterval = \"0s\"\n", []string{`FILE: validate.interval = "0s": want a positive duration`}, nil},
		{"fractional lifetime", "[fetch]\nlifetime = \"1.5s\"\n", []string{`fetch.lifetime = "1.5s": want whole seconds`}, nil},
		{"max_files zero", "[limits]\nmax_files = 0\n", []string{`limits.max_files = 0: want 1 to 4096`}, nil},
		{"max_files negative", "[limits]\nmax_files = -1\n", []string{`limits.max_files = -1: want 1 to 4096`}, nil},
		{"max_files too many", "[limits]\nmax_files = 4097\n", []string{`limits.max_files = 4097: want 1 to 4096`}, nil},
		{"max_file_size too big", "[limits]\nmax_file_size = 1048577\n", []string{`limits.max_file_size = 1048577: want 1 to 1048576 bytes`}, nil},
		{"max_name_len too long", "[limits]\nmax_name_len = 256\n", []string{`limits.max_name_len = 256: want 1 to 255`}, nil},
		{"session token too long for max_name_len", "[limits]\nmax_name_len = 5\n", []string{`session_token = "tokend-session": want a name of at most limits.max_name_len = 5 bytes`}, nil},
		{"session token hidden", "session_token = \".hidden\"\n", []string{`session_token = ".hidden": want a plain file name not starting with "."`}, nil},
		{"session token path", "session_token = \"a/b\"\n", []string{`session_token = "a/b": want a plain file name`}, nil},
		{"session token dotdot", "session_token = \"..\"\n", []string{`session_token = "..": want a plain file name`}, nil},
		{"session token empty", "session_token = \"\"\n", []string{`session_token = "": want a plain file name`}, nil},
		{"session token newline", "session_token = \"a\\nb\"\n", []string{`session_token = "a\nb": want a file name without control characters`}, nil},
		{"relative socket", "socket = \"agent.sock\"\n", []string{`socket = "agent.sock": want an absolute path`}, nil},
		{"relative dir", "dir = \"tokens.d\"\n", []string{`dir = "tokens.d": want an absolute path`}, nil},
		{"relative key_dir", "[validate]\nkey_dir = \"keys\"\n", []string{`validate.key_dir = "keys": want an absolute path`}, nil},
		{"empty program", "[fetch]\ncommand = [\"\", \"-x\"]\n", []string{`fetch.command = ["", "-x"]: want a program name`}, nil},
		{"empty probe program", "[validate]\nprobe = [\"\"]\n", []string{`validate.probe = [""]: want a program name`}, nil},
		{"empty authz", "[fetch]\nauthz = [\"READ\", \"\"]\n", []string{`fetch.authz = ["READ", ""]: want authorization levels`}, nil},
		{"empty trust domain", "[validate]\ntrust_domains = [\"\"]\n", []string{`validate.trust_domains = [""]`}, nil},
		{"pool looks like a flag", "[fetch]\npool = \"-debug\"\n", []string{`fetch.pool = "-debug": want a value not starting with "-"`}, nil},
		{"type with space", "[fetch]\ntype = \"A B\"\n", []string{`fetch.type = "A B": want a value without spaces`}, nil},
		{"local key path", "[fetch.local]\nkey = \"../POOL\"\n", []string{`fetch.local.key = "../POOL": want a plain file name`}, nil},
		{"local key empty", "[fetch.local]\nkey = \"\"\n", []string{`fetch.local.key = "": want a plain file name`}, nil},
		{"all problems at once", "legacy = \"copy\"\n[fetch]\nmethod = \"ftp\"\n[limits]\nmax_files = 0\n",
			[]string{`legacy = "copy"`, `fetch.method = "ftp"`, `limits.max_files = 0`}, nil},
		{"too big", "# " + strings.Repeat("x", big) + "\n", []string{"FILE: file is larger than 1048576 bytes"}, nil},
		{"too big even if valid after the limit", strings.Repeat("\n", big), []string{"larger than"}, nil},
		{"long values are shortened", "legacy = \"" + strings.Repeat("x", 10000) + "\"\n", []string{`legacy = "xxxx`, `...: want import`}, []string{strings.Repeat("x", 201)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t, absent, tt.file)
			_, err := Load("")
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			msg := err.Error()
			for _, w := range tt.want {
				w = strings.ReplaceAll(w, "FILE", e.user)
				if !strings.Contains(msg, w) {
					t.Errorf("error %q\ndoes not contain %q", msg, w)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(msg, n) {
					t.Errorf("error %q\ncontains %q", msg, n)
				}
			}
			if len(msg) > 4096 {
				t.Errorf("error is %d bytes long", len(msg))
			}
			// The same content as an explicit file gives the same error,
			// naming that file.
			path := filepath.Join(t.TempDir(), "explicit.toml")
			write(t, path, tt.file)
			_, err2 := Load(path)
			if err2 == nil || strings.ReplaceAll(err2.Error(), path, e.user) != msg {
				t.Errorf("Load(%q) = %v, want %q with the path replaced", path, err2, msg)
			}
		})
	}
}

func TestLoadErrorNamesTheFileThatSetTheKey(t *testing.T) {
	tests := []struct {
		name, system, user string
		want, not          string // "SYS" and "USER" are replaced by the paths
	}{
		{"bad value in system file", "legacy = \"copy\"\n", "", "config: SYS: legacy = \"copy\"", "USER"},
		{"bad value in user file", "legacy = \"move\"\n", "legacy = \"copy\"\n", "config: USER: legacy = \"copy\"", "SYS"},
		{"user overrides a bad system value", "legacy = \"copy\"\n", "legacy = \"move\"\n", "", ""},
		{"unknown key in system file", "colour = 1\n", "", "SYS: unknown key \"colour\"", "USER"},
		{"syntax error in system file", "= 1\n", "", "SYS:1:", "USER"},
		{"bad value from the defaults", "", "[limits]\nmax_name_len = 3\n", "config: session_token = \"tokend-session\"", "SYS"},
		{"missing key of a pool", "[pools.a.fetch]\npool = \"cm\"\n", "", "config: SYS: pools.a.trust_domain: want", "USER"},
		{"missing key of a replaced pool", "[pools.a]\ntrust_domain = \"a\"\n", "[pools.a.fetch]\npool = \"cm\"\n", "config: USER: pools.a.trust_domain: want", "SYS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t, tt.system, tt.user)
			r := strings.NewReplacer("SYS", e.system, "USER", e.user)
			_, err := Load("")
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if w := r.Replace(tt.want); !strings.Contains(err.Error(), w) {
				t.Errorf("error %q\ndoes not contain %q", err, w)
			}
			if n := r.Replace(tt.not); tt.not != "" && strings.Contains(err.Error(), n) {
				t.Errorf("error %q\ncontains %q", err, n)
			}
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	setup(t, absent, absent)
	dir := t.TempDir()

	missing := filepath.Join(dir, "missing.toml")
	_, err := Load(missing)
	if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing) = %v, want a not-exist error naming the file", err)
	}

	_, err = Load(dir)
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("Load(directory) = %v, want an error naming it", err)
	}

	// An unreadable optional file is an error, not silently skipped.
	e := setup(t, absent, absent)
	if err := os.MkdirAll(e.system, 0o755); err != nil { // a directory where the file should be
		t.Fatal(err)
	}
	if _, err := Load(""); err == nil || !strings.Contains(err.Error(), e.system) {
		t.Errorf("Load with a directory as system file = %v, want an error naming it", err)
	}

	// Syntax errors keep the toml.ParseError reachable for callers that want
	// to show the offending line.
	bad := filepath.Join(dir, "bad.toml")
	write(t, bad, "dir = \n")
	_, err = Load(bad)
	var pe toml.ParseError
	if !errors.As(err, &pe) || pe.Position.Line != 1 {
		t.Errorf("Load(bad) = %v, want a toml.ParseError at line 1", err)
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		keys   []string // keys reported, in order; none = valid
	}{
		{"default", func(*Config) {}, nil},
		{"all maxima", func(c *Config) {
			c.Limits = Limits{MaxFiles: 4096, MaxFileSize: 1 << 20, MaxNameLen: 255}
		}, nil},
		{"all minima", func(c *Config) {
			c.Limits = Limits{MaxFiles: 1, MaxFileSize: 1, MaxNameLen: 14}
			c.Fetch.Timeout = 1
			c.Validate.Interval = 1
		}, nil},
		{"methods", func(c *Config) { c.Fetch.Method = "request" }, nil},
		{"local key may start with a dot", func(c *Config) { c.Fetch.Local.Key = ".POOL" }, nil},
		{"negative durations", func(c *Config) {
			c.Fetch.Lifetime = -1
			c.Fetch.Timeout = Duration(-time.Second)
			c.Validate.Interval = -1
			c.Validate.ExpMargin = -1
			c.Session.Grace = -1
		}, []string{"fetch.lifetime", "fetch.timeout", "validate.interval", "validate.exp_margin", "session.grace"}},
		{"zero limits", func(c *Config) { c.Limits = Limits{} },
			[]string{"limits.max_files", "limits.max_file_size", "limits.max_name_len"}},
		{"NUL in path", func(c *Config) { c.Dir = "/a\x00b" }, []string{"dir"}},
		{"newline in path", func(c *Config) { c.Socket = "/tmp/x\nFORGED LINE" }, []string{"socket"}},
		{"NUL in argument", func(c *Config) { c.Validate.Probe = []string{"ping", "a\x00"} }, []string{"validate.probe"}},
		{"control character in identity", func(c *Config) { c.Fetch.Local.Identity = "a\nb" }, []string{"fetch.local.identity"}},
		{"empty enums", func(c *Config) { c.Legacy = ""; c.Fetch.Method = "" }, []string{"legacy", "fetch.method"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.modify(&c)
			err := c.Check()
			var got []string
			if err != nil {
				for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
					var ke *KeyError
					if !errors.As(e, &ke) {
						t.Fatalf("error %v is not a *KeyError", e)
					}
					if !strings.HasPrefix(ke.Error(), "config: "+ke.Key) || ke.Want == "" {
						t.Errorf("badly formed error %q", ke)
					}
					got = append(got, ke.Key)
				}
			}
			if !reflect.DeepEqual(got, tt.keys) {
				t.Errorf("Check() reported keys %q, want %q (error: %v)", got, tt.keys, err)
			}
		})
	}
}

func TestExample(t *testing.T) {
	var c Config
	md, err := toml.Decode(Example(), &c)
	if err != nil {
		t.Fatalf("Example() does not decode: %v", err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Errorf("Example() has unknown keys %q", u)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("Example() decodes to\n%+v\nwant Default()\n%+v", c, Default())
	}

	// Every key is documented, the keys of [pools.NAME] in the commented
	// example, which loads when uncommented.
	defined := map[string]bool{}
	for _, k := range md.Keys() {
		defined[k.String()] = true
	}
	pools := uncommentPools(Example())
	var withPools Config
	md, err = toml.Decode(pools, &withPools)
	if err != nil {
		t.Fatalf("Example()'s [pools.NAME] example does not decode: %v", err)
	}
	for _, k := range md.Keys() {
		defined[poolPattern(k)] = true
	}
	defined["pools"] = len(withPools.Pools) > 0 // an implicit table
	if len(withPools.Pools) != 1 {
		t.Errorf("Example()'s commented pools example has %d pools, want 1", len(withPools.Pools))
	}
	if err := withPools.Check(); err != nil {
		t.Errorf("Example()'s [pools.NAME] example does not pass Check: %v", err)
	}
	var missing []string
	for k := range knownKeys() {
		if !defined[k] {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("Example() lacks keys %q", missing)
	}

	// Installed as the system file, it loads as Default().
	setup(t, Example(), absent)
	got, err := Load("")
	if err != nil {
		t.Fatalf("Load(Example()) = %v", err)
	}
	if !reflect.DeepEqual(got, Default()) {
		t.Errorf("Load(Example()) = %+v, want Default()", got)
	}
}

// uncommentPools turns the commented [pools.NAME] example of a config file
// into TOML: lines "# [pools..." and "# key = value".
func uncommentPools(file string) string {
	re := regexp.MustCompile(`(?m)^# (\[pools\.|[a-z_]+ = )`)
	return re.ReplaceAllString(file, "$1")
}

func TestDurationText(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		out     string // MarshalText of the result
		wantErr string
	}{
		{in: "0s", want: 0, out: "0s"},
		{in: "0", want: 0, out: "0s"},
		{in: "60s", want: time.Minute, out: "1m"},
		{in: "5m", want: 5 * time.Minute, out: "5m"},
		{in: "90s", want: 90 * time.Second, out: "1m30s"},
		{in: "1m10s", want: 70 * time.Second, out: "1m10s"},
		{in: "2h", want: 2 * time.Hour, out: "2h"},
		{in: "2h30m", want: 150 * time.Minute, out: "2h30m"},
		{in: "1h0m5s", want: time.Hour + 5*time.Second, out: "1h0m5s"},
		{in: "1.5s", want: 1500 * time.Millisecond, out: "1.5s"},
		{in: "250ms", want: 250 * time.Millisecond, out: "250ms"},
		{in: "-1s", wantErr: `negative duration "-1s" is not allowed`},
		{in: "60", wantErr: `invalid duration "60"`},
		{in: "", wantErr: `invalid duration ""`},
		{in: "soon", wantErr: `invalid duration "soon"`},
		{in: "9999999999h", wantErr: `invalid duration`},
		{in: strings.Repeat("1", 1000), wantErr: `value too long`},
	}
	for _, tt := range tests {
		var d Duration
		err := d.UnmarshalText([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("UnmarshalText(%q) = %v, want error containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || d.Std() != tt.want {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", tt.in, d.Std(), err, tt.want)
			continue
		}
		b, _ := d.MarshalText()
		if string(b) != tt.out {
			t.Errorf("MarshalText(%v) = %q, want %q", tt.want, b, tt.out)
		}
		var back Duration
		if err := back.UnmarshalText(b); err != nil || back != d {
			t.Errorf("round trip of %q: %v, %v", b, back.Std(), err)
		}
	}
}

// Encoding a Config with the toml package and decoding it again is lossless,
// so callers can print the effective configuration.
func TestEncodeRoundTrip(t *testing.T) {
	c := Default()
	c.Fetch.Lifetime = Duration(2 * time.Hour)
	c.Session.Grace = Duration(90 * time.Second)
	c.Fetch.Command = []string{"my-fetch", "--flag"}
	if got, text := roundTrip(t, c); !reflect.DeepEqual(got, c) {
		t.Errorf("round trip:\n got %+v\nwant %+v\n%s", got, c, text)
	}
}

// roundTrip encodes c as TOML and loads it back; text is what was written.
func roundTrip(t *testing.T, c Config) (got Config, text string) {
	t.Helper()
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "c.toml")
	write(t, path, buf.String())
	got, err := Load(path)
	if err != nil {
		t.Fatalf("Load(encoded) = %v\n%s", err, buf.String())
	}
	return got, buf.String()
}

func TestSuggest(t *testing.T) {
	known := knownKeys()
	tests := map[string]string{
		"fetch.lifetme":          "fetch.lifetime",
		"legcy":                  "legacy",
		"SESSION_TOKEN":          "session_token",
		"exp_margin":             "validate.exp_margin",
		"validate.method":        "fetch.method",
		"completely.bogus":       "",
		strings.Repeat("x", 100): "",
	}
	for in, want := range tests {
		if got := suggest(in, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTooDeep(t *testing.T) {
	deep := func(open string, n int) string { return "a = " + strings.Repeat(open, n) }
	tests := []struct {
		in   string
		want int // line reported, 0 = fine
	}{
		{Example(), 0},
		{"a = [[1, 2], [3]]\n[t]\n[[u]]\n", 0},
		{deep("[", 16), 0},
		{deep("[", 17), 1},
		{"\n\n" + deep("{b=", 17), 3},
		{`a = "` + strings.Repeat("[", 100) + `"`, 0},
		{`a = '` + strings.Repeat("{", 100) + `'`, 0},
		{"# " + strings.Repeat("[", 100) + "\n" + deep("[", 3), 0},
		{`a = "\"` + strings.Repeat("[", 100) + `"`, 0},
		{"a = \"\"\"\n\"\n" + strings.Repeat("[", 100) + "\n\"\"\"\"\"\n" + deep("[", 17), 5},
		{"a = '''\n'\n" + strings.Repeat("[", 100) + "'''\n" + deep("[", 17), 4},
		{"a = \"\"\n" + deep("[", 17), 2},
		{"a = \"unterminated\n" + deep("[", 17), 2},
		{"a = \"\"\"x\\\n" + strings.Repeat("[", 20) + "\"\"\"\n" + deep("[", 17), 3},
	}
	for _, tt := range tests {
		if got := tooDeep([]byte(tt.in), 16); got != tt.want {
			t.Errorf("tooDeep(%.60q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func manyKeys(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "k%d = 1\n", i)
	}
	return b.String()
}

// Hostile files are refused with a bounded error message. (How fast is not
// asserted here: a wall-clock limit fails on a loaded machine. The work is
// bounded by construction: the file size cap, and suggestions for at most
// ten unknown keys.)
func TestHostileFiles(t *testing.T) {
	tests := []struct{ name, content, want string }{
		{"deep arrays", "a = " + strings.Repeat("[", MaxFileBytes-10), "nested more than 16 deep"},
		{"deep inline tables", "a = " + strings.Repeat("{b=", MaxFileBytes/3-10), "nested more than 16 deep"},
		{"many unknown keys in a table", "[x]\n" + manyKeys(MaxFileBytes/12), `unknown key "x"`},
		{"many unknown keys", manyKeys(MaxFileBytes / 12), `unknown key "k9"`},
		{"many unknown keys counted", manyKeys(MaxFileBytes / 12), fmt.Sprintf("and %d more unknown keys", MaxFileBytes/12-10)},
		{"many tables", strings.Repeat("[fetch.local]\n", MaxFileBytes/14-10), "already"},
		{"huge integer", "[limits]\nmax_files = 99999999999999999999\n", "FILE:2:"},
		{"NUL byte", "dir = \"/a\x00\"\n", "FILE:1:"},
		{"invalid UTF-8", "dir = \"/a\xff\"\n", "FILE:1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.toml")
			write(t, path, tt.content)
			_, err := Load(path)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if want := strings.ReplaceAll(tt.want, "FILE", path); !strings.Contains(err.Error(), want) {
				t.Errorf("error %.500q\ndoes not contain %q", err, want)
			}
			if len(err.Error()) > 4096 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
		})
	}
}
