// Package validate decides whether a token may be shown: structure, expiry
// (with a margin), issuer, and its signature against the pool's current key,
// asked of verifyd, checked with a key directory the user may read, or tried
// against the pool with a probe command, in that order of preference.
//
// A token is hidden only on a verdict. When a check cannot be made (verifyd
// is down, the probe cannot reach the pool) the token stays: "every check
// that can be made says it is good".
package validate

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/tokend/tokend/token"
)

// Key checks, by name as shown in `tokend status`.
const (
	KeyVerifyd = "verifyd"
	KeyDir     = "keys"
	KeyProbe   = "probe"
	KeyNone    = "none"
)

// ErrCannotTell means a key check could not be made; it is not a verdict.
var ErrCannotTell = errors.New("cannot tell")

// KeyChecker checks a token's signature against the pool's current key.
type KeyChecker interface {
	Name() string
	// CheckKey returns a verdict, or an error wrapping ErrCannotTell.
	CheckKey(ctx context.Context, raw []byte, t *token.Token) (token.Reason, error)
}

// Checker runs every check.
type Checker struct {
	Margin       time.Duration
	TrustDomains []string
	// Keys are tried in order; the first that can tell decides.
	Keys []KeyChecker
	Now  func() time.Time
	Log  *slog.Logger
}

// Quick runs the checks that need nothing but the claims: expiry with the
// margin, not-before, and the issuer. Structure was checked by Parse.
func (c *Checker) Quick(t *token.Token) token.Reason {
	return token.ReasonOf(t.CheckClaims(c.now(), c.Margin, c.TrustDomains))
}

// Check runs Quick, then the first key check that can tell. It returns the
// name of the key check that decided (KeyNone when none could).
func (c *Checker) Check(ctx context.Context, raw []byte, t *token.Token) (token.Reason, string) {
	if r := c.Quick(t); r != token.Valid {
		return r, KeyNone
	}
	for _, k := range c.Keys {
		r, err := k.CheckKey(ctx, raw, t)
		if err == nil {
			return r, k.Name()
		}
		if c.Log != nil {
			c.Log.Debug("key check could not tell; trying the next", "check", k.Name(), "token", t, "err", err)
		}
	}
	return token.Valid, KeyNone
}

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}
