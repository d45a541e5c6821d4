package wirev1

import (
	"errors"
	"fmt"
	"time"

	"github.com/tokend/tokend/token"
)

// DefaultSocket is where verifyd listens and where agents look for it.
const DefaultSocket = "/run/tokend/verify.sock"

// Paths of the wire protocol (HTTP/JSON over the Unix socket).
const (
	PathVerify     = "/v1/verify"
	PathGeneration = "/v1/generation"
	PathChanges    = "/v1/changes"
)

// PollTimeout is how long GET /v1/changes waits for a change before it
// answers with the current generation (server.go in that release).
const PollTimeout = 30 * time.Second

// MaxRequestBytes is the largest request body the server reads.
const MaxRequestBytes = 16 << 10

// Error codes in [ErrorResponse].Code.
const (
	CodeBadRequest       = "bad-request"
	CodeTooLarge         = "too-large"
	CodeRateLimited      = "rate-limited"
	CodeNotFound         = "not-found"
	CodeMethodNotAllowed = "method-not-allowed"
	CodeTooManyConns     = "too-many-connections"
	CodeInternal         = "internal"
	// CodeKeyUnavailable (status 503) answers POST /v1/verify when verifyd
	// cannot judge the token: the key file of its kid is there but cannot
	// be used (owner, mode, type, empty, unreadable), its kid is POOL and
	// there is no usable pool key file, or verifyd holds no key at all. It
	// is not a verdict: keep the token. The message names the kid and the
	// problem, never key bytes.
	CodeKeyUnavailable = "key-unavailable"
)

// VerifyRequest is the body of POST /v1/verify.
type VerifyRequest struct {
	Token string `json:"token"`
}

// VerifyResponse answers POST /v1/verify. Reason is the verdict on the
// token ([token.Valid] "" when its signature is good with the current key
// of its kid and it has not expired); Generation is the key generation the
// verdict was made with.
type VerifyResponse struct {
	Reason     token.Reason `json:"reason"`
	Generation uint64       `json:"generation"`
}

// GenerationResponse answers GET /v1/generation and GET /v1/changes.
type GenerationResponse struct {
	Generation uint64 `json:"generation"`
}

// ErrorResponse is the body of every non-2xx response.
type ErrorResponse struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ErrUnavailable means verifyd could not be asked or could not judge: the
// socket is missing, the connection was refused or cut, a timeout passed,
// the answer was not verifyd's, or verifyd answered with a 5xx (among them
// 503 [CodeKeyUnavailable]: verifyd cannot use the key of the token's kid).
// It is NOT a verdict on the token: fall back to another check or try again
// later.
var ErrUnavailable = errors.New("verifyd is not available")

// ErrRateLimited matches (errors.Is) a [*ServerError] with status 429: the
// caller's uid sent more requests than its rate allows. It is not a verdict
// either; wait ServerError.RetryAfter and try again.
var ErrRateLimited = errors.New("verifyd: rate limited")

// ServerError is a non-2xx answer from verifyd. errors.Is(err,
// ErrRateLimited) is true for status 429 and errors.Is(err, ErrUnavailable)
// for 5xx.
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

// Is makes 429 match [ErrRateLimited] and 5xx match [ErrUnavailable].
func (e *ServerError) Is(target error) bool {
	switch target {
	case ErrRateLimited:
		return e.Status == 429
	case ErrUnavailable:
		return e.Status >= 500
	}
	return false
}
