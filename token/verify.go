package token

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tokend/tokend/secmem"
)

// Verify checks raw's signature against key with the token's own alg
// (HS256, HS384 or HS512; HTCondor servers accept all three with one key).
// A mismatch wraps [ErrRotatedKey]: the key of that name changed, or the
// token was altered. A structural problem wraps [ErrMalformed]. Time and
// issuer are not checked here (see [Check]).
//
// The signature is decoded into a secmem buffer and compared in constant
// time with one computed there (see hmac.go): the hash object's state and
// buffered input are overwritten, and [secmem.Do] erases what hashing left
// on the stack, before Verify returns.
func Verify(raw []byte, key []byte) error {
	t, err := Parse(raw)
	if err != nil {
		return err
	}
	return verifyParsed(raw, t.Alg, key)
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
	if key == nil {
		return fmt.Errorf("%w %q: the keyring gave no key", ErrKeyUnavailable, t.Kid)
	}
	defer key.Wipe()
	return verifyParsed(raw, t.Alg, key.Bytes())
}

// verifyParsed checks the signature of raw, which Parse accepted with alg.
func verifyParsed(raw []byte, alg string, key []byte) error {
	if len(key) == 0 {
		return fmt.Errorf("%w: empty key", ErrKeyUnavailable)
	}
	newHash, size := hashFor(alg)
	dot := bytes.LastIndexByte(raw, '.')
	if newHash == nil || dot < 0 {
		return malformed("cannot check the signature") // Parse refuses both
	}
	input, sig := raw[:dot], raw[dot+1:]
	mem, err := secmem.New(2 * size)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrKeyUnavailable, err)
	}
	defer mem.Wipe()
	want, got := mem.Bytes()[:size:size], mem.Bytes()[size:]
	var match bool
	secmem.Do(func() {
		// Parse checked the alphabet and the exact length for alg, so the
		// segment decodes to size bytes.
		var n int
		if n, err = base64.RawURLEncoding.Decode(want, sig); err != nil || n != size {
			err = malformed("signature is not base64url")
			return
		}
		if err = mac(got, newHash, key, input); err != nil {
			err = fmt.Errorf("%w: %w", ErrKeyUnavailable, err)
			return
		}
		match = subtle.ConstantTimeCompare(got, want) == 1
	})
	switch {
	case err != nil:
		return err
	case !match:
		return ErrRotatedKey
	}
	return nil
}
