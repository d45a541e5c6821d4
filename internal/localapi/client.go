package localapi

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

// Client limits.
const (
	dialTimeout = 5 * time.Second
	// maxErrorBytes bounds the error body Do reads.
	maxErrorBytes = 64 << 10
)

// Client sends requests to one service over its Unix socket. Connections
// are kept and reused; it is safe for concurrent use.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the service listening on socket. It does
// not connect until the first request.
func NewClient(socket string) *Client {
	d := net.Dialer{Timeout: dialTimeout}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression:  true,
		MaxIdleConns:        4,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket is the path the client connects to.
func (c *Client) Socket() string { return c.socket }

// Close closes idle connections. The client stays usable.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Do sends one request, with body (JSON) unless it is nil, and returns:
//   - the answer, when its status is 2xx: the caller reads and closes its
//     body;
//   - an *[Error] when the service answered with another status: Code and
//     Message from the envelope (Code is "" when the body was not one),
//     Status, and RetryAfter from Retry-After;
//   - otherwise the error of the exchange: ctx's error, or a *net.OpError
//     whose Op is "dial" when nothing answers on the socket.
//
// This is the one path every request of both services takes.
func (c *Client) Do(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://local"+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// *url.Error repeats the method and the dummy URL.
		var ue *url.Error
		if errors.As(err, &ue) && ue.Err != nil {
			err = ue.Err
		}
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	e := &Error{Status: resp.StatusCode}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	var env Error
	if json.Unmarshal(data, &env) == nil && env.Code != "" {
		e.Code, e.Message = env.Code, env.Message
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return nil, e
}

// ReadJSON decodes an answer's body, at most limit bytes, into out.
func ReadJSON(resp *http.Response, limit int64, out any) error {
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return err
	}
	if int64(len(data)) > limit {
		return fmt.Errorf("the answer is larger than %d bytes", limit)
	}
	return json.Unmarshal(data, out)
}
