// Package wirev1 is verifyd's client as the first release shipped it,
// frozen: verifyd/client.go and wire.go at commit e03c6e5 (package name and
// PollTimeout aside), with that release's verdict mapping (Check, from
// agent/validate/verifyd.go). Tests run it against today's verifyd to show
// that an agent of that release keeps working. Never change it to follow
// the protocol: that is what it tests.
package wirev1

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Client timeouts, applied when the caller's context has no earlier
// deadline.
const (
	// RequestTimeout bounds Verify and Generation.
	RequestTimeout = 5 * time.Second
	// WaitTimeout bounds one WaitChange: the server's PollTimeout and
	// some slack.
	WaitTimeout = PollTimeout + 15*time.Second

	maxResponseBytes = 64 << 10
)

// Client asks verifyd over its Unix socket. It is safe for concurrent use;
// connections are kept open and reused.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the verifyd listening on socket
// ("" means DefaultSocket). It does not connect until the first call.
func NewClient(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	var d net.Dialer
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression:  true,
		MaxIdleConns:        4,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		ForceAttemptHTTP2:   false,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket is the path the client connects to.
func (c *Client) Socket() string { return c.socket }

// Close closes idle connections. The client stays usable.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Verify asks whether raw (one token, no surrounding whitespace) has a good
// signature with the current key of its kid and has not expired. Only a nil
// error carries a verdict (VerifyResponse.Reason, "" for valid). Errors are
// never verdicts: a transport failure wraps [ErrUnavailable] (and the cause,
// e.g. context.Canceled); an error answer is a [*ServerError]
// (errors.Is(err, ErrRateLimited) for 429, errors.Is(err, ErrUnavailable)
// for 5xx, among them 503 [CodeKeyUnavailable] when verifyd cannot use the
// key of the token's kid). A Reason this client does not know is passed
// through: treat any non-empty Reason as "not valid".
//
// The request is built in a buffer that is zeroed afterwards; raw itself
// is not modified.
func (c *Client) Verify(ctx context.Context, raw []byte) (VerifyResponse, error) {
	body := verifyBody(raw)
	defer clear(body)
	var resp VerifyResponse
	err := c.do(ctx, RequestTimeout, http.MethodPost, PathVerify, body, &resp)
	return resp, err
}

// Generation returns the current key generation.
func (c *Client) Generation(ctx context.Context) (uint64, error) {
	var resp GenerationResponse
	err := c.do(ctx, RequestTimeout, http.MethodGet, PathGeneration, nil, &resp)
	return resp.Generation, err
}

// WaitChange makes one long poll: it returns the current generation as
// soon as it differs from after, or after about PollTimeout with the current
// value (then equal to after, unless it changed at that moment). Callers
// loop; on an error they should back off before the next call. A restarted
// verifyd starts again at generation 1, which differs from after, so a
// restart also reads as a change.
func (c *Client) WaitChange(ctx context.Context, after uint64) (uint64, error) {
	var resp GenerationResponse
	err := c.do(ctx, WaitTimeout, http.MethodGet, PathChanges+"?after="+strconv.FormatUint(after, 10), nil, &resp)
	return resp.Generation, err
}

// verifyBody encodes {"token": raw} without making a string of raw. Bytes
// that JSON would have to escape (never in a well-formed token) go through
// encoding/json instead.
func verifyBody(raw []byte) []byte {
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

func (c *Client) do(ctx context.Context, timeout time.Duration, method, path string, body []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://verifyd"+path, rd)
	if err != nil {
		return fmt.Errorf("verifyd: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w (%s): %w", ErrUnavailable, c.socket, unwrapURL(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("%w (%s): reading the answer: %w", ErrUnavailable, c.socket, err)
	}
	if resp.StatusCode/100 != 2 {
		se := &ServerError{Status: resp.StatusCode}
		var er ErrorResponse
		if json.Unmarshal(data, &er) == nil && er.Code != "" {
			se.Code, se.Message = er.Code, er.Message
		} else {
			se.Code = http.StatusText(resp.StatusCode)
		}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			se.RetryAfter = time.Duration(s) * time.Second
		}
		return se
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%w (%s): the answer is not verifyd's: %v", ErrUnavailable, c.socket, err)
	}
	return nil
}

// unwrapURL drops *url.Error, whose text repeats the method and the dummy
// URL.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}
