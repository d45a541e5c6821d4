package agent

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tokend/tokend/agent/fetch"
	"github.com/tokend/tokend/agent/validate"
	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/token"
)

// pool is one pool the agent holds a session token for: the default pool
// (the top-level keys) or a [pools.NAME] table. Each pool is fetched,
// refreshed, backed off and key-checked on its own.
type pool struct {
	cfg     config.PoolConfig
	fetcher fetch.Fetcher
	checker *validate.Checker
	verifyd *verifydWatch  // nil when the pool has no verifyd
	keys    *validate.Keys // nil when the pool has no key_dir
	// epoch counts the key changes seen: verifyd's generation moving
	// while it answered, the key snapshot changing. A remembered token
	// misses at most once per epoch.
	epoch  atomic.Uint64
	maxAge atomic.Int64 // SEC_TOKEN_MAX_AGE as verifyd reports it (ns); 0 = none

	policy  policy
	slots   slotter     // nil when the pool's verifyd cannot grant refetch slots
	noSlots atomic.Bool // its verifyd said it grants none (an older release)

	// Guarded by Agent.mu:
	session  session
	inbox    inbox
	gate     gate          // closed after a key change; nil when open
	gateStop chan struct{} // closed when gate opens: its watcher ends
	refused  string        // why the last fetched token was refused ("" after a good fetch)
	mismatch string        // verifyd speaks for another trust domain than the configured one
}

// newPool builds pool pc's fetcher and key checks. fetcher and keys, when
// not nil, replace what the configuration would build (tests, the fuzzer).
func newPool(pc config.PoolConfig, fetcher fetch.Fetcher, keys []validate.KeyChecker, log *slog.Logger, shown func() []fetch.TokenFile) (*pool, error) {
	p := &pool{cfg: pc, fetcher: fetcher}
	p.policy = policy{
		margin:   pc.Validate.ExpMargin.Std(),
		interval: pc.Validate.Interval.Std(),
		gate:     pc.Fetch.Method != config.MethodRequest && pc.Fetch.Wait > 0,
		rand:     rand.N[time.Duration],
	}
	if p.fetcher == nil {
		var err error
		o := fetchOptions(pc.Fetch)
		o.Tokens = shown
		if p.fetcher, err = fetch.New(o); err != nil {
			return nil, fmt.Errorf("config %s: %w", poolTable(pc.Name, "fetch"), err)
		}
	}
	if keys == nil {
		keys, p.verifyd, p.keys = keyCheckers(pc.Validate, log.With("pool", pc.Name))
	}
	if p.verifyd != nil {
		p.slots = p.verifyd.client
	}
	p.checker = &validate.Checker{
		Pool:         pc.Name,
		Margin:       pc.Validate.ExpMargin.Std(),
		TrustDomains: pc.Validate.TrustDomains,
		MaxAge:       func() time.Duration { return time.Duration(p.maxAge.Load()) },
		Keys:         keys,
		Log:          log,
	}
	return p, nil
}

// poolTable names a pool's table in messages: [fetch] for the default
// pool, [pools.NAME.fetch] for another.
func poolTable(pool, table string) string { return "[" + configKey(pool, table) + "]" }

// pool returns the pool named name, nil if there is none.
func (a *Agent) pool(name string) *pool {
	for _, p := range a.pools {
		if p.cfg.Name == name {
			return p
		}
	}
	return nil
}

// poolOf returns the pool a token's iss belongs to, nil for none.
func (a *Agent) poolOf(iss string) *pool {
	if c := a.router.PoolOf(iss); c != nil {
		return a.pool(c.Pool)
	}
	return nil
}

// epochOf returns the key epoch of the pool named name (0 for none).
func (a *Agent) epochOf(name string) uint64 {
	if p := a.pool(name); p != nil {
		return p.epoch.Load()
	}
	return 0
}

// poolNames lists the pools for messages: "default, osg".
func (a *Agent) poolNames() string {
	names := make([]string, len(a.pools))
	for i, p := range a.pools {
		names[i] = p.cfg.Name
	}
	return strings.Join(names, ", ")
}

