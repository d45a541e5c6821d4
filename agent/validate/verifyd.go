package validate

import (
	"context"
	"fmt"

	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// Verifyd asks the host's verifyd, which can read the pool's keys. It
// speaks only for its trust domain: an answer on a token of another iss is
// no verdict. (A verifyd of an earlier release names no trust domain; the
// Router has already placed the token in this verifyd's pool.)
type Verifyd struct{ Client *verifyapi.Client }

func (Verifyd) Name() string { return KeyVerifyd }

func (v Verifyd) CheckKey(ctx context.Context, raw []byte, t *token.Token) (token.Reason, error) {
	resp, err := v.Client.Verify(ctx, raw)
	switch {
	case err != nil:
		return "", fmt.Errorf("%w: %w", ErrCannotTell, err)
	case resp.CannotTell != "":
		return "", fmt.Errorf("%w: verifyd cannot tell (%s)", ErrCannotTell, resp.CannotTell)
	case t != nil && resp.TrustDomain != "" && resp.TrustDomain != t.Iss:
		return "", fmt.Errorf("%w: verifyd speaks for %q, not the token's iss %q", ErrCannotTell, resp.TrustDomain, t.Iss)
	}
	switch resp.Reason {
	case token.Valid, token.RotatedKey, token.UnknownKey, token.Expired, token.Malformed, token.Revoked:
		return resp.Reason, nil
	}
	return "", fmt.Errorf("%w: verifyd answered an unknown reason %q", ErrCannotTell, resp.Reason)
}
