// Package config loads tokend's TOML configuration and resolves the paths
// it names (token directory, agent socket and the files beside it): it is
// the one home of tokend's defaults, and every other package asks it.
//
// The keys, their defaults and their meaning are a contract with users and
// scripts (see DESIGN.md, "The interface"); Example returns them as a
// commented config file.
package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/tokend/tokend/token"
)

// Config is the whole tokend configuration.
type Config struct {
	Dir          string `toml:"dir"`           // token directory; "" = SEC_TOKEN_DIRECTORY or <pw_dir>/.condor/tokens.d
	Socket       string `toml:"socket"`        // control socket; "" = $XDG_RUNTIME_DIR/tokend/agent.sock
	SessionToken string `toml:"session_token"` // file name of the token fetched for the session
	TrustDomain  string `toml:"trust_domain"`  // the default pool's iss; "" = what verifyd reports, else HTCondor's TRUST_DOMAIN
	Legacy       string `toml:"legacy"`        // import | move | ignore
	AllowRoot    bool   `toml:"allow_root"`    // opt-in FUSE allow_root for HTCondor per-user flocking
	Audit        bool   `toml:"audit"`         // log which process opened which token

	Fetch    Fetch    `toml:"fetch"`
	Validate Validate `toml:"validate"`
	Session  Session  `toml:"session"`
	Limits   Limits   `toml:"limits"`

	// Pools are the other pools, by name; the top-level keys are the
	// default pool (DefaultPool). See PoolList.
	Pools map[string]Pool `toml:"pools,omitempty"`
}

// Fetch configures how a token is obtained.
type Fetch struct {
	Method   string   `toml:"method"`   // exec | request | local
	Command  []string `toml:"command"`  // program and fixed arguments; empty = the HTCondor tool for Method
	Lifetime Duration `toml:"lifetime"` // 0 = let the pool decide
	Authz    []string `toml:"authz"`    // -authz values
	Timeout  Duration `toml:"timeout"`  // per fetch; > 0
	Wait     Duration `toml:"wait"`     // a tool's first look after a rotation waits this long for the fresh token
	Pool     string   `toml:"pool"`     // -pool, when set
	Name     string   `toml:"name"`     // -name, when set
	Type     string   `toml:"type"`     // -type, when set
	Key      string   `toml:"key"`      // -key, when set
	Local    Local    `toml:"local"`
}

// Local configures the embedded issuer (fetch.method = "local").
type Local struct {
	KeyDir   string `toml:"key_dir"`  // a SEC_PASSWORD_DIRECTORY-like folder of scrambled key files
	Key      string `toml:"key"`      // key file name in KeyDir
	Identity string `toml:"identity"` // "" = <user>@<issuer>
	Issuer   string `toml:"issuer"`
}

// Validate configures which tokens are shown.
type Validate struct {
	TrustDomains []string `toml:"trust_domains"` // empty = accept any iss
	Verifyd      string   `toml:"verifyd"`       // verifyd socket, used when it answers
	KeyDir       string   `toml:"key_dir"`       // keys the agent itself may read
	PoolKey      string   `toml:"pool_key"`      // POOL key file when not <key_dir>/POOL
	Probe        []string `toml:"probe"`         // command that tries one token against the pool
	Interval     Duration `toml:"interval"`      // periodic re-check; > 0
	ExpMargin    Duration `toml:"exp_margin"`    // hide this long before exp
}

// Session configures the login-session lifecycle.
type Session struct {
	Grace Duration `toml:"grace"` // delay before the wipe at the last logout
}

// Limits bounds what the filesystem accepts.
type Limits struct {
	MaxFiles    int `toml:"max_files"`     // number of token files
	MaxFileSize int `toml:"max_file_size"` // bytes per file
	MaxNameLen  int `toml:"max_name_len"`  // bytes per file name
}

// Allowed values and bounds.
const (
	LegacyImport = "import"
	LegacyMove   = "move"
	LegacyIgnore = "ignore"

	MethodExec    = "exec"
	MethodRequest = "request"
	MethodLocal   = "local"

	MaxMaxFiles    = 4096
	MaxMaxFileSize = 1 << 20
	MaxMaxNameLen  = 255

	// DefaultVerifyd is verifyd's socket, where agents look for it.
	DefaultVerifyd = "/run/tokend/verify.sock"
	// DefaultFetchTimeout bounds one fetch (fetch.timeout).
	DefaultFetchTimeout = 60 * time.Second
	// DefaultFetchWait is fetch.wait: how long a tool's first look at the
	// directory after a rotation waits for the fresh session token.
	DefaultFetchWait = 2 * time.Second
	// MaxFetchWait bounds fetch.wait: a tool blocked in a lookup longer
	// than this looks hung.
	MaxFetchWait = time.Minute
	// The programs fetch.command = [] stands for, by method.
	DefaultFetchCommand   = "condor_token_fetch"   // exec
	DefaultRequestCommand = "condor_token_request" // request
)

