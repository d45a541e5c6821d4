package doctor

import (
	"sort"
	"strings"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
)

// poolChecks reports each configured pool: its trust domain, its session
// token and its key check, as the agent sees them when one answers (st),
// else as configured. A pool only one side knows means the agent runs with
// another configuration.
func poolChecks(pools []config.PoolConfig, st *api.Status) []Check {
	var out []Check
	for _, pc := range pools {
		out = append(out, poolCheck(pc, len(pools) > 1, st))
	}
	if st == nil {
		return out
	}
	configured := map[string]bool{}
	for _, pc := range pools {
		configured[pc.Name] = true
	}
	var extra []string
	for _, ps := range st.Pools {
		if !configured[ps.Name] {
			extra = append(extra, ps.Name)
		}
	}
	sort.Strings(extra)
	for _, name := range extra {
		out = append(out, Check{"pool " + name, Warn,
			"the agent holds pool " + name + ", which the configuration no longer has: it was started with another configuration",
			"restart the agent to read the configuration: systemctl --user restart tokend (or log out and in)"})
	}
	return out
}

// poolCheck reports one pool; others says whether other pools exist.
func poolCheck(pc config.PoolConfig, others bool, st *api.Status) Check {
	c := Check{Name: "pool " + pc.Name, Status: OK}
	var parts []string
	ps := poolStatus(st, pc.Name)

	// Which tokens it speaks for.
	switch {
	case ps != nil && ps.TrustDomain != "":
		from := ""
		if ps.TrustFrom != "" {
			from = " (from " + ps.TrustFrom + ")"
		}
		parts = append(parts, "trust domain "+ps.TrustDomain+from)
	case ps != nil && others:
		parts = append(parts, "trust domain unknown: its key checks judge every token no other pool claims, other pools' too")
		c.Status = Warn
		c.Fix = "set trust_domain in the config (HTCondor's TRUST_DOMAIN), or run verifyd with --trust-domain"
	case ps != nil:
		parts = append(parts, "trust domain unknown: it judges every token (set trust_domain, or run verifyd --trust-domain)")
	case pc.TrustDomain != "":
		parts = append(parts, "trust domain "+pc.TrustDomain+" (from config)")
	default:
		parts = append(parts, "trust domain not in the config: the agent asks verifyd, then HTCondor's TRUST_DOMAIN")
	}

	// Its session token.
	switch {
	case st == nil:
		parts = append(parts, "session token "+pc.SessionToken+" (no agent to ask)")
	case ps == nil && len(st.Pools) == 0 && pc.Name == config.DefaultPool:
		// An agent of an earlier release: one pool, described at the top level.
		parts = append(parts, "session token "+describeSession(st.Session))
		sessionFix(&c, pc.Name, st.Session)
	case ps == nil && len(st.Pools) == 0:
		parts = append(parts, "the agent reports no pools: it is of an earlier release and fetches no token for this pool")
		c.Status, c.Fix = Warn, "update tokend, then restart the agent: systemctl --user restart tokend"
	case ps == nil:
		parts = append(parts, "the agent does not have this pool: it was started with another configuration")
		c.Status, c.Fix = Warn, "restart the agent to read the configuration: systemctl --user restart tokend (or log out and in)"
	default:
		parts = append(parts, "session token "+describeSession(ps.Session))
		sessionFix(&c, pc.Name, ps.Session)
	}

	// Its key check.
	check := describeKeyCheck(pc.Validate)
	if ps != nil && ps.Validation.KeyCheck != "" {
		check = ps.Validation.KeyCheck
	} else if st != nil && ps == nil && len(st.Pools) == 0 && pc.Name == config.DefaultPool {
		check = st.Validation.KeyCheck
	}
	parts = append(parts, "key check "+check)

	if ps != nil && ps.LastError != "" {
		parts = append(parts, ps.LastError)
		c.Status = Warn
		c.Fix = "see the message: the tokens of " + fetchTable(pc.Name) + " must carry the pool's trust domain as iss"
	}
	c.Detail = strings.Join(parts, "; ")
	return c
}

// sessionFix turns a session token in trouble into a warning with a fix.
func sessionFix(c *Check, pool string, s api.Session) {
	fetch := "tokend fetch"
	if pool != config.DefaultPool {
		fetch += " --pool " + pool
	}
	switch s.State {
	case api.SessionFailed:
		c.Status = Warn
		c.Fix = "the message is HTCondor's; check the pool's schedd (condor_ping -type schedd READ, with -pool for another pool) and `" + fetch + "`"
	case api.SessionWaiting:
		c.Status = Warn
		c.Fix = "an administrator approves it: condor_token_request_approve -reqid " + s.RequestID
	}
}

func describeSession(s api.Session) string {
	d := s.Name + " " + s.State
	if s.State == api.SessionFailed && s.LastError != "" {
		d += ": " + s.LastError
	}
	return d
}

// describeKeyCheck names the key check a pool's configuration asks for,
// in the order the agent tries them.
func describeKeyCheck(v config.Validate) string {
	var l []string
	if v.Verifyd != "" {
		l = append(l, "verifyd")
	}
	if v.KeyDir != "" {
		l = append(l, "keys")
	}
	if len(v.Probe) > 0 {
		l = append(l, "probe")
	}
	if len(l) == 0 {
		return "none (only expiry hides its tokens)"
	}
	return strings.Join(l, ", then ")
}

// poolStatus finds a pool in the agent's status; nil when st is nil or
// the agent does not report it.
func poolStatus(st *api.Status, name string) *api.PoolStatus {
	if st == nil {
		return nil
	}
	for i := range st.Pools {
		if st.Pools[i].Name == name {
			return &st.Pools[i]
		}
	}
	return nil
}

// fetchTable is the config table of a pool's fetch.
func fetchTable(pool string) string {
	if pool == config.DefaultPool {
		return "[fetch]"
	}
	return "[pools." + pool + ".fetch]"
}

// fetchKey is the config key of a pool's fetch setting.
func fetchKey(pool, key string) string {
	if pool == config.DefaultPool {
		return "fetch." + key
	}
	return "pools." + pool + ".fetch." + key
}
