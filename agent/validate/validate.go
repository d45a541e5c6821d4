// Package validate decides whether a token may be shown: structure, expiry
// (with a margin, and the pool's SEC_TOKEN_MAX_AGE), issuer, and its
// signature against the current key of the pool its iss belongs to, asked
// of verifyd, checked with a key directory the user may read, or tried
// against the pool with a probe command, in that order of preference.
//
// A token is hidden only on a verdict that breaks HTCondor's tools
// (token.Reason.Hides): a token whose key the pool does not have
// (unknown-key) stays. When a check cannot be made (verifyd is down, the
// probe cannot reach the pool, the pool key file is missing) the token
// stays too: "every check that can be made says it is good".
//
// A Router sends each token to the Checker of its pool: a key check speaks
// only for its own pool's trust domain.
package validate

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/tokend/tokend/token"
)

// Key checks, by name as shown in `tokend status`, and who made a verdict
// (Verdict.By).
const (
	KeyVerifyd = "verifyd"
	KeyDir     = "keys"
	KeyProbe   = "probe"
	// KeyNone: no key check could tell. As a Verdict's By it means
	// "cannot tell"; in `tokend status` that no key check is configured.
	KeyNone = "none"
	// ByClaims: the claims alone decided (expiry, not-before, issuer).
	ByClaims = "claims"
)

// ErrCannotTell means a key check could not be made; it is not a verdict.
var ErrCannotTell = errors.New("cannot tell")

// KeyChecker checks a token's signature against the pool's current key.
type KeyChecker interface {
	Name() string
	// CheckKey returns a verdict, or an error wrapping ErrCannotTell.
	CheckKey(ctx context.Context, raw []byte, t *token.Token) (token.Reason, error)
}

// BatchKeyChecker is a KeyChecker that can judge many tokens at once
// (verifyd, in one request).
type BatchKeyChecker interface {
	KeyChecker
	// CheckKeys returns, for each token, a verdict or an error wrapping
	// ErrCannotTell.
	CheckKeys(ctx context.Context, raws [][]byte, ts []*token.Token) ([]token.Reason, []error)
}

// checkKeys runs k on every token: at once when it can.
func checkKeys(ctx context.Context, k KeyChecker, raws [][]byte, ts []*token.Token) ([]token.Reason, []error) {
	if b, ok := k.(BatchKeyChecker); ok {
		return b.CheckKeys(ctx, raws, ts)
	}
	reasons, errs := make([]token.Reason, len(raws)), make([]error, len(raws))
	for i := range raws {
		reasons[i], errs[i] = k.CheckKey(ctx, raws[i], ts[i])
	}
	return reasons, errs
}

// Verdict is the outcome of a full check.
type Verdict struct {
	Reason token.Reason
	// By names what decided: ByClaims, a key check's name, or KeyNone
	// when nothing could tell (Reason is then token.Valid).
	By string
	// Pool is the name of the pool whose checks judged the token; "" for
	// a token of no configured pool.
	Pool string
}

// CannotTell reports whether no check could judge the token: it is then
// no verdict at all. A shown token stays shown; a hidden one kept for a
// key change is neither restored nor counted as a miss.
func (v Verdict) CannotTell() bool { return v.By == KeyNone }

// Checker runs every check of one pool.
type Checker struct {
	Pool         string // the pool's name; "" for tokens of no configured pool
	Margin       time.Duration
	TrustDomains []string // validate.trust_domains: every other issuer is hidden
	// MaxAge is the pool's SEC_TOKEN_MAX_AGE (0 = none): a token whose iat
	// is older counts as expired. nil means none.
	MaxAge func() time.Duration
	// Keys are tried in order; the first that can tell decides.
	Keys []KeyChecker
	Now  func() time.Time
	Log  *slog.Logger
}

// Quick runs the checks that need nothing but the claims: expiry (at the
// effective exp, lowered by the max age) with the margin, not-before, and
// the issuer. Structure was checked by Parse.
func (c *Checker) Quick(t *token.Token) token.Reason {
	e := t.Effective(c.maxAge())
	return token.ReasonOf(e.CheckClaims(c.now(), c.Margin, c.TrustDomains))
}

// Effective returns t with the pool's max age applied to its exp.
func (c *Checker) Effective(t token.Token) token.Token { return t.Effective(c.maxAge()) }

// Check runs Quick, then the first key check that can tell.
func (c *Checker) Check(ctx context.Context, raw []byte, t *token.Token) Verdict {
	return c.CheckAll(ctx, [][]byte{raw}, []*token.Token{t})[0]
}

// CheckAll is Check on every token, each key check made once for all the
// tokens still undecided (BatchKeyChecker).
func (c *Checker) CheckAll(ctx context.Context, raws [][]byte, ts []*token.Token) []Verdict {
	out := make([]Verdict, len(raws))
	var todo []int // tokens for the next key check
	for i, t := range ts {
		if r := c.Quick(t); r != token.Valid {
			out[i] = Verdict{Reason: r, By: ByClaims, Pool: c.Pool}
			continue
		}
		out[i] = Verdict{Reason: token.Valid, By: KeyNone, Pool: c.Pool} // unless a key check tells
		todo = append(todo, i)
	}
	for _, k := range c.Keys {
		if len(todo) == 0 {
			break
		}
		reasons, errs := checkKeys(ctx, k, pick(raws, todo), pick(ts, todo))
		next := todo[:0]
		for j, i := range todo {
			if errs[j] == nil {
				out[i] = Verdict{Reason: reasons[j], By: k.Name(), Pool: c.Pool}
				continue
			}
			if c.Log != nil {
				c.Log.Debug("key check could not tell; trying the next", "check", k.Name(), "pool", c.Pool, "token", ts[i], "err", errs[j])
			}
			next = append(next, i)
		}
		todo = next
	}
	return out
}

// pick returns the elements of s at the indices idx, in that order.
func pick[T any](s []T, idx []int) []T {
	out := make([]T, len(idx))
	for j, i := range idx {
		out[j] = s[i]
	}
	return out
}

func (c *Checker) maxAge() time.Duration {
	if c.MaxAge == nil {
		return 0
	}
	return c.MaxAge()
}

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}
