package verifyapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/localapi"
)

// Client timeouts, applied when the caller's context has no earlier
// deadline.
const (
	// RequestTimeout bounds Verify, State and RefetchSlot.
	RequestTimeout = 5 * time.Second
	// WaitTimeout bounds one WaitChange: the server's PollTimeout and
	// some slack.
	WaitTimeout = PollTimeout + 15*time.Second

	maxResponseBytes = 64 << 10
)

// Client asks verifyd over its Unix socket. It is safe for concurrent use;
// connections are kept open and reused.
type Client struct {
	c *localapi.Client
}

// NewClient returns a client of the verifyd listening on socket ("" means
// config.DefaultVerifyd). It does not connect until the first call.
func NewClient(socket string) *Client {
	if socket == "" {
		socket = config.DefaultVerifyd
	}
	return &Client{c: localapi.NewClient(socket)}
}

// Socket is the path the client connects to.
func (c *Client) Socket() string { return c.c.Socket() }

// Close closes idle connections. The client stays usable.
func (c *Client) Close() { c.c.Close() }

// Verify asks whether raw (one token, no surrounding whitespace) has a good
// signature with the current key of its kid and has not expired. Only a nil
// error carries a verdict (VerifyResponse.Reason, "" for valid). Errors are
// never verdicts: a transport failure wraps [ErrUnavailable] (and the cause,
// e.g. context.Canceled); an error answer is a [*ServerError]
// (errors.Is(err, ErrRateLimited) for 429, errors.Is(err, ErrUnavailable)
// for 404 and 5xx, among them 503 [CodeKeyUnavailable] when verifyd cannot
// use the key of the token's kid). A nil error with a non-empty
// VerifyResponse.CannotTell is no verdict either (the token's iss is not
// verifyd's trust domain). A Reason this client does not know is passed
// through: treat any non-empty Reason as "not valid".
//
// The request is built in a buffer that is zeroed afterwards; raw itself
// is not modified.
func (c *Client) Verify(ctx context.Context, raw []byte) (VerifyResponse, error) {
	body := VerifyBody(raw)
	defer clear(body)
	var resp VerifyResponse
	err := c.do(ctx, RequestTimeout, http.MethodPost, PathVerify, body, &resp)
	return resp, err
}

// VerifyBatch asks for the verdicts on up to MaxBatchTokens tokens in one
// request (each raw as for [Client.Verify]). A nil error carries one
// BatchVerdict per token, in order; only one whose CannotTell and
// Unavailable are "" is a verdict. Errors are those of Verify, and a
// verifyd older than this request answers 404: errors.Is(err,
// ErrUnsupported) (ask each token with Verify instead).
//
// The request is built in a buffer that is zeroed afterwards.
func (c *Client) VerifyBatch(ctx context.Context, raws [][]byte) (VerifyBatchResponse, error) {
	var resp VerifyBatchResponse
	if len(raws) == 0 || len(raws) > MaxBatchTokens {
		return resp, fmt.Errorf("verifyapi: a batch of %d tokens (1 to %d)", len(raws), MaxBatchTokens)
	}
	body := VerifyBatchBody(raws)
	defer clear(body)
	if err := c.do(ctx, RequestTimeout, http.MethodPost, PathVerifyBatch, body, &resp); err != nil {
		return resp, err
	}
	if len(resp.Verdicts) != len(raws) {
		return resp, fmt.Errorf("%w (%s): the answer is not verifyd's: %d verdicts for %d tokens", ErrUnavailable, c.Socket(), len(resp.Verdicts), len(raws))
	}
	return resp, nil
}

// State returns the current key generation, and the trust domain and max
// age verifyd speaks for ("" and 0 from a verifyd that knows none, or from
// an older one, which does not send them).
func (c *Client) State(ctx context.Context) (GenerationResponse, error) {
	var resp GenerationResponse
	err := c.do(ctx, RequestTimeout, http.MethodGet, PathGeneration, nil, &resp)
	return resp, err
}

// WaitState makes one long poll: it returns the current state as soon as
// its generation differs from after, or after about PollTimeout with the
// current state (its generation then equal to after, unless it changed at
// that moment). Callers loop; on an error they should back off before the
// next call. A restarted verifyd starts again at generation 1, which
// differs from after, so a restart also reads as a change.
func (c *Client) WaitState(ctx context.Context, after uint64) (GenerationResponse, error) {
	var resp GenerationResponse
	err := c.do(ctx, WaitTimeout, http.MethodGet, PathChanges+"?after="+strconv.FormatUint(after, 10), nil, &resp)
	return resp, err
}