// learn takes what a pool's verifyd reports: its trust domain and
// SEC_TOKEN_MAX_AGE. It reports whether the trust domain of the pool
// changed (every token is then judged again).
func (a *Agent) learn(p *pool, td string, maxAge time.Duration) bool {
	if old := time.Duration(p.maxAge.Swap(int64(maxAge))); old != maxAge {
		a.log.Info("the pool's SEC_TOKEN_MAX_AGE, as verifyd reports it", "pool", p.cfg.Name, "token_max_age", maxAge)
	}
	name := p.cfg.Name
	cur, from := a.router.TrustDomain(name)
	other := ""
	if td != "" {
		other = a.configuredElsewhere(p, td)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case p.cfg.TrustDomain != "":
		// Configured: verifyd cannot change it, only disagree.
		p.mismatch = ""
		if td != "" && td != p.cfg.TrustDomain {
			p.mismatch = fmt.Sprintf("verifyd (%s) speaks for the trust domain %q, not this pool's %q: it judges none of this pool's tokens; set %s to the pool's TRUST_DOMAIN, or point %s at the pool's verifyd",
				p.verifyd.client.Socket(), td, p.cfg.TrustDomain, configKey(name, "trust_domain"), configKey(name, "validate.verifyd"))
			a.log.Warn("verifyd speaks for another trust domain than the configured one", "pool", name, "verifyd_trust_domain", td, "trust_domain", p.cfg.TrustDomain)
		}
		return false
	case other != "":
		// Another pool's: its tokens stay that pool's to judge.
		p.mismatch = fmt.Sprintf("verifyd (%s) speaks for the trust domain %q, which is pool %s's: it judges none of its tokens; point %s at this pool's verifyd, or set %s",
			p.verifyd.client.Socket(), td, other, configKey(name, "validate.verifyd"), configKey(name, "trust_domain"))
		a.log.Warn("verifyd speaks for another pool's trust domain", "pool", name, "verifyd_trust_domain", td, "other_pool", other)
		return false
	case td != "" && (td != cur || from != api.TrustFromVerifyd):
		p.mismatch = ""
		a.log.Info("the pool's trust domain, as verifyd reports it", "pool", name, "trust_domain", td, "was", cur)
		return a.router.SetTrustDomain(name, td, api.TrustFromVerifyd)
	case td == "" && from == api.TrustFromVerifyd:
		// A verifyd that no longer knows it (restarted without one):
		// back to what HTCondor says, or unknown.
		source := api.TrustFromCondor
		if a.condorTD == "" {
			source = api.TrustFromUnknown
		}
		return a.router.SetTrustDomain(name, a.condorTD, source)
	}
	return false
}

// configuredElsewhere returns the name of the pool other than p whose
// configured trust domain is td, "" if none.
func (a *Agent) configuredElsewhere(p *pool, td string) string {
	for _, o := range a.pools {
		if o != p && o.cfg.TrustDomain == td {
			return o.cfg.Name
		}
	}
	return ""
}

// configKey is the dotted config key of a pool's setting key: as written
// at the top level for the default pool, inside [pools.NAME] for another.
func configKey(pool, key string) string {
	if pool == config.DefaultPool {
		return key
	}
	return "pools." + pool + "." + key
}

// lastError is what `tokend status` shows as the pool's last error.
func (p *pool) lastError() string {
	var errs []string
	for _, e := range []string{p.mismatch, p.refused} {
		if e != "" {
			errs = append(errs, e)
		}
	}
	return strings.Join(errs, "; ")
}

// checkIssuer refuses a fetched token that is not the pool's: its iss must
// be the pool's trust domain, or, while that is unknown, one no other pool
// claims.
func (a *Agent) checkIssuer(p *pool, t *token.Token) error {
	if a.router.PoolOf(t.Iss) == p.checker {
		return nil
	}
	td, _ := a.router.TrustDomain(p.cfg.Name)
	want := fmt.Sprintf("%s's trust domain %q", p.cfg.Name, td)
	if td == "" {
		want = "an issuer no other pool has"
	}
	return fmt.Errorf("the token fetched for pool %s has iss %q, not %s: refused (check %s)", p.cfg.Name, t.Iss, want, poolTable(p.cfg.Name, "fetch"))
}
