package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"

	"github.com/tokend/tokend/internal/localapi"
)

// Client talks to one agent.
type Client struct {
	Socket string
	c      *localapi.Client
}

// NewClient returns a client for the agent listening on socket (the config
// package says where that is: config.SocketOverride, else
// Config.AgentSocket).
func NewClient(socket string) *Client {
	return &Client{Socket: socket, c: localapi.NewClient(socket)}
}

// maxAnswerBytes bounds an answer the client decodes.
const maxAnswerBytes = 1 << 20

// do sends a request and decodes a JSON answer into out (unless nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := localapi.ReadJSON(resp, maxAnswerBytes, out); err != nil {
		return fmt.Errorf("could not read the agent's answer: %w", err)
	}
	return nil
}

// send returns a 2xx response or the agent's error.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = b
	}
	resp, err := c.c.Do(ctx, method, path, body)
	if err == nil {
		return resp, nil
	}
	var e *localapi.Error
	if errors.As(err, &e) {
		if e.Code == "" {
			return nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("the agent answered %d %s", e.Status, http.StatusText(e.Status))}
		}
		return nil, &Error{Code: e.Code, Message: e.Message}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return nil, &NoAgentError{Socket: c.Socket, Err: op.Err}
	}
	return nil, fmt.Errorf("could not talk to the agent on %s: %w", c.Socket, err)
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, PathStatus, nil, &s)
	return s, err
}

// Tokens lists tokens; all includes hidden ones.
func (c *Client) Tokens(ctx context.Context, all bool) ([]Token, error) {
	path := PathTokens
	if all {
		path += "?all=1"
	}
	var ts []Token
	err := c.do(ctx, http.MethodGet, path, nil, &ts)
	return ts, err
}

// Remove deletes a token file.
func (c *Client) Remove(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, PathTokens+"/"+url.PathEscape(name), nil, nil)
}

// Wipe removes every token; logout also stops the agent.
func (c *Client) Wipe(ctx context.Context, logout bool) error {
	return c.do(ctx, http.MethodPost, PathWipe, WipeRequest{Logout: logout}, nil)
}

// Session counts a login session in or out.
func (c *Client) Session(ctx context.Context, r SessionRequest) (SessionResponse, error) {
	var out SessionResponse
	err := c.do(ctx, http.MethodPost, PathSession, r, &out)
	return out, err
}

// Fetch asks the agent for a fresh token, calling progress while it waits
// (a token request awaiting approval). It returns the stored token's
// metadata.
func (c *Client) Fetch(ctx context.Context, r FetchRequest, progress func(Progress)) (Token, error) {
	resp, err := c.send(ctx, http.MethodPost, PathFetch, r)
	if err != nil {
		return Token{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		var ev FetchEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return Token{}, fmt.Errorf("could not read the agent's answer: %w", err)
		}
		switch {
		case ev.Error != nil:
			return Token{}, ev.Error
		case ev.Token != nil:
			return *ev.Token, nil
		case ev.Progress != nil && progress != nil:
			progress(*ev.Progress)
		}
	}
	if ctx.Err() != nil {
		return Token{}, ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return Token{}, fmt.Errorf("lost the agent while fetching: %w", err)
	}
	return Token{}, errors.New("the agent ended the fetch without a result")
}
