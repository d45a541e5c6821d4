package api

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/tokend/tokend/internal/localapi"
)

// Error codes: a contract between the agent and its clients.
const (
	CodeBadRequest  = localapi.CodeBadRequest
	CodeTooLarge    = localapi.CodeTooLarge
	CodeForbidden   = "forbidden"
	CodeNotFound    = localapi.CodeNotFound
	CodeNoMethod    = localapi.CodeMethodNotAllowed
	CodeFetchFailed = "fetch-failed"
	CodeBusy        = "busy"
	CodeInternal    = localapi.CodeInternal
)

// Error is an error reported by the agent.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Is lets errors.Is match on the code: errors.Is(err, &api.Error{Code: api.CodeNotFound}).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Status returns the HTTP status that carries e.
func (e *Error) Status() int {
	switch e.Code {
	case CodeBadRequest:
		return http.StatusBadRequest
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeForbidden:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeNoMethod:
		return http.StatusMethodNotAllowed
	case CodeBusy:
		return http.StatusConflict
	case CodeFetchFailed:
		return http.StatusBadGateway
	}
	return http.StatusInternalServerError
}

// Errorf builds an *Error.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrNoAgent means nothing answers on the socket.
var ErrNoAgent = errors.New("no tokend agent is running")

// NoAgentError says which socket was tried and what to do.
type NoAgentError struct {
	Socket string
	Err    error
}

func (e *NoAgentError) Error() string {
	return fmt.Sprintf("no tokend agent answers on %s (%v): start it with `systemctl --user start tokend` or log in again; `tokend doctor` checks the setup", e.Socket, e.Err)
}

func (e *NoAgentError) Unwrap() []error { return []error{ErrNoAgent, e.Err} }
