package config

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/tokend/tokend/token"
)

// DefaultPool is the name of the pool the top-level keys describe
// (session_token, trust_domain, [fetch], [validate]). It is reserved: a
// [pools.default] table is an error.
const DefaultPool = "default"

// MaxPoolName bounds a pool's name, which also makes its default session
// token name ("tokend-" + name).
const MaxPoolName = 64

// MaxPools bounds the [pools.NAME] tables: each is a session token fetched
// in parallel at login and kept in locked memory.
const MaxPools = 32

var poolNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Pool is one [pools.NAME] table as written. Unset values are resolved by
// PoolList: a nil pointer in Fetch takes [fetch]'s value.
type Pool struct {
	TrustDomain  string       `toml:"trust_domain"`  // required: the iss of this pool's tokens
	SessionToken string       `toml:"session_token"` // "" = "tokend-" + NAME
	Fetch        PoolFetch    `toml:"fetch"`
	Validate     PoolValidate `toml:"validate"` // unset = no key check of this pool's own
}

// PoolFetch is a [pools.NAME.fetch] table. How to fetch (method, command,
// lifetime, authz, timeout, wait) is inherited from [fetch] when unset;
// where to fetch from (pool, name, type, key and [fetch.local]) never is, so
// a pool without a target of its own is a configuration error.
type PoolFetch struct {
	// How: nil = [fetch]'s value.
	Method   *string   `toml:"method"`
	Command  *[]string `toml:"command"`
	Lifetime *Duration `toml:"lifetime"`
	Authz    *[]string `toml:"authz"`
	Timeout  *Duration `toml:"timeout"`
	Wait     *Duration `toml:"wait"`

	// Where: never inherited.
	Pool  string `toml:"pool"`
	Name  string `toml:"name"`
	Type  string `toml:"type"`
	Key   string `toml:"key"`
	Local Local  `toml:"local"` // key "" = POOL; issuer "" = the pool's trust_domain
}

// PoolValidate is a [pools.NAME.validate] table: the key checks that speak
// for this pool's trust domain. Unset means none (no verifyd either).
// trust_domains, interval and exp_margin are [validate]'s, for every pool.
type PoolValidate struct {
	Verifyd string   `toml:"verifyd"`
	KeyDir  string   `toml:"key_dir"`
	PoolKey string   `toml:"pool_key"`
	Probe   []string `toml:"probe"`
}

// PoolConfig is one pool with every value resolved: what the agent runs.
type PoolConfig struct {
	Name         string // DefaultPool for the top-level pool
	TrustDomain  string // "" only for the default pool: unknown until verifyd or HTCondor says
	SessionToken string // file name of the pool's session token
	Fetch        Fetch  // complete; Local.Issuer "" (default pool only) = the host name
	Validate     Validate
}

// PoolList returns every pool, the default pool first and then the
// [pools.NAME] tables by name, with every value filled in. Call it on a
// configuration that passed Check (Load checks); slices are fresh copies.
func (c *Config) PoolList() []PoolConfig {
	def := PoolConfig{
		Name:         DefaultPool,
		TrustDomain:  c.TrustDomain,
		SessionToken: c.SessionToken,
		Fetch:        copyFetch(c.Fetch),
		Validate:     copyValidate(c.Validate),
	}
	if def.Fetch.Local.Issuer == "" {
		def.Fetch.Local.Issuer = c.TrustDomain
	}
	list := []PoolConfig{def}
	for _, name := range c.poolNames() {
		list = append(list, c.resolve(name, c.Pools[name]))
	}
	return list
}

// PoolNames returns the names of every pool, the default first.
func (c *Config) PoolNames() []string {
	return append([]string{DefaultPool}, c.poolNames()...)
}