// Default returns the built-in configuration. Every call returns fresh
// slices, so callers may modify the result.
func Default() Config {
	return Config{
		Dir:          "",
		Socket:       "",
		SessionToken: "tokend-session",
		Legacy:       LegacyImport,
		Fetch: Fetch{
			Method:   MethodExec,
			Command:  []string{},
			Lifetime: 0,
			Authz:    []string{},
			Timeout:  Duration(DefaultFetchTimeout),
			Wait:     Duration(DefaultFetchWait),
			Local: Local{
				Key: token.PoolKeyName,
			},
		},
		Validate: Validate{
			TrustDomains: []string{},
			Verifyd:      DefaultVerifyd,
			Probe:        []string{},
			Interval:     Duration(5 * time.Minute),
			ExpMargin:    Duration(30 * time.Second),
		},
		Limits: Limits{
			MaxFiles:    64,
			MaxFileSize: 65536,
			MaxNameLen:  255,
		},
	}
}

// KeyError reports an invalid value of one configuration key.
type KeyError struct {
	File  string // the file that set the key, when known
	Key   string // dotted TOML key, e.g. "fetch.timeout"
	Value string // the offending value, as written in TOML
	Want  string // what is allowed
}

func (e *KeyError) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	b.WriteString(e.Key)
	if e.Value != "" {
		b.WriteString(" = ")
		b.WriteString(e.Value)
	}
	b.WriteString(": ")
	b.WriteString(e.Want)
	return b.String()
}

// Check validates every value and reports all problems at once, one
// *KeyError per problem (joined with errors.Join).
//
// It is the Validate of the design: Go does not allow a method named
// Validate next to the field Config.Validate (the [validate] table).
func (c *Config) Check() error {
	errs := c.check()
	if len(errs) == 0 {
		return nil
	}
	list := make([]error, len(errs))
	for i, e := range errs {
		list[i] = e
	}
	return errors.Join(list...)
}

func (c *Config) check() []*KeyError {
	var errs []*KeyError
	bad := func(key, value, want string) {
		errs = append(errs, &KeyError{Key: key, Value: value, Want: want})
	}

	// Top level.
	checkPath(bad, "dir", c.Dir)
	checkPath(bad, "socket", c.Socket)
	if why := fileNameProblem(c.SessionToken, false); why != "" {
		bad("session_token", quote(c.SessionToken), why)
	} else if c.Limits.MaxNameLen > 0 && len(c.SessionToken) > c.Limits.MaxNameLen {
		bad("session_token", quote(c.SessionToken),
			fmt.Sprintf("want a name of at most limits.max_name_len = %d bytes", c.Limits.MaxNameLen))
	}
	switch c.Legacy {
	case LegacyImport, LegacyMove, LegacyIgnore:
	default:
		bad("legacy", quote(c.Legacy), "want import, move or ignore")
	}

	// [fetch]
	f := &c.Fetch
	checkMethod(bad, "fetch.method", f.Method)
	checkCommand(bad, "fetch.command", f.Command)
	checkLifetime(bad, "fetch.lifetime", f.Lifetime)
	checkAuthz(bad, "fetch.authz", f.Authz)
	checkTimeout(bad, "fetch.timeout", f.Timeout)
	checkWait(bad, "fetch.wait", f.Wait)
	checkArg(bad, "fetch.pool", f.Pool)
	checkArg(bad, "fetch.name", f.Name)
	checkArg(bad, "fetch.type", f.Type)
	checkArg(bad, "fetch.key", f.Key)

	// [fetch.local]
	checkPath(bad, "fetch.local.key_dir", f.Local.KeyDir)
	if why := fileNameProblem(f.Local.Key, true); why != "" {
		bad("fetch.local.key", quote(f.Local.Key), why)
	}
	checkText(bad, "fetch.local.identity", f.Local.Identity)
	checkText(bad, "fetch.local.issuer", f.Local.Issuer)

	// [validate]
	v := &c.Validate
	for _, d := range v.TrustDomains {
		if d == "" || strings.IndexFunc(d, isSpaceOrControl) >= 0 {
			bad("validate.trust_domains", quoteList(v.TrustDomains), "want issuer names (no empty entries, no spaces)")
			break
		}
	}
	checkPath(bad, "validate.verifyd", v.Verifyd)
	checkPath(bad, "validate.key_dir", v.KeyDir)
	checkPath(bad, "validate.pool_key", v.PoolKey)
	checkCommand(bad, "validate.probe", v.Probe)
	if v.Interval <= 0 {
		bad("validate.interval", quote(v.Interval.String()), `want a positive duration, like "5m"`)
	}
	if v.ExpMargin < 0 {
		bad("validate.exp_margin", quote(v.ExpMargin.String()), "want zero or more")
	}

	// [session]
	if c.Session.Grace < 0 {
		bad("session.grace", quote(c.Session.Grace.String()), "want zero or more")
	}

	// [limits]
	checkRange(bad, "limits.max_files", c.Limits.MaxFiles, MaxMaxFiles, "")
	checkRange(bad, "limits.max_file_size", c.Limits.MaxFileSize, MaxMaxFileSize, " bytes (1 MiB)")
	checkRange(bad, "limits.max_name_len", c.Limits.MaxNameLen, MaxMaxNameLen, " bytes")

	// trust_domain and [pools.NAME]
	c.checkPools(bad)
	return errs
}

