package fetch

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// testToken signs a real token for the stand-ins to print.
func testToken(t *testing.T) []byte {
	t.Helper()
	raw, err := keys.Sign(keys.NewFile(), "POOL", token.Claims{
		Issuer:   "pool.example",
		Subject:  "alice@pool.example",
		Lifetime: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// standIn is a shell script in its own directory, named like the HTCondor
// tool it stands in for. In the script $D is that directory and the token
// to print is in $D/token (with a newline). Before the body runs, the
// script records its arguments in $D/argv, one a line, and its pid (also
// its process group) in $D/pid, which appears complete or not at all.
type standIn struct {
	dir, path string
}

func newStandIn(t *testing.T, name, body string, tok []byte) standIn {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name)
	script := fmt.Sprintf(`#!/bin/sh
D='%s'
printf '%%s\n' "$@" > "$D/argv"
echo $$ > "$D/pid.new" && mv "$D/pid.new" "$D/pid"
%s
`, dir, body)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "token"), append(bytes.Clone(tok), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	return standIn{dir: dir, path: path}
}

// argv returns the arguments the stand-in recorded.
func (s standIn) argv(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.dir, "argv"))
	if err != nil {
		t.Fatalf("stand-in did not record its arguments: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}

// pid returns the pid the stand-in recorded, which is also its process
// group.
func (s standIn) pid(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.dir, "pid"))
	if err != nil {
		t.Fatalf("stand-in did not record its pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// groupAlive reports whether any live (not zombie) process is in process
// group pgid.
func groupAlive(pgid int) bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(data, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:])) // state ppid pgrp ...
		if len(f) >= 3 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			return true
		}
	}
	return false
}

func waitGroupGone(t *testing.T, pgid int) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, fmt.Sprintf("process group %d is still alive", pgid), func() bool {
		return !groupAlive(pgid)
	})
}

// noSecret fails the test if err's text holds the token or any of its
// segments.
func noSecret(t *testing.T, err error, secrets ...[]byte) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	var fe *Error
	if errors.As(err, &fe) {
		msg += "\n" + fe.Message
	}
	for _, s := range secrets {
		for _, part := range append(bytes.Split(s, []byte(".")), s) {
			if len(part) >= 8 && strings.Contains(msg, string(part)) {
				t.Errorf("error text holds a secret (%q): %s", part[:8], msg)
			}
		}
	}
}

func asError(t *testing.T, err error) *Error {
	t.Helper()
	var fe *Error
	if !errors.As(err, &fe) {
		t.Fatalf("error %T is not a *fetch.Error: %v", err, err)
	}
	return fe
}

// wantOutcome is what a Fetch must give: the token when err is "", else an
// *Error whose text holds err and whose Message holds message.
type wantOutcome struct {
	err, message    string
	timeout         bool
	method, command string
}

// checkOutcome fails the test unless Fetch's result is as w says. It
// returns the *Error (nil on success) for further checks.
func checkOutcome(t *testing.T, got *secmem.Buffer, err error, tok []byte, w wantOutcome) *Error {
	t.Helper()
	if w.err == "" {
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		defer got.Wipe()
		if !bytes.Equal(got.Bytes(), tok) {
			t.Errorf("Fetch returned another token")
		}
		return nil
	}
	if err == nil {
		got.Wipe()
		t.Fatalf("Fetch succeeded, want an error with %q", w.err)
	}
	if got != nil {
		t.Errorf("Fetch returned a token with its error")
	}
	fe := asError(t, err)
	if !strings.Contains(err.Error(), w.err) {
		t.Errorf("error %q, want it to contain %q", err, w.err)
	}
	if !strings.Contains(fe.Message, w.message) {
		t.Errorf("Message %q, want it to contain %q", fe.Message, w.message)
	}
	if fe.Timeout != w.timeout {
		t.Errorf("Timeout = %v, want %v", fe.Timeout, w.timeout)
	}
	if fe.Method != w.method || fe.Command != w.command {
		t.Errorf("Method, Command = %q, %q; want %q, %q", fe.Method, fe.Command, w.method, w.command)
	}
	return fe
}
