package verifyapi

import (
	"errors"
	"fmt"
	"time"

	"github.com/tokend/tokend/internal/localapi"
	"github.com/tokend/tokend/token"
)

// Paths of the wire protocol (HTTP/JSON over the Unix socket).
const (
	PathVerify     = "/v1/verify"
	PathGeneration = "/v1/generation"
	PathChanges    = "/v1/changes"
	// PathRefetchSlot came after the first release (see RefetchSlotRequest).
	PathRefetchSlot = "/v1/refetch-slot"
	// PathVerifyBatch came after refetch slots (see VerifyBatchRequest).
	PathVerifyBatch = "/v1/verify-batch"
)

// MaxRequestBytes is the largest request body verifyd reads, but for
// POST /v1/verify-batch.
const MaxRequestBytes = 16 << 10

// MaxBatchTokens and MaxBatchBytes bound a POST /v1/verify-batch: the
// tokens of one request, and its body. A client splits a longer list.
const (
	MaxBatchTokens = 64
	MaxBatchBytes  = 128 << 10
)

// PollTimeout is how long GET /v1/changes waits for a change before it
// answers with the current generation.
const PollTimeout = 30 * time.Second

// Error codes of error answers ({"code": ..., "message": ...}).
const (
	CodeBadRequest       = localapi.CodeBadRequest
	CodeTooLarge         = localapi.CodeTooLarge
	CodeRateLimited      = "rate-limited"
	CodeNotFound         = localapi.CodeNotFound
	CodeMethodNotAllowed = localapi.CodeMethodNotAllowed
	CodeTooManyConns     = localapi.CodeTooManyConns
	CodeInternal         = localapi.CodeInternal
	// CodeKeyUnavailable (status 503) answers POST /v1/verify when verifyd
	// cannot judge the token: the key file of its kid is there but cannot
	// be used (owner, mode, type, empty, unreadable), its kid is POOL and
	// there is no usable pool key file, or verifyd holds no key at all. It
	// is not a verdict: keep the token. The message names the kid and the
	// problem, never key bytes.
	CodeKeyUnavailable = "key-unavailable"
	// CodeWrongGeneration (status 409) answers POST /v1/refetch-slot for a
	// key generation that is not verifyd's current one: a later key change
	// happened (the slots of the older one are cancelled), or verifyd
	// restarted and counts from 1 again. The message names both
	// generations.
	CodeWrongGeneration = "wrong-generation"
)

// VerifyRequest is the body of POST /v1/verify.
type VerifyRequest struct {
	Token string `json:"token"`
}

// VerifyResponse answers POST /v1/verify. Reason is the verdict on the
// token ([token.Valid] "" when its signature is good with the current key
// of its kid and it has not expired); Generation is the key generation the
// verdict was made with.
//
// TrustDomain, TokenMaxAge and CannotTell were added after the first
// release; an older verifyd leaves them out (zero values). When CannotTell
// is not "", the answer is no verdict: Reason is "" and the token must be
// kept as it is (a client of the first release reads it as valid, which
// keeps it too).
type VerifyResponse struct {
	Reason     token.Reason `json:"reason"`
	Generation uint64       `json:"generation"`
	// TrustDomain is the trust domain verifyd speaks for; "" when it knows
	// none (then it judges every token, whatever its iss) or is older.
	TrustDomain string `json:"trust_domain,omitempty"`
	// TokenMaxAge is the pool's SEC_TOKEN_MAX_AGE in seconds; 0 when unset
	// or when verifyd is older.
	TokenMaxAge int64 `json:"token_max_age,omitempty"`
	// CannotTell says why verifyd gives no verdict on a token it could
	// parse: [CannotTellOtherIssuer]. A value this client does not know
	// means the same: no verdict.
	CannotTell string `json:"cannot_tell,omitempty"`
}

// CannotTellOtherIssuer is VerifyResponse.CannotTell for a token whose iss
// is not verifyd's trust domain: the pool's keys say nothing about it.
const CannotTellOtherIssuer = "other-issuer"

// GenerationResponse answers GET /v1/generation and GET /v1/changes: the
// key generation, and (added after the first release, absent from an older
// verifyd) the trust domain and max age verifyd speaks for.
type GenerationResponse struct {
	Generation uint64 `json:"generation"`
	// TrustDomain: "" when verifyd knows none (it judges every token) or
	// is older.
	TrustDomain string `json:"trust_domain,omitempty"`
	// TokenMaxAge is SEC_TOKEN_MAX_AGE in seconds; 0 when unset or older.
	TokenMaxAge int64 `json:"token_max_age,omitempty"`
}

// VerifyBatchRequest is the body of POST /v1/verify-batch: up to
// MaxBatchTokens tokens judged in one request, as POST /v1/verify would
// judge each. An agent checks all its tokens at every key change, every
// agent of the host at once: one request each instead of one per token
// is what lets a host of a hundred agents hide its stale tokens in a sixth
// of the time.
type VerifyBatchRequest struct {
	Tokens []string `json:"tokens"`
}

