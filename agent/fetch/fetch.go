// Package fetch obtains fresh tokens from the pool: by running
// condor_token_fetch (exec), by requesting one and waiting for an
// administrator's approval (request), or by signing locally with a key file
// (local).
//
// A fetched token is returned in a [secmem.Buffer] and nowhere else: the
// temporary Go buffers that held the child's output are zeroed (best effort:
// the kernel's pipe buffers and the child's memory are out of reach). Errors
// are always an [*Error]; they carry the tool's own message from stderr with
// anything that looks like a token redacted, and never the child's stdout.
//
// Child processes get /dev/null as stdin and a process group of their own,
// which is killed with SIGKILL when the fetch times out or is canceled, and
// a token directory of their own (Options.Tokens): they never read the
// mount, where a tool's first look after a key change waits for the fetch.
package fetch

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/secmem"
)

// Limits. The methods' names, default programs and timeout are the
// configuration's (config.MethodExec, config.DefaultFetchCommand,
// config.DefaultFetchTimeout).
const (
	maxOutput  = 64 << 10 // bytes of stdout kept
	maxStderr  = 8 << 10  // bytes of stderr kept (the end)
	maxMessage = 400      // bytes of stderr put into an Error, before escaping (logsafe.Max after)
)

// waitDelay bounds how long a child's output may stay open after the child
// exited (a grandchild holding stdout or stderr) before it is given up on.
const waitDelay = 2 * time.Second

// Options configures a Fetcher. Fields a method does not use are ignored.
type Options struct {
	Method   string        // "exec" (default), "request", "local"
	Command  []string      // program and fixed args; nil = condor_token_fetch (exec) / condor_token_request (request)
	Lifetime time.Duration // 0 = pool decides (no -lifetime flag); passed in whole seconds, rounded up
	Authz    []string      // each passed as -authz A
	// Timeout bounds the whole fetch; for request it is how long to wait
	// for an administrator's approval. 0 means config.DefaultFetchTimeout.
	Timeout time.Duration
	// -pool, -name, -type, -key when set (request has no -key: New
	// refuses Key with it).
	Pool, Name, Type, Key string
	// Identity is passed as -identity by request when set; for local it is
	// the token's sub (default "<User>@<Issuer>"). exec ignores it: the
	// schedd decides who the caller is.
	Identity string

	// Tokens returns the pool's shown token files, for a command that
	// talks to a schedd elsewhere (Pool or Name set): the command's private
	// token directory (_CONDOR_SEC_TOKEN_DIRECTORY) holds them and nothing
	// else. For this host's schedd (FS authentication) it stays empty. nil
	// = empty. The fetch wipes the buffers. exec and request.
	Tokens func() []TokenFile
	// TokenDir is the parent of the private token directories; "" =
	// $XDG_RUNTIME_DIR, else /run/user/UID.
	TokenDir string

	// The local issuer.
	KeyDir  string // a SEC_PASSWORD_DIRECTORY-like folder of scrambled key files; required
	KeyName string // key file in KeyDir and the token's kid; default "POOL"
	Issuer  string // iss; default os.Hostname()
	User    string // the local user name, for the default identity; default the current user
}

// Request can override Options per fetch (tokend fetch --lifetime --authz).
// Zero fields mean the Options' values.
type Request struct {
	Lifetime time.Duration
	Authz    []string // nil = Options.Authz; empty but not nil = no -authz (unlimited)
}

// Progress is reported during a long fetch (request).
type Progress struct {
	RequestID string    // set once condor_token_request printed it
	Started   time.Time // when the fetch started
	Message   string    // for people, e.g. "waiting for an administrator to approve request 42 (condor_token_request_approve -reqid 42), 5s"
}

// Fetcher obtains one fresh token.
type Fetcher interface {
	// Fetch returns one token in a secmem buffer (the caller wipes it). It
	// never returns a token it could not Parse. progress may be nil; it is
	// called on the goroutine that called Fetch and must not block for
	// long. A failed fetch returns an *Error and no token.
	Fetch(ctx context.Context, req Request, progress func(Progress)) (*secmem.Buffer, error)
}

// New validates o and returns the Fetcher for its method.
func New(o Options) (Fetcher, error) {
	o.Command = slices.Clone(o.Command)
	o.Authz = slices.Clone(o.Authz)
	switch {
	case o.Timeout < 0:
		return nil, fmt.Errorf("fetch: negative timeout %s", o.Timeout)
	case o.Timeout == 0:
		o.Timeout = config.DefaultFetchTimeout
	}
	if err := checkRequest(o.Lifetime, o.Authz); err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	if len(o.Command) > 0 && o.Command[0] == "" {
		return nil, errors.New("fetch: command has an empty program name")
	}
	switch o.Method {
	case "", config.MethodExec:
		o.Method = config.MethodExec
		if len(o.Command) == 0 {
			o.Command = []string{config.DefaultFetchCommand}
		}
		return &execFetcher{o: o}, nil
	case config.MethodRequest:
		if o.Key != "" {
			return nil, fmt.Errorf("fetch: key %q is not supported by the request method (condor_token_request has no -key)", o.Key)
		}
		if len(o.Command) == 0 {
			o.Command = []string{config.DefaultRequestCommand}
		}
		return &requestFetcher{o: o}, nil
	case config.MethodLocal:
		return newLocal(o)
	}
	return nil, fmt.Errorf("fetch: unknown method %q: want exec, request or local", o.Method)
}

