package token

import "errors"

// Reason says why a token is not shown. The string values are a public
// contract (they appear in status output and logs); never change them.
type Reason string

// Reasons a token is not shown.
const (
	Valid           Reason = ""
	Expired         Reason = "expired"
	NotYetValid     Reason = "not-yet-valid"
	RotatedKey      Reason = "rotated-key"
	UnknownKey      Reason = "unknown-key"
	Revoked         Reason = "revoked"
	Malformed       Reason = "malformed"
	UntrustedIssuer Reason = "untrusted-issuer"
)

// Sentinel errors, one per [Reason]. Errors from this package wrap one of
// them; test with errors.Is or map with [ReasonOf].
var (
	ErrExpired         = errors.New("token: expired")
	ErrNotYetValid     = errors.New("token: not yet valid")
	ErrRotatedKey      = errors.New("token: signature does not match the current key (key rotated or token altered)")
	ErrUnknownKey      = errors.New("token: unknown key")
	ErrRevoked         = errors.New("token: revoked")
	ErrMalformed       = errors.New("token: malformed")
	ErrUntrustedIssuer = errors.New("token: untrusted issuer")

	// ErrKeyUnavailable means a key file exists but cannot be used: wrong
	// owner or mode, not a regular file, too large, or unreadable. HTCondor
	// refuses such a file too, so [ReasonOf] reports [UnknownKey]; a caller
	// that wants to tell a broken key setup from a bad token tests for this
	// error first.
	ErrKeyUnavailable = errors.New("token: signing key unavailable")
)

// ReasonOf maps an error from this package to its Reason: nil is [Valid];
// an error wrapping none of the sentinels is [Malformed].
func ReasonOf(err error) Reason {
	switch {
	case err == nil:
		return Valid
	case errors.Is(err, ErrExpired):
		return Expired
	case errors.Is(err, ErrNotYetValid):
		return NotYetValid
	case errors.Is(err, ErrRotatedKey):
		return RotatedKey
	case errors.Is(err, ErrUnknownKey), errors.Is(err, ErrKeyUnavailable):
		return UnknownKey
	case errors.Is(err, ErrRevoked):
		return Revoked
	case errors.Is(err, ErrUntrustedIssuer):
		return UntrustedIssuer
	default:
		return Malformed
	}
}

// Hides reports whether a token with this verdict is taken out of the
// directory. Only what breaks HTCondor's tools hides: a token whose key the
// pool does not have ([UnknownKey]) is skipped harmlessly by the tools, so
// it stays shown.
func (r Reason) Hides() bool { return r != Valid && r != UnknownKey }

// Reversible reports whether a hidden token is kept (in locked memory) to
// come back: a key that arrives later or a rollback can make a [RotatedKey]
// token good again, and time makes a [NotYetValid] one good. Every other
// reason that hides is final, and the token's bytes are zeroed at once.
func (r Reason) Reversible() bool { return r == RotatedKey || r == NotYetValid }
