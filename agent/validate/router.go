package validate

import (
	"context"
	"sync"

	"github.com/tokend/tokend/token"
)

// Router sends each token to the Checker of the pool its iss belongs to: a
// pool whose trust domain is that iss; else the default pool when its trust
// domain is unknown (it claims every iss no other pool claims, so setups of
// a single pool judge every token as they always did); else none, and only
// the claims are checked (expiry, not-before, validate.trust_domains).
type Router struct {
	pools  []*Checker // the default pool first
	noPool *Checker

	mu   sync.RWMutex // guards tds and from
	tds  []string     // per pool; "" = unknown
	from []string     // where each trust domain came from
}

// NewRouter routes to pools (pools[0] is the default pool), whose trust
// domains are tds ("" = unknown; only the default's may be), set by the
// configuration; noPool checks the tokens of no configured pool.
func NewRouter(pools []*Checker, tds []string, noPool *Checker) *Router {
	r := &Router{pools: pools, noPool: noPool, tds: make([]string, len(pools)), from: make([]string, len(pools))}
	for i, td := range tds {
		r.tds[i] = td
		if td != "" {
			r.from[i] = "config"
		}
	}
	return r
}

// SetTrustDomain sets the trust domain of pool, and where it came from
// (config, verifyd, condor_config_val; "" with td "" when unknown). It
// reports whether anything changed: the caller re-checks every token then.
func (r *Router) SetTrustDomain(pool, td, source string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, c := range r.pools {
		if c.Pool == pool {
			changed := r.tds[i] != td
			r.tds[i], r.from[i] = td, source
			if td == "" {
				r.from[i] = ""
			}
			return changed
		}
	}
	return false
}

// TrustDomain returns pool's trust domain ("" = unknown) and where it came
// from.
func (r *Router) TrustDomain(pool string) (td, source string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for i, c := range r.pools {
		if c.Pool == pool {
			return r.tds[i], r.from[i]
		}
	}
	return "", ""
}

// ClaimsOther reports whether pool judges every iss no other pool claims:
// it is the default pool and its trust domain is unknown.
func (r *Router) ClaimsOther(pool string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.pools) > 0 && r.pools[0].Pool == pool && r.tds[0] == ""
}

// PoolOf returns the Checker of the pool iss belongs to, nil for none.
func (r *Router) PoolOf(iss string) *Checker {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for i, td := range r.tds {
		if td != "" && td == iss {
			return r.pools[i]
		}
	}
	if len(r.pools) > 0 && r.tds[0] == "" {
		return r.pools[0]
	}
	return nil
}

// checker returns the Checker for t: its pool's, else noPool's.
func (r *Router) checker(t *token.Token) *Checker {
	if c := r.PoolOf(t.Iss); c != nil {
		return c
	}
	return r.noPool
}

// Quick runs the claims checks of t's pool (for the filesystem's writes,
// the store's Put and the legacy import).
func (r *Router) Quick(t *token.Token) token.Reason { return r.checker(t).Quick(t) }

// Check runs every check of t's pool. A token of no configured pool gets
// only the claims checks, and they decide: no key check speaks for its
// issuer, so the tools may use it wherever its key is known.
func (r *Router) Check(ctx context.Context, raw []byte, t *token.Token) Verdict {
	return r.CheckAll(ctx, [][]byte{raw}, []*token.Token{t})[0]
}

// CheckAll is Check on every token, the tokens of each pool checked
// together (Checker.CheckAll).
func (r *Router) CheckAll(ctx context.Context, raws [][]byte, ts []*token.Token) []Verdict {
	out := make([]Verdict, len(raws))
	byPool := map[*Checker][]int{}
	for i, t := range ts {
		if c := r.PoolOf(t.Iss); c != nil {
			byPool[c] = append(byPool[c], i)
		} else {
			out[i] = Verdict{Reason: r.noPool.Quick(t), By: ByClaims}
		}
	}
	for c, idx := range byPool {
		for j, v := range c.CheckAll(ctx, pick(raws, idx), pick(ts, idx)) {
			out[idx[j]] = v
		}
	}
	return out
}

// Effective returns t as its pool's servers see it (exp lowered to
// iat + SEC_TOKEN_MAX_AGE when the pool has one).
func (r *Router) Effective(t token.Token) token.Token { return r.checker(&t).Effective(t) }