// checkRequest validates a lifetime and authz list.
func checkRequest(lifetime time.Duration, authz []string) error {
	if lifetime < 0 {
		return fmt.Errorf("negative lifetime %s", lifetime)
	}
	for _, a := range authz {
		if a == "" || strings.ContainsFunc(a, unicode.IsSpace) {
			return fmt.Errorf("authz %q is empty or has a space", a)
		}
	}
	return nil
}

// resolve merges a per-fetch Request into the Options.
func (o *Options) resolve(req Request) (time.Duration, []string, error) {
	lifetime, authz := o.Lifetime, o.Authz
	if req.Lifetime != 0 {
		lifetime = req.Lifetime
	}
	if req.Authz != nil {
		authz = req.Authz
	}
	return lifetime, authz, checkRequest(lifetime, authz)
}

// flags returns the HTCondor command-line flags for one fetch.
func (o *Options) flags(lifetime time.Duration, authz []string) []string {
	var args []string
	if o.Method == config.MethodRequest && o.Identity != "" {
		args = append(args, "-identity", o.Identity)
	}
	if lifetime > 0 {
		secs := int64((lifetime + time.Second - 1) / time.Second)
		args = append(args, "-lifetime", strconv.FormatInt(secs, 10))
	}
	for _, a := range authz {
		args = append(args, "-authz", a)
	}
	for _, f := range []struct{ flag, v string }{
		{"-pool", o.Pool}, {"-name", o.Name}, {"-type", o.Type}, {"-key", o.Key},
	} {
		if f.v != "" {
			args = append(args, f.flag, f.v)
		}
	}
	return args
}

// argv is the whole command line for one fetch.
func (o *Options) argv(req Request) ([]string, error) {
	lifetime, authz, err := o.resolve(req)
	if err != nil {
		return nil, err
	}
	return append(slices.Clone(o.Command), o.flags(lifetime, authz)...), nil
}

// defaultIdentity is "<user>@<issuer>" for the local issuer.
func defaultIdentity(o Options) (string, error) {
	name := o.User
	if name == "" {
		u, err := user.Current()
		if err != nil {
			return "", fmt.Errorf("fetch: cannot find the current user for the default identity (set the identity): %w", err)
		}
		name = u.Username
	}
	return name + "@" + o.Issuer, nil
}

// Error is every fetch failure: what failed and HTCondor's own message.
type Error struct {
	Method  string // exec | request | local
	Command string // program name only (no args); "" for local
	// Message is the tool's stderr message, trimmed, the end of it, with
	// anything that looks like a token redacted, on one line of at most
	// logsafe.Max bytes (control characters and newlines escaped: it
	// reaches the agent's log and the root PAM hook's).
	Message string
	Timeout bool
	Err     error // underlying cause (exit status, context, ...)

	// Limit is the timeout that expired (with Timeout).
	Limit time.Duration
	// RequestID is condor_token_request's request id, once it was printed.
	RequestID string
}

func (e *Error) Error() string {
	who := e.Command
	if who == "" {
		who = e.Method + " fetch"
	}
	if e.Method == config.MethodLocal {
		who = "local issuer"
	}
	var b strings.Builder
	switch {
	case e.Timeout && e.RequestID != "":
		fmt.Fprintf(&b, "%s: request %s was not approved within %s (an administrator approves it with condor_token_request_approve -reqid %s); fetch again to make a new request, or raise the fetch timeout to wait longer",
			who, e.RequestID, e.Limit, e.RequestID)
	case e.Timeout && e.Method == config.MethodRequest:
		fmt.Fprintf(&b, "%s timed out after %s before it enqueued a request: check that the pool is reachable (condor_ping -type schedd READ) or raise the fetch timeout", who, e.Limit)
	case e.Timeout:
		fmt.Fprintf(&b, "%s timed out after %s: check that the schedd is running and reachable (condor_ping -type schedd READ) or raise the fetch timeout", who, e.Limit)
	case e.RequestID != "" && errors.Is(e.Err, context.Canceled):
		fmt.Fprintf(&b, "%s canceled while waiting for approval of request %s", who, e.RequestID)
	default:
		b.WriteString(who + " failed: ")
		var exit *exec.ExitError
		switch {
		case e.Message != "" && errors.As(e.Err, &exit):
			b.WriteString(e.Message) // HTCondor's message says it all
		case e.Message != "" && e.Err != nil:
			b.WriteString(e.Err.Error() + " (stderr: " + e.Message + ")")
		case e.Message != "":
			b.WriteString(e.Message)
		case e.Err != nil:
			b.WriteString(e.Err.Error())
		default:
			b.WriteString("unknown error")
		}
		if e.Timeout || e.Err == nil {
			break
		}
		if errors.Is(e.Err, exec.ErrNotFound) {
			b.WriteString(": install HTCondor's tools or set the fetch command")
		} else if errors.As(e.Err, &exit) && e.Message == "" {
			b.WriteString(" (nothing on stderr)")
		}
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// fail builds an Error for o's method and command.
func (o *Options) fail(err error) *Error {
	e := &Error{Method: o.Method, Err: err}
	if len(o.Command) > 0 && o.Method != config.MethodLocal {
		e.Command = filepath.Base(o.Command[0])
	}
	return e
}

// store copies a token that parsed into a secmem buffer.
func store(raw []byte) (*secmem.Buffer, error) {
	b, err := secmem.From(raw)
	if err != nil {
		return nil, fmt.Errorf("cannot keep the token in memory: %w", err)
	}
	return b, nil
}
