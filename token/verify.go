package token

import (
	"errors"
	"fmt"
	"slices"
	"time"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"
)

// Verify checks raw's signature against key with the token's own alg
// (HS256, HS384 or HS512; HTCondor servers accept all three with one key).
// A mismatch wraps [ErrRotatedKey]: the key of that name changed, or the
// token was altered. A structural problem wraps [ErrMalformed]. Time and
// issuer are not checked here (see [Check]).
//
// raw must not change until Verify returns: it is handed to jwt through
// unsafe.String so that the secret is not copied into another string that
// nobody can clear. jwt keeps no reference after it returns.
func Verify(raw []byte, key []byte) error {
	if _, err := Parse(raw); err != nil {
		return err
	}
	return verifyParsed(raw, key)
}

// VerifyWith looks up the key for the token's kid in kr, then verifies as
// [Verify] does. An unknown kid wraps [ErrUnknownKey].
func VerifyWith(raw []byte, kr Keyring) error {
	t, err := Parse(raw)
	if err != nil {
		return err
	}
	return verifyKey(raw, t, kr)
}

// Check runs every local check in order and returns the first failure:
// structure ([Parse]), time (exp reached at now+margin, nbf after now),
// issuer (when trustDomains is not empty, iss must be one of them) and
// signature (when kr is not nil). The token is returned whenever it parsed,
// even with an error, so a caller can log which token failed.
func Check(raw []byte, now time.Time, margin time.Duration, trustDomains []string, kr Keyring) (*Token, error) {
	t, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	if err := t.CheckClaims(now, margin, trustDomains); err != nil {
		return t, err
	}
	if kr != nil {
		if err := verifyKey(raw, t, kr); err != nil {
			return t, err
		}
	}
	return t, nil
}

// CheckClaims runs the checks that need only the claims: exp reached at
// now+margin ([ErrExpired]), nbf after now ([ErrNotYetValid]), and, when
// trustDomains is not empty, iss one of them ([ErrUntrustedIssuer]).
func (t *Token) CheckClaims(now time.Time, margin time.Duration, trustDomains []string) error {
	switch {
	case t.ExpiresWithin(now, margin):
		return fmt.Errorf("%w (exp %s, margin %s)", ErrExpired, unixTime(t.Exp), margin)
	case t.Nbf != 0 && now.Before(time.Unix(t.Nbf, 0)):
		return fmt.Errorf("%w (nbf %s)", ErrNotYetValid, unixTime(t.Nbf))
	case len(trustDomains) > 0 && !slices.Contains(trustDomains, t.Iss):
		return fmt.Errorf("%w %q", ErrUntrustedIssuer, t.Iss)
	}
	return nil
}

func unixTime(sec int64) string { return time.Unix(sec, 0).UTC().Format(time.RFC3339) }

func verifyKey(raw []byte, t *Token, kr Keyring) error {
	if kr == nil {
		return fmt.Errorf("%w %q: no keyring", ErrUnknownKey, t.Kid)
	}
	key, err := kr.Key(t.Kid)
	if err != nil {
		if errors.Is(err, ErrUnknownKey) || errors.Is(err, ErrKeyUnavailable) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrKeyUnavailable, err)
	}
	return verifyParsed(raw, key)
}

// verifyParsed checks the signature of raw, which Parse accepted.
func verifyParsed(raw, key []byte) error {
	if len(key) == 0 {
		return fmt.Errorf("%w: empty key", ErrKeyUnavailable)
	}
	s := unsafe.String(unsafe.SliceData(raw), len(raw))
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{"HS256", "HS384", "HS512"}),
		jwt.WithoutClaimsValidation(), // time is checked by Check, with a margin
	)
	_, err := p.Parse(s, func(*jwt.Token) (any, error) { return key, nil })
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ErrRotatedKey
	default:
		// Parse accepted the structure, so jwt should not disagree; its
		// messages name what failed, never the token.
		return fmt.Errorf("%w: signature check: %w", ErrMalformed, err)
	}
}
