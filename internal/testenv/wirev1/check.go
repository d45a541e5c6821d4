package wirev1

import (
	"context"
	"errors"
	"fmt"

	"github.com/tokend/tokend/token"
)

// ErrCannotTell is that release's validate.ErrCannotTell: no verdict, keep
// the token.
var ErrCannotTell = errors.New("cannot tell")

// Check is that release's validate.Verifyd.CheckKey: a verdict, or
// ErrCannotTell. Its agent hid every token whose verdict was not Valid.
func Check(ctx context.Context, c *Client, raw []byte) (token.Reason, error) {
	resp, err := c.Verify(ctx, raw)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrCannotTell, err)
	}
	switch resp.Reason {
	case token.Valid, token.RotatedKey, token.UnknownKey, token.Expired, token.Malformed, token.Revoked:
		return resp.Reason, nil
	}
	return "", fmt.Errorf("%w: verifyd answered an unknown reason %q", ErrCannotTell, resp.Reason)
}