func (c *Config) poolNames() []string {
	names := make([]string, 0, len(c.Pools))
	for n := range c.Pools {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// resolve fills in a pool's unset values.
func (c *Config) resolve(name string, p Pool) PoolConfig {
	pc := PoolConfig{
		Name:         name,
		TrustDomain:  p.TrustDomain,
		SessionToken: p.SessionToken,
		Fetch:        copyFetch(c.Fetch),
		Validate: Validate{
			TrustDomains: slices.Clone(c.Validate.TrustDomains),
			Verifyd:      p.Validate.Verifyd,
			KeyDir:       p.Validate.KeyDir,
			PoolKey:      p.Validate.PoolKey,
			Probe:        cloneOrEmpty(p.Validate.Probe),
			Interval:     c.Validate.Interval,
			ExpMargin:    c.Validate.ExpMargin,
		},
	}
	if pc.SessionToken == "" {
		pc.SessionToken = "tokend-" + name
	}
	f, pf := &pc.Fetch, &p.Fetch
	if pf.Method != nil {
		f.Method = *pf.Method
	}
	if pf.Command != nil {
		f.Command = cloneOrEmpty(*pf.Command)
	}
	if pf.Lifetime != nil {
		f.Lifetime = *pf.Lifetime
	}
	if pf.Authz != nil {
		f.Authz = cloneOrEmpty(*pf.Authz)
	}
	if pf.Timeout != nil {
		f.Timeout = *pf.Timeout
	}
	if pf.Wait != nil {
		f.Wait = *pf.Wait
	}
	f.Pool, f.Name, f.Type, f.Key = pf.Pool, pf.Name, pf.Type, pf.Key
	f.Local = pf.Local
	if f.Local.Key == "" {
		f.Local.Key = token.PoolKeyName
	}
	if f.Local.Issuer == "" {
		f.Local.Issuer = p.TrustDomain
	}
	return pc
}

func copyFetch(f Fetch) Fetch {
	f.Command = cloneOrEmpty(f.Command)
	f.Authz = cloneOrEmpty(f.Authz)
	return f
}

func copyValidate(v Validate) Validate {
	v.TrustDomains = cloneOrEmpty(v.TrustDomains)
	v.Probe = cloneOrEmpty(v.Probe)
	return v
}

func cloneOrEmpty(s []string) []string { return append([]string{}, s...) }

// poolKey is the dotted key of a pool's table, quoted as TOML would
// (pools."a b" for a bad name), followed by rest.
func poolKey(name, rest string) string {
	k := toml.Key{"pools", name}.String()
	if rest != "" {
		k += "." + rest
	}
	return k
}

// checkPools reports the problems of the trust domain keys and of every
// [pools.NAME] table, and what makes pools clash with each other.
func (c *Config) checkPools(bad reporter) {
	if c.TrustDomain != "" {
		checkTrustDomain(bad, "trust_domain", c.TrustDomain, c.Validate.TrustDomains)
		if iss := c.Fetch.Local.Issuer; iss != "" && iss != c.TrustDomain {
			bad("fetch.local.issuer", quote(iss), fmt.Sprintf(`want trust_domain %s or "" (the tokens it signs carry the pool's trust domain as iss)`, quote(c.TrustDomain)))
		}
	}

	// Who holds what, so that a clash names the other pool.
	trustDomains := map[string]string{} // trust domain -> key that set it
	sessionTokens := map[string]string{c.SessionToken: "session_token"}
	verifyds := map[string]string{}
	if c.TrustDomain != "" {
		trustDomains[c.TrustDomain] = "trust_domain"
	}
	if c.Validate.Verifyd != "" {
		verifyds[filepath.Clean(c.Validate.Verifyd)] = "validate.verifyd"
	}

	if len(c.Pools) > MaxPools {
		bad("pools", fmt.Sprintf("(%d tables)", len(c.Pools)), fmt.Sprintf("want at most %d [pools.NAME] tables", MaxPools))
		return
	}
	for _, name := range c.poolNames() {
		p := c.Pools[name]
		switch {
		case name == DefaultPool:
			bad(poolKey(name, ""), "", fmt.Sprintf("want another name: %q is the pool of the top-level keys (session_token, trust_domain, [fetch], [validate]); configure it there", DefaultPool))
			continue
		case !poolNameRE.MatchString(name):
			bad(poolKey(name, ""), "", fmt.Sprintf("want a pool name of 1 to %d letters, digits, '-' or '_'", MaxPoolName))
			continue
		}
		pc := c.resolve(name, p)
		key := func(rest string) string { return poolKey(name, rest) }

		// Trust domain.
		if p.TrustDomain == "" {
			bad(key("trust_domain"), "", `want the trust domain of this pool (the iss of its tokens, its TRUST_DOMAIN), e.g. trust_domain = "cm.pool.example"`)
		} else if checkTrustDomain(bad, key("trust_domain"), p.TrustDomain, c.Validate.TrustDomains) {
			if other, ok := trustDomains[p.TrustDomain]; ok {
				bad(key("trust_domain"), quote(p.TrustDomain), fmt.Sprintf("want a trust domain no other pool has (%s has it): a token's iss decides its pool", other))
			} else {
				trustDomains[p.TrustDomain] = key("trust_domain")
			}
		}

		// Session token.
		if why := fileNameProblem(pc.SessionToken, false); why != "" {
			bad(key("session_token"), quote(pc.SessionToken), why)
		} else if c.Limits.MaxNameLen > 0 && len(pc.SessionToken) > c.Limits.MaxNameLen {
			bad(key("session_token"), quote(pc.SessionToken),
				fmt.Sprintf("want a name of at most limits.max_name_len = %d bytes", c.Limits.MaxNameLen))
		} else if other, ok := sessionTokens[pc.SessionToken]; ok {
			bad(key("session_token"), quote(pc.SessionToken), fmt.Sprintf("want a session token name no other pool uses (%s is the same file)", other))
		} else {
			sessionTokens[pc.SessionToken] = key("session_token")
		}

		// [pools.NAME.fetch]: how.
		pf := &p.Fetch
		if pf.Method != nil {
			checkMethod(bad, key("fetch.method"), *pf.Method)
		}
		if pf.Command != nil {
			checkCommand(bad, key("fetch.command"), *pf.Command)
		}
		if pf.Lifetime != nil {
			checkLifetime(bad, key("fetch.lifetime"), *pf.Lifetime)
		}
		if pf.Authz != nil {
			checkAuthz(bad, key("fetch.authz"), *pf.Authz)
		}
		if pf.Timeout != nil {
			checkTimeout(bad, key("fetch.timeout"), *pf.Timeout)
		}
		if pf.Wait != nil {
			checkWait(bad, key("fetch.wait"), *pf.Wait)
		}
		// Where.
		checkArg(bad, key("fetch.pool"), pf.Pool)
		checkArg(bad, key("fetch.name"), pf.Name)
		checkArg(bad, key("fetch.type"), pf.Type)
		checkArg(bad, key("fetch.key"), pf.Key)
		checkPath(bad, key("fetch.local.key_dir"), pf.Local.KeyDir)
		if pf.Local.Key != "" {
			if why := fileNameProblem(pf.Local.Key, true); why != "" {
				bad(key("fetch.local.key"), quote(pf.Local.Key), why)
			}
		}
		checkText(bad, key("fetch.local.identity"), pf.Local.Identity)
		if iss := pf.Local.Issuer; iss != "" && iss != p.TrustDomain {
			bad(key("fetch.local.issuer"), quote(iss), fmt.Sprintf(`want this pool's trust_domain %s or "" (the tokens it signs carry the pool's trust domain as iss)`, quote(p.TrustDomain)))
		}
		switch pc.Fetch.Method {
		case MethodExec, MethodRequest:
			ownCommand := pf.Command != nil && len(*pf.Command) > 0
			if pf.Pool == "" && pf.Name == "" && !ownCommand {
				bad(key("fetch.pool"), "", fmt.Sprintf("want where this pool's tokens come from: %s or %s (its collector or schedd), or a %s of its own; [fetch]'s target is not inherited, it is the default pool's",
					key("fetch.pool"), key("fetch.name"), key("fetch.command")))
			}
		case MethodLocal:
			if pf.Local.KeyDir == "" {
				bad(key("fetch.local.key_dir"), "", "want the folder of this pool's signing keys: [fetch.local]'s is not inherited, it is the default pool's")
			}
		}

		// [pools.NAME.validate]
		v := &p.Validate
		checkPath(bad, key("validate.verifyd"), v.Verifyd)
		checkPath(bad, key("validate.key_dir"), v.KeyDir)
		checkPath(bad, key("validate.pool_key"), v.PoolKey)
		checkCommand(bad, key("validate.probe"), v.Probe)
		if v.Verifyd != "" && filepath.IsAbs(v.Verifyd) {
			if other, ok := verifyds[filepath.Clean(v.Verifyd)]; ok {
				bad(key("validate.verifyd"), quote(v.Verifyd), fmt.Sprintf("want a verifyd of this pool's own (%s names the same socket): a verifyd speaks for one trust domain", other))
			} else {
				verifyds[filepath.Clean(v.Verifyd)] = key("validate.verifyd")
			}
		}
	}
}

// checkTrustDomain checks one pool's trust domain and reports whether it
// is well formed.
func checkTrustDomain(bad reporter, key, td string, allowed []string) bool {
	if strings.IndexFunc(td, isSpaceOrControl) >= 0 || len(td) > 255 {
		bad(key, quote(td), "want an issuer name (no spaces, at most 255 bytes), as in a token's iss")
		return false
	}
	if len(allowed) > 0 && !slices.Contains(allowed, td) {
		bad(key, quote(td), "want a trust domain listed in validate.trust_domains too: that list hides every other issuer, this pool's tokens included")
	}
	return true
}

// poolPattern returns the key k names in knownKeys: a key inside
// [pools.NAME] with NAME replaced by "*".
func poolPattern(k toml.Key) string {
	if len(k) >= 2 && k[0] == "pools" {
		p := append(toml.Key{"pools", "*"}, k[2:]...)
		return strings.Replace(p.String(), `"*"`, "*", 1)
	}
	return k.String()
}

// suggestKey is suggest for a key as the decoder reports it: inside
// [pools.NAME] it suggests keys of that same table.
func suggestKey(k toml.Key, known map[string]bool) string {
	if len(k) < 3 || k[0] != "pools" {
		top := map[string]bool{}
		for n := range known {
			if !strings.HasPrefix(n, "pools.*") {
				top[n] = true
			}
		}
		return suggest(k.String(), top)
	}
	inPool := map[string]bool{}
	for n := range known {
		if rest, ok := strings.CutPrefix(n, "pools.*."); ok {
			inPool[rest] = true
		}
	}
	s := suggest(k[2:].String(), inPool)
	if s == "" {
		return ""
	}
	return poolKey(k[1], s)
}

// sourceOf returns the file that set key, else the file that set the
// nearest table around it (a missing pools.NAME.trust_domain is that
// pool's file's problem), else "".
func sourceOf(src map[string]string, key string) string {
	for {
		if f, ok := src[key]; ok {
			return f
		}
		i := strings.LastIndexByte(key, '.')
		if i < 0 {
			return ""
		}
		key = key[:i]
	}
}

// poolsNotTables reports a pools key that is not a table of tables: the
// decoder silently skips "pools = 3".
func poolsNotTables(md toml.MetaData) error {
	if t := md.Type("pools"); t != "" && t != "Hash" {
		return fmt.Errorf("pools = (a %s): want [pools.NAME] tables", strings.ToLower(t))
	}
	return nil
}

// forgetReplacedPools drops from src what earlier files set in the
// [pools.NAME] tables this file has: the decoder replaces such a table as a
// whole, so its keys now come from this file or from nowhere.
func forgetReplacedPools(md toml.MetaData, src map[string]string) {
	replaced := map[string]bool{}
	for _, k := range md.Keys() {
		if len(k) >= 2 && k[0] == "pools" {
			replaced[poolKey(k[1], "")] = true
		}
	}
	if len(replaced) == 0 {
		return
	}
	for key := range src {
		if replaced[poolTable(key)] {
			delete(src, key)
		}
	}
}

// poolTable returns the [pools.NAME] table a dotted key is in, as poolKey
// spells it, or "".
func poolTable(key string) string {
	rest, ok := strings.CutPrefix(key, "pools.")
	if !ok || rest == "" {
		return ""
	}
	end := strings.IndexByte(rest, '.')
	if rest[0] == '"' { // a quoted name may hold dots and escaped quotes
		end = -1
		for i := 1; i < len(rest); i++ {
			if rest[i] == '\\' {
				i++
				continue
			}
			if rest[i] == '"' {
				end = i + 1
				break
			}
		}
	}
	if end < 0 {
		end = len(rest)
	}
	return key[:len("pools.")+end]
}
