package validate

import (
	"context"
	"fmt"

	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// Verifyd asks the host's verifyd, which can read the pool's keys.
type Verifyd struct{ Client *verifyapi.Client }

func (Verifyd) Name() string { return KeyVerifyd }

func (v Verifyd) CheckKey(ctx context.Context, raw []byte, t *token.Token) (token.Reason, error) {
	resp, err := v.Client.Verify(ctx, raw)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrCannotTell, err)
	}
	switch resp.Reason {
	case token.Valid, token.RotatedKey, token.UnknownKey, token.Expired, token.Malformed, token.Revoked:
		return resp.Reason, nil
	}
	return "", fmt.Errorf("%w: verifyd answered an unknown reason %q", ErrCannotTell, resp.Reason)
}
