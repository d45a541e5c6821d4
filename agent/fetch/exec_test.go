package fetch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// garbage looks like a token (and like a secret) but is not one: its
// payload has no iss.
const garbage = "eyJhbGciOiJIUzI1NiIsImtpZCI6IlBPT0wifQ.eyJzZWNyZXQiOiJodW50ZXIyIn0.c2lnbmF0dXJlLXNlY3JldC14eXo"

const secmanFailure = "Failed to request a session token: SECMAN:2007:Failed to end classad message."

func TestExec(t *testing.T) {
	tests := []struct {
		name    string
		script  string
		fixed   []string // fixed arguments in Command
		opts    Options
		req     Request
		timeout time.Duration

		wantArgs    []string // nil: not checked
		wantErr     string   // "" = success; else a substring of Error()
		wantMessage string   // substring of Error.Message
		wantTimeout bool
		checkGroup  bool // the stand-in's process group must be gone afterwards
	}{
		{
			name:     "request overrides",
			script:   `cat "$D/token"`,
			opts:     Options{Lifetime: time.Minute, Authz: []string{"ADMINISTRATOR"}},
			req:      Request{Lifetime: time.Hour, Authz: []string{"READ", "WRITE"}},
			wantArgs: []string{"-lifetime", "3600", "-authz", "READ", "-authz", "WRITE"},
		},
		{
			name:   "options",
			script: `cat "$D/token"`,
			fixed:  []string{"-debug"},
			opts: Options{Lifetime: 90*time.Second + time.Millisecond, Authz: []string{"READ"},
				Pool: "cm.example:9618", Name: "ap1.example", Type: "SCHEDD", Key: "POOL", Identity: "ignored"},
			wantArgs: []string{"-debug", "-lifetime", "91", "-authz", "READ",
				"-pool", "cm.example:9618", "-name", "ap1.example", "-type", "SCHEDD", "-key", "POOL"},
		},
		{
			name:     "no flags",
			script:   `cat "$D/token"`,
			wantArgs: []string{""},
		},
		{
			name:   "crlf and comments",
			script: `echo '# a comment'; echo; printf '%s\r\n' "$(cat "$D/token")"`,
		},
		{
			name:   "warning on stderr",
			script: `echo 'WARNING: something' >&2; cat "$D/token"`,
		},
		{
			name:        "secman failure",
			script:      `echo '` + secmanFailure + `' >&2; exit 1`,
			wantErr:     "condor_token_fetch failed: " + secmanFailure,
			wantMessage: secmanFailure,
		},
		{
			name:    "exit 1 silently",
			script:  `exit 1`,
			wantErr: "condor_token_fetch failed: exit status 1 (nothing on stderr)",
		},
		{
			name:        "token on stderr is redacted",
			script:      `echo "debug: sending $(cat "$D/token")" >&2; exit 2`,
			wantErr:     "debug: sending [redacted]",
			wantMessage: "[redacted]",
		},
		{
			name:    "garbage",
			script:  `echo '` + garbage + `'`,
			wantErr: "printed 1 line that is not a token",
		},
		{
			name:    "garbage lines",
			script:  `echo '` + garbage + `'; echo 'secret-thing hunter2'`,
			wantErr: "printed 2 lines that are not a token",
		},
		{
			name:    "token and garbage",
			script:  `cat "$D/token"; echo '` + garbage + `'`,
			wantErr: "printed 1 line that is not a token",
		},
		{
			name:    "two tokens",
			script:  `cat "$D/token" "$D/token"`,
			wantErr: "printed 2 tokens, want exactly one",
		},
		{
			name:    "nothing",
			script:  `exit 0`,
			wantErr: "printed no token",
		},
		{
			name:    "too much",
			script:  `head -c 100000 /dev/zero | tr '\0' A`,
			wantErr: "printed more than 64 KiB",
		},
		{
			name:        "hang",
			script:      `sleep 30`,
			timeout:     200 * time.Millisecond,
			wantErr:     "condor_token_fetch timed out after 200ms",
			wantTimeout: true,
			checkGroup:  true,
		},
		{
			name:        "hang after printing",
			script:      `cat "$D/token"; sleep 30`,
			timeout:     200 * time.Millisecond,
			wantErr:     "timed out",
			wantTimeout: true,
			checkGroup:  true,
		},
		{
			// A grandchild keeps stdout and stderr open after the tool
			// exited: the token is taken, the grandchild killed.
			name:       "grandchild holds stdout",
			script:     `cat "$D/token"; sleep 30 &`,
			checkGroup: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := testToken(t)
			s := newStandIn(t, "condor_token_fetch", tt.script, tok)
			o := tt.opts
			o.Command = append([]string{s.path}, tt.fixed...)
			o.Timeout = tt.timeout
			f, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			got, err := f.Fetch(context.Background(), tt.req, nil)
			elapsed := time.Since(start)
			t.Logf("error: %v", err)
			if elapsed > 10*time.Second {
				t.Errorf("Fetch took %s: it hangs", elapsed)
			}
			if tt.checkGroup {
				waitGroupGone(t, s.pid(t))
			}
			noSecret(t, err, tok, []byte(garbage))
			checkOutcome(t, got, err, tok, wantOutcome{tt.wantErr, tt.wantMessage, tt.wantTimeout, "exec", "condor_token_fetch"})
			if tt.wantTimeout && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("timeout error does not wrap context.DeadlineExceeded: %v", err)
			}
			if tt.wantArgs != nil {
				if args := s.argv(t); !slices.Equal(args, tt.wantArgs) {
					t.Errorf("arguments %q, want %q", args, tt.wantArgs)
				}
			}
		})
	}
}

func TestExecCancel(t *testing.T) {
	tok := testToken(t)
	s := newStandIn(t, "condor_token_fetch", `sleep 30`, tok)
	f, err := New(Options{Command: []string{s.path}, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// Cancel once the stand-in runs.
		for ctx.Err() == nil {
			if _, err := os.Stat(filepath.Join(s.dir, "pid")); err == nil {
				cancel()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	start := time.Now()
	_, err = f.Fetch(ctx, Request{}, nil)
	if time.Since(start) > 10*time.Second {
		t.Errorf("Fetch took %s after cancel", time.Since(start))
	}
	fe := asError(t, err)
	if fe.Timeout || !errors.Is(err, context.Canceled) {
		t.Errorf("error %v (Timeout %v), want a cancellation", err, fe.Timeout)
	}
	waitGroupGone(t, s.pid(t))
}

func TestExecNotFound(t *testing.T) {
	f, err := New(Options{Command: []string{"condor_token_fetch-not-installed"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Fetch(context.Background(), Request{}, nil)
	if err == nil || !strings.Contains(err.Error(), "install HTCondor's tools or set the fetch command") {
		t.Errorf("error %v, want a hint to install HTCondor", err)
	}
}
