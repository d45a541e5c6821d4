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

const enqueued = "Token request enqueued.  Ask an administrator to please approve request 42."

// requestScript stands in for condor_token_request: it enqueues request 42
// and prints the token once $D/approved exists. Like HTCondor when stdout
// is a pipe, it shows the request line only at exit unless stdout is a
// terminal: a fetcher without a terminal never learns the id in time, and
// the test, which approves only after seeing the id, times out.
const requestScript = `
approval() { while [ ! -e "$D/approved" ]; do sleep 0.02; done; }
if [ -t 1 ]; then
	echo '` + enqueued + `'
	approval
else
	approval
	echo '` + enqueued + `'
fi
cat "$D/token"`

func TestRequest(t *testing.T) {
	tests := []struct {
		name     string
		script   string
		approve  bool // create $D/approved once Progress shows request 42
		cancel   bool // cancel the context once Progress shows request 42
		timeout  time.Duration
		wantErr  string
		wantMsg  string
		wantTime bool
	}{
		{name: "approved", script: requestScript, approve: true},
		{
			name:     "not approved in time",
			script:   requestScript,
			timeout:  time.Second,
			wantErr:  "request 42 was not approved within 1s (an administrator approves it with condor_token_request_approve -reqid 42)",
			wantTime: true,
		},
		{
			name:    "canceled",
			script:  requestScript,
			cancel:  true,
			wantErr: "condor_token_request canceled while waiting for approval of request 42",
		},
		{
			name:    "failure",
			script:  `echo 'AUTHENTICATE:1003:Failed to authenticate with any method' >&2; exit 1`,
			wantErr: "condor_token_request failed: AUTHENTICATE:1003:Failed to authenticate with any method",
			wantMsg: "AUTHENTICATE:1003",
		},
		{
			name:    "no token",
			script:  `echo '` + enqueued + `'`,
			wantErr: "exited without printing a token",
		},
		{
			name:    "two tokens",
			script:  `echo '` + enqueued + `'; cat "$D/token" "$D/token"`,
			wantErr: "printed 2 tokens",
		},
		{
			name:     "not even enqueued",
			script:   `sleep 30`,
			timeout:  200 * time.Millisecond,
			wantErr:  "condor_token_request timed out after 200ms before it enqueued a request",
			wantTime: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := testToken(t)
			s := newStandIn(t, "condor_token_request", tt.script, tok)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 20 * time.Second // only reached if the test fails
			}
			f, err := New(Options{
				Method:   "request",
				Command:  []string{s.path},
				Identity: "alice@pool.example",
				Lifetime: time.Hour,
				Authz:    []string{"READ", "WRITE"},
				Pool:     "cm.example",
				Timeout:  timeout,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var seen []Progress
			approved := false
			progress := func(p Progress) {
				seen = append(seen, p)
				if p.RequestID != "42" {
					return
				}
				if tt.approve && !approved {
					approved = true
					if err := os.WriteFile(filepath.Join(s.dir, "approved"), nil, 0o600); err != nil {
						t.Error(err)
					}
				}
				if tt.cancel {
					cancel()
				}
			}
			start := time.Now()
			got, err := f.Fetch(ctx, Request{}, progress)
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Fetch took %s: it hangs", d)
			}
			t.Logf("error: %v", err)
			waitGroupGone(t, s.pid(t))
			noSecret(t, err, tok)

			checkOutcome(t, got, err, tok, wantOutcome{tt.wantErr, tt.wantMsg, tt.wantTime, "request", "condor_token_request"})
			if tt.cancel && !errors.Is(err, context.Canceled) {
				t.Errorf("error does not wrap context.Canceled")
			}

			if len(seen) == 0 || seen[0].Started.IsZero() || seen[0].Message == "" {
				t.Fatalf("Progress %+v, want a first report at once", seen)
			}
			if tt.approve || tt.cancel {
				if !slices.ContainsFunc(seen, func(p Progress) bool {
					return p.RequestID == "42" && strings.Contains(p.Message, "condor_token_request_approve -reqid 42")
				}) {
					t.Errorf("no Progress with request 42: %+v", seen)
				}
			}
			want := []string{"-identity", "alice@pool.example", "-lifetime", "3600",
				"-authz", "READ", "-authz", "WRITE", "-pool", "cm.example"}
			if tt.approve && !slices.Equal(s.argv(t), want) {
				t.Errorf("arguments %q, want %q", s.argv(t), want)
			}
		})
	}
}

// TestRequestTicks checks the elapsed time is reported every second while
// waiting.
func TestRequestTicks(t *testing.T) {
	tok := testToken(t)
	s := newStandIn(t, "condor_token_request", requestScript, tok)
	f, err := New(Options{Method: "request", Command: []string{s.path}, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var ticks int
	got, err := f.Fetch(context.Background(), Request{}, func(p Progress) {
		if p.RequestID == "42" {
			if ticks++; ticks == 3 {
				os.WriteFile(filepath.Join(s.dir, "approved"), nil, 0o600)
			}
			if ticks > 1 && !strings.Contains(p.Message, "s elapsed") {
				t.Errorf("Progress message %q has no elapsed time", p.Message)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	got.Wipe()
	if ticks < 3 {
		t.Errorf("%d reports with the request id, want at least 3", ticks)
	}
}

func TestRequestRefusesKey(t *testing.T) {
	_, err := New(Options{Method: "request", Key: "POOL"})
	if err == nil || !strings.Contains(err.Error(), "-key") {
		t.Errorf("New: %v, want a refusal of key", err)
	}
}

// The request tool's terminal is the agent's user's alone: devpts makes it
// writable by group tty.
func TestPTYPrivate(t *testing.T) {
	master, tty, err := openPTY()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	defer tty.Close()
	st, err := tty.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Fatalf("%s: mode %04o, want 0600", tty.Name(), perm)
	}
}