func checkMethod(bad reporter, key, m string) {
	switch m {
	case MethodExec, MethodRequest, MethodLocal:
	default:
		bad(key, quote(m), "want exec, request or local")
	}
}

func checkLifetime(bad reporter, key string, d Duration) {
	switch {
	case d < 0:
		bad(key, quote(d.String()), `want zero ("let the pool decide") or more`)
	case d.Std()%time.Second != 0:
		bad(key, quote(d.String()), "want whole seconds (condor_token_fetch -lifetime counts seconds)")
	}
}

func checkAuthz(bad reporter, key string, authz []string) {
	for _, a := range authz {
		if a == "" || strings.IndexFunc(a, isSpaceOrControl) >= 0 {
			bad(key, quoteList(authz), `want authorization levels such as "READ" (no empty entries, no spaces)`)
			return
		}
	}
}

func checkTimeout(bad reporter, key string, d Duration) {
	if d <= 0 {
		bad(key, quote(d.String()), `want a positive duration, like "60s"`)
	}
}

func checkWait(bad reporter, key string, d Duration) {
	if d < 0 || d.Std() > MaxFetchWait {
		bad(key, quote(d.String()), fmt.Sprintf(`want "0s" (never wait) up to %s`, Duration(MaxFetchWait)))
	}
}

type reporter func(key, value, want string)

// checkPath accepts "" (unset) or a clean-enough absolute path.
func checkPath(bad reporter, key, p string) {
	switch {
	case p == "":
	case strings.ContainsFunc(p, isControl):
		// A path ends up in logs (the PAM hook's among them), where a
		// newline would forge a line.
		bad(key, quote(p), "want a path without control characters (NUL, newline, ...)")
	case !filepath.IsAbs(p):
		bad(key, quote(p), `want an absolute path (starting with "/") or "" for the default`)
	}
}

// fileNameProblem says why name is not a plain file name, or "".
// Token file names must not start with '.' (HTCondor skips hidden files in
// tokens.d); key names may.
func fileNameProblem(name string, allowDot bool) string {
	const want = `want a plain file name (not empty, no "/", not "." or "..")`
	switch {
	case name == "", name == ".", name == "..":
		return want
	case strings.ContainsAny(name, "/\x00"):
		return want
	case strings.IndexFunc(name, isControl) >= 0:
		return "want a file name without control characters"
	case !allowDot && name[0] == '.':
		return `want a plain file name not starting with "." (HTCondor ignores hidden files)`
	case len(name) > MaxMaxNameLen:
		return fmt.Sprintf("want a name of at most %d bytes", MaxMaxNameLen)
	}
	return ""
}

// checkCommand accepts an empty command (use the default) or a program name
// followed by arguments.
func checkCommand(bad reporter, key string, argv []string) {
	if len(argv) == 0 {
		return
	}
	if argv[0] == "" {
		bad(key, quoteList(argv), `want a program name as the first element, or [] for the default`)
		return
	}
	for _, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			bad(key, quoteList(argv), "want arguments without NUL bytes")
			return
		}
	}
}

// checkArg checks a value passed to a command as the argument of a flag.
func checkArg(bad reporter, key, s string) {
	switch {
	case s == "":
	case strings.HasPrefix(s, "-"):
		bad(key, quote(s), `want a value not starting with "-", or "" to leave it unset`)
	case strings.IndexFunc(s, isSpaceOrControl) >= 0:
		bad(key, quote(s), `want a value without spaces or control characters, or "" to leave it unset`)
	}
}

// checkText rejects control characters in a free-form value.
func checkText(bad reporter, key, s string) {
	if strings.IndexFunc(s, isControl) >= 0 {
		bad(key, quote(s), "want a value without control characters")
	}
}

func checkRange(bad reporter, key string, n, max int, unit string) {
	if n < 1 || n > max {
		bad(key, fmt.Sprint(n), fmt.Sprintf("want 1 to %d%s", max, unit))
	}
}

func isControl(r rune) bool { return unicode.IsControl(r) }

func isSpaceOrControl(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }

// quote formats s as a TOML basic string for messages. Long values are
// shortened so a hostile file cannot make error messages huge.
func quote(s string) string {
	const max = 200
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

func quoteList(l []string) string {
	const max = 8
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range l {
		if i > 0 {
			b.WriteString(", ")
		}
		if i == max {
			fmt.Fprintf(&b, "... (%d more)", len(l)-max)
			break
		}
		b.WriteString(quote(s))
	}
	b.WriteByte(']')
	return b.String()
}
