package validate

import (
	"context"
	"errors"
	"fmt"

	"github.com/tokend/tokend/token"
)

// Keys checks signatures with key files the agent can read (personal pools,
// tests). Files are read on every check, as HTCondor's collector does, so a
// rotation is seen at the next check.
type Keys struct{ Dir token.KeyDir }

func (Keys) Name() string { return KeyDir }

func (k Keys) CheckKey(ctx context.Context, raw []byte, t *token.Token) (token.Reason, error) {
	err := token.VerifyWith(raw, k.Dir)
	switch r := token.ReasonOf(err); {
	case err == nil:
		return token.Valid, nil
	case errors.Is(err, token.ErrUnknownKey), errors.Is(err, token.ErrRotatedKey), errors.Is(err, token.ErrMalformed):
		return r, nil
	default:
		// An unreadable key file is not a verdict on the token.
		return "", fmt.Errorf("%w: %v", ErrCannotTell, err)
	}
}