// VerifyBatchResponse answers POST /v1/verify-batch: one verdict per
// token, in the request's order, all made with key generation Generation.
// TrustDomain and TokenMaxAge are as in VerifyResponse.
type VerifyBatchResponse struct {
	Generation  uint64         `json:"generation"`
	TrustDomain string         `json:"trust_domain,omitempty"`
	TokenMaxAge int64          `json:"token_max_age,omitempty"`
	Verdicts    []BatchVerdict `json:"verdicts"`
}

// BatchVerdict is one token's verdict in a VerifyBatchResponse: Reason as
// in VerifyResponse when CannotTell and Unavailable are both "". CannotTell
// is VerifyResponse's; Unavailable is the message POST /v1/verify would
// have sent with 503 [CodeKeyUnavailable] (verifyd cannot use the key the
// token needs). Both mean no verdict: keep the token.
type BatchVerdict struct {
	Reason      token.Reason `json:"reason"`
	CannotTell  string       `json:"cannot_tell,omitempty"`
	Unavailable string       `json:"unavailable,omitempty"`
}

// RefetchSlotRequest is the body of POST /v1/refetch-slot: an agent whose
// own check, made with key generation Generation, found its session token
// unusable asks when it may fetch a fresh one. Urgent says a tool is
// waiting for that token. Unknown fields are ignored, so that later
// releases may add some.
//
// Missed (added after slots first shipped) says the agent could not start
// at the slot it was given, its host being busy: verifyd gives it a new
// slot when it is more than a tick late, once per generation, else the
// same one. A verifyd that does not know it returns the same slot, and
// the agent goes.
type RefetchSlotRequest struct {
	Generation uint64 `json:"generation"`
	Urgent     bool   `json:"urgent,omitempty"`
	Missed     bool   `json:"missed,omitempty"`
}

// RefetchSlotResponse answers POST /v1/refetch-slot: the agent may start
// its fetch at NotBefore, not earlier. On the wire it is RFC 3339 in UTC
// with as many fraction digits as it needs, up to nanoseconds (slots are
// 1/refetch_rate apart, 10 µs at the highest rate, which milliseconds
// could not tell apart).
type RefetchSlotResponse struct {
	NotBefore time.Time `json:"not_before"`
}

// ErrUnavailable means verifyd could not be asked or could not judge: the
// socket is missing, the connection was refused or cut, a timeout passed,
// the answer was not verifyd's, or verifyd answered with a 5xx (among them
// 503 [CodeKeyUnavailable]: verifyd cannot use the key of the token's kid).
// It is NOT a verdict on the token: fall back to another check or try again
// later.
var ErrUnavailable = errors.New("verifyd is not available")

// ErrUnsupported matches (errors.Is) a [*ServerError] with status 404: the
// verifyd asked does not know the request's path, most likely an older
// release. It also matches [ErrUnavailable]: no verdict, no state.
var ErrUnsupported = errors.New("this verifyd does not know the request (an older release?)")

// ErrWrongGeneration matches (errors.Is) a [*ServerError] with status 409
// ([CodeWrongGeneration]): the refetch slot was asked for a key generation
// that is not verifyd's current one. Check the token again with the current
// generation ([Client.State]) and ask again with it.
var ErrWrongGeneration = errors.New("verifyd: not the current key generation")

// ErrRateLimited matches (errors.Is) a [*ServerError] with status 429: the
// caller's uid sent more requests than its rate allows. It is not a verdict
// either; wait ServerError.RetryAfter and try again.
var ErrRateLimited = errors.New("verifyd: rate limited")

// ServerError is a non-2xx answer from verifyd. errors.Is(err,
// ErrRateLimited) is true for status 429, errors.Is(err, ErrUnsupported)
// for 404, errors.Is(err, ErrWrongGeneration) for 409, and errors.Is(err,
// ErrUnavailable) for 404 and 5xx.
type ServerError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration // from Retry-After, for 429; 0 if absent
}

func (e *ServerError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("verifyd: %d %s", e.Status, e.Code)
	}
	return fmt.Sprintf("verifyd: %d %s: %s", e.Status, e.Code, e.Message)
}

// Is makes 429 match [ErrRateLimited], 404 match [ErrUnsupported], 409
// match [ErrWrongGeneration], and 404 and 5xx match [ErrUnavailable].
func (e *ServerError) Is(target error) bool {
	switch target {
	case ErrRateLimited:
		return e.Status == 429
	case ErrUnsupported:
		return e.Status == 404
	case ErrWrongGeneration:
		return e.Status == 409
	case ErrUnavailable:
		return e.Status >= 500 || e.Status == 404
	}
	return false
}