// Generation returns the current key generation (see [Client.State]).
func (c *Client) Generation(ctx context.Context) (uint64, error) {
	resp, err := c.State(ctx)
	return resp.Generation, err
}

// WaitChange is [Client.WaitState] for callers that need only the
// generation.
func (c *Client) WaitChange(ctx context.Context, after uint64) (uint64, error) {
	resp, err := c.WaitState(ctx, after)
	return resp.Generation, err
}

// RefetchSlot asks when this uid may fetch a fresh session token after a
// key change: call it only when the caller's own check, made with key
// generation generation, found its session token unusable, and set urgent
// only when a tool is waiting for that token. verifyd paces the host's
// agents at its refetch_rate; a lone agent gets now. The answer is the
// time from which the fetch may start (it may be in the past: asking again
// for the same generation returns the same slot, moved earlier at most,
// when an urgent request follows an ordinary one).
//
// A slot holds only for its generation: when verifyd's generation moves,
// drop it and ask again after checking again. Errors:
// [ErrWrongGeneration] (409) when generation is not verifyd's current one
// (check again with [Client.State]'s, then ask again); [ErrUnsupported]
// (404) from a verifyd older than refetch slots; [ErrRateLimited] (429);
// [ErrUnavailable] when verifyd cannot be asked or answered with something
// that is no slot. On any error but ErrWrongGeneration the caller spreads
// its fetch with its own bounded random jitter, as without verifyd; so
// does a caller that finds the slot further away than it is willing to
// wait.
func (c *Client) RefetchSlot(ctx context.Context, req RefetchSlotRequest) (time.Time, error) {
	body, _ := json.Marshal(req) // cannot fail
	var resp RefetchSlotResponse
	if err := c.do(ctx, RequestTimeout, http.MethodPost, PathRefetchSlot, body, &resp); err != nil {
		return time.Time{}, err
	}
	if resp.NotBefore.IsZero() {
		return time.Time{}, fmt.Errorf("%w (%s): the answer is not verifyd's: no not_before", ErrUnavailable, c.Socket())
	}
	return resp.NotBefore, nil
}

// VerifyBody encodes the request {"token": raw} without making a string of
// raw, so the caller can zero it. Bytes that JSON would have to escape
// (never in a well-formed token) go through encoding/json instead.
func VerifyBody(raw []byte) []byte {
	for _, b := range raw {
		if b < 0x20 || b >= 0x7f || b == '"' || b == '\\' || b == '<' || b == '>' || b == '&' {
			out, _ := json.Marshal(VerifyRequest{Token: string(raw)})
			return out
		}
	}
	const pre, post = `{"token":"`, `"}`
	out := make([]byte, 0, len(pre)+len(raw)+len(post))
	out = append(out, pre...)
	out = append(out, raw...)
	return append(out, post...)
}

// VerifyBatchBody encodes the request {"tokens": [raws...]} as VerifyBody
// does one token: the caller can zero it.
func VerifyBatchBody(raws [][]byte) []byte {
	ones := make([][]byte, len(raws)) // each {"token":"..."}: its string is what we want
	n := len(`{"tokens":[]}`)
	for i, raw := range raws {
		ones[i] = VerifyBody(raw)
		n += len(ones[i])
	}
	out := make([]byte, 0, n) // never grown, so never copied
	out = append(out, `{"tokens":[`...)
	for i, one := range ones {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, one[len(`{"token":`):len(one)-1]...)
		clear(one)
	}
	return append(out, "]}"...)
}

func (c *Client) do(ctx context.Context, timeout time.Duration, method, path string, body []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.c.Do(ctx, method, path, body)
	if err != nil {
		var e *localapi.Error
		if !errors.As(err, &e) {
			return fmt.Errorf("%w (%s): %w", ErrUnavailable, c.Socket(), err)
		}
		se := &ServerError{Status: e.Status, Code: e.Code, Message: e.Message, RetryAfter: e.RetryAfter}
		if se.Code == "" {
			se.Code = http.StatusText(e.Status)
		}
		if se.Status == http.StatusNotFound {
			// An older verifyd: what it does not know, it cannot tell.
			se.Message = fmt.Sprintf("this verifyd (%s) does not know %s %s; it is probably an older release", c.Socket(), method, path)
		}
		return se
	}
	defer resp.Body.Close()
	if err := localapi.ReadJSON(resp, maxResponseBytes, out); err != nil {
		return fmt.Errorf("%w (%s): the answer is not verifyd's: %w", ErrUnavailable, c.Socket(), err)
	}
	return nil
}
