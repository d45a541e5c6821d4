package validate

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// Verifyd asks the host's verifyd, which can read the pool's keys. It
// speaks only for its trust domain: an answer on a token of another iss is
// no verdict. (A verifyd of an earlier release names no trust domain; the
// Router has already placed the token in this verifyd's pool.)
type Verifyd struct {
	Client *verifyapi.Client
	// noBatch: this verifyd answered 404 to a batch (an older release);
	// ask it one token at a time until it comes back after being away
	// (Upgraded).
	noBatch atomic.Bool
}

// Upgraded says verifyd answers again after being away: it may be a newer
// release, so batches are tried again.
func (v *Verifyd) Upgraded() { v.noBatch.Store(false) }

func (*Verifyd) Name() string { return KeyVerifyd }

func (v *Verifyd) CheckKey(ctx context.Context, raw []byte, t *token.Token) (token.Reason, error) {
	resp, err := v.Client.Verify(ctx, raw)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrCannotTell, err)
	}
	return judge(resp.Reason, resp.CannotTell, resp.TrustDomain, t)
}

// CheckKeys asks for the verdicts on all of raws in as few requests as the
// batch limits allow, or one by one of a verifyd without batches.
func (v *Verifyd) CheckKeys(ctx context.Context, raws [][]byte, ts []*token.Token) ([]token.Reason, []error) {
	reasons, errs := make([]token.Reason, len(raws)), make([]error, len(raws))
	for lo := 0; lo < len(raws); {
		hi, size := lo, 0
		for hi < len(raws) && hi-lo < verifyapi.MaxBatchTokens && (hi == lo || size+len(raws[hi]) <= batchBytes) {
			size += len(raws[hi])
			hi++
		}
		var resp verifyapi.VerifyBatchResponse
		var err error
		batch := hi-lo > 1 && !v.noBatch.Load()
		if batch {
			resp, err = v.Client.VerifyBatch(ctx, raws[lo:hi])
			if errors.Is(err, verifyapi.ErrUnsupported) {
				v.noBatch.Store(true)
				batch = false
			}
		}
		for i := lo; i < hi; i++ {
			switch {
			case !batch:
				reasons[i], errs[i] = v.CheckKey(ctx, raws[i], ts[i])
			case err != nil:
				errs[i] = fmt.Errorf("%w: %w", ErrCannotTell, err)
			default:
				bv := resp.Verdicts[i-lo]
				cannotTell := bv.CannotTell
				if bv.Unavailable != "" {
					cannotTell = "key unavailable: " + bv.Unavailable
				}
				reasons[i], errs[i] = judge(bv.Reason, cannotTell, resp.TrustDomain, ts[i])
			}
		}
		lo = hi
	}
	return reasons, errs
}

// batchBytes bounds the tokens of one batch, leaving room for the JSON
// around them within verifyapi.MaxBatchBytes.
const batchBytes = verifyapi.MaxBatchBytes * 3 / 4

// judge turns one of verifyd's answers on t into a verdict or an error
// wrapping ErrCannotTell.
func judge(reason token.Reason, cannotTell, trustDomain string, t *token.Token) (token.Reason, error) {
	switch {
	case cannotTell != "":
		return "", fmt.Errorf("%w: verifyd cannot tell (%s)", ErrCannotTell, cannotTell)
	case t != nil && trustDomain != "" && trustDomain != t.Iss:
		return "", fmt.Errorf("%w: verifyd speaks for %q, not the token's iss %q", ErrCannotTell, trustDomain, t.Iss)
	}
	switch reason {
	case token.Valid, token.RotatedKey, token.UnknownKey, token.Expired, token.Malformed, token.Revoked:
		return reason, nil
	}
	return "", fmt.Errorf("%w: verifyd answered an unknown reason %q", ErrCannotTell, reason)
}
