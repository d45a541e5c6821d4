package main

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
)

// The CLI's tables for people, from the agent's answers: what each line
// says, for this release's agent and for one that sends no pools.

func TestListFormat(t *testing.T) {
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.Local).Unix()
	tests := []struct {
		name string
		toks []api.Token
		want []string // lines, fields split on runs of spaces
	}{
		{"no tokens", nil, []string{"no tokens"}},
		{"pools and states", []api.Token{
			{Name: "tokend-session", Pool: "default", Sub: "u@site", Iss: "site", Kid: "POOL", Exp: &exp, State: api.StateValid},
			{Name: "tokend-osg", Pool: "osg", Sub: "u@osg", Iss: "osg.example", Kid: "POOL", State: api.StateValid},
			{Name: "national", Pool: "", Sub: "u@nat", Iss: "nat.example", Kid: "K1", Exp: &exp, State: api.StateValid},
			{Name: "old", Pool: "default", Sub: "u@site", Iss: "site", Kid: "OLD", Exp: &exp, State: api.StateValid, Reason: api.ReasonUnknownKey},
			{Name: "stale", Pool: "default", Sub: "u@site", Iss: "site", Kid: "POOL", Exp: &exp, State: api.StateHidden, Reason: "rotated-key", Remembered: true},
			{Name: "gone", Pool: "osg", Sub: "u@osg", Iss: "osg.example", Kid: "POOL", Exp: &exp, State: api.StateHidden, Reason: "expired"},
		}, []string{
			"NAME POOL SUBJECT ISSUER KEY EXPIRES STATE",
			"tokend-session default u@site site POOL 2030-01-02 03:04:05 valid",
			"tokend-osg osg u@osg osg.example POOL never valid",
			"national - u@nat nat.example K1 2030-01-02 03:04:05 valid",
			"old default u@site site OLD 2030-01-02 03:04:05 valid (unknown-key)",
			"stale default u@site site POOL 2030-01-02 03:04:05 hidden (rotated-key, kept)",
			"gone osg u@osg osg.example POOL 2030-01-02 03:04:05 hidden (expired)",
		}},
		{"an agent that sends no pool", []api.Token{
			{Name: "tokend-session", Sub: "u@site", Iss: "site", Kid: "POOL", State: api.StateValid},
		}, []string{
			"NAME POOL SUBJECT ISSUER KEY EXPIRES STATE",
			"tokend-session - u@site site POOL never valid",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			writeTokens(&b, tt.toks)
			if got := tableLines(b.String()); !slices.Equal(got, tt.want) {
				t.Errorf("writeTokens:\n%s\nwant lines\n%s", b.String(), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestStatusFormat(t *testing.T) {
	started := time.Date(2030, 1, 2, 3, 4, 5, 0, time.Local)
	exp := time.Now().Add(time.Hour).Unix()
	next := time.Date(2030, 1, 2, 4, 0, 0, 0, time.Local)
	base := api.Status{
		Version: "v1", PID: 42, Dir: "/home/u/.condor/tokens.d", Mounted: true, Started: started,
		Tokens: 3, Hidden: 1, MemoryLocked: true,
		Session:    api.Session{Name: "tokend-session", Method: "exec", State: api.SessionValid, Exp: &exp},
		Validation: api.Validation{KeyCheck: "verifyd", Verifyd: "/run/tokend/verify.sock", VerifydUp: true, Generation: 3},
	}
	withPools := base
	withPools.Remembered = 1
	withPools.MemoryLockedBytes = 12 << 10
	withPools.MemoryLockLimit = 64 << 10
	withPools.Sessions = 2
	withPools.Pools = []api.PoolStatus{
		{Name: "default", TrustDomain: "site.example", TrustFrom: api.TrustFromVerifyd, TokenMaxAge: 86400,
			Session: base.Session, Validation: base.Validation},
		{Name: "osg", TrustDomain: "osg.example", TrustFrom: api.TrustFromConfig,
			Session:    api.Session{Name: "tokend-osg", Method: "exec", State: api.SessionFailed, LastError: "SECMAN:2007", Failures: 2, NextRefresh: &next},
			Validation: api.Validation{KeyCheck: "none"},
			LastError:  `the token fetched for pool osg has iss "x", not osg's trust domain "osg.example": refused (check [pools.osg.fetch])`},
		{Name: "nat", TrustDomain: "nat.example", TrustFrom: api.TrustFromConfig,
			Session:    api.Session{Name: "tokend-nat", Method: "local", State: api.SessionRemoved},
			Validation: api.Validation{KeyCheck: "keys"}},
	}
	unknown := base
	unknown.MemoryLocked = false
	unknown.Pools = []api.PoolStatus{{Name: "default", ClaimsOther: true, Session: base.Session, Validation: base.Validation}}

	tests := []struct {
		name string
		st   api.Status
		want []string // regular expressions, one per line, in order
	}{
		{"an agent that sends no pools", base, []string{
			`^agent: +running \(pid 42, since 2030-01-02 03:04:05, v1\)$`,
			`^directory: +/home/u/.condor/tokens.d \(mounted\)$`,
			`^tokens: +3 shown, 1 hidden$`,
			`^session token: +tokend-session: valid, expires .* \[exec\]$`,
			`^key check: +verifyd \(verifyd up, key generation 3\)$`,
			`^memory: +locked \(tokens cannot be swapped out\)$`,
		}},
		{"pools", withPools, []string{
			`^agent: `,
			`^directory: `,
			`^tokens: +3 shown, 1 hidden \(1 kept in memory: they come back when their key does\)$`,
			`^pool default: +trust domain site.example \(from verifyd\); tokens older than 24h are refused \(SEC_TOKEN_MAX_AGE\)$`,
			`^  session token: +tokend-session: valid, expires .* \[exec\]$`,
			`^  key check: +verifyd \(verifyd up, key generation 3\)$`,
			`^pool osg: +trust domain osg.example \(from config\)$`,
			`^  session token: +tokend-osg: failed, next try at 04:00:00 \[exec\]$`,
			`^  last error: +SECMAN:2007 \(2 failures in a row\)$`,
			`^  key check: +none$`,
			`^  problem: +the token fetched for pool osg has iss "x", not osg's trust domain "osg.example": refused \(check \[pools.osg.fetch\]\)$`,
			`^pool nat: +trust domain nat.example \(from config\)$`,
			"^  session token: +tokend-nat: removed \\(by you; `tokend fetch --pool nat` gets a new one\\) \\[local\\]$",
			`^  key check: +keys$`,
			`^login sessions: +2$`,
			`^memory: +locked, 12 KiB of 64 KiB RLIMIT_MEMLOCK \(tokens cannot be swapped out\)$`,
		}},
		{"an unknown trust domain", unknown, []string{
			`^agent: `,
			`^directory: `,
			`^tokens: `,
			`^pool default: +trust domain unknown: judges every issuer no other pool claims \(set trust_domain, or run verifyd --trust-domain\)$`,
			`^  session token: `,
			`^  key check: `,
			`^memory: +NOT locked: raise RLIMIT_MEMLOCK \(LimitMEMLOCK= in the unit\)$`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			writeStatus(&b, tt.st)
			got := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
			if len(got) != len(tt.want) {
				t.Fatalf("writeStatus printed %d lines, want %d:\n%s", len(got), len(tt.want), b.String())
			}
			for i, re := range tt.want {
				if !regexp.MustCompile(re).MatchString(got[i]) {
					t.Errorf("line %d %q does not match %q\n%s", i+1, got[i], re, b.String())
				}
			}
		})
	}
}

func TestFetchedFormat(t *testing.T) {
	tests := []struct {
		tok  api.Token
		want string
	}{
		{api.Token{Name: "tokend-session", Pool: "default", Sub: "u@s", Iss: "s"}, "fetched tokend-session: u@s from s, no expiry"},
		{api.Token{Name: "tokend-session", Sub: "u@s", Iss: "s"}, "fetched tokend-session: u@s from s, no expiry"},
		{api.Token{Name: "x", Pool: "osg", Sub: "u@o", Iss: "o"}, "fetched x (pool osg): u@o from o, no expiry"},
	}
	for _, tt := range tests {
		if got := describeFetched(tt.tok); got != tt.want {
			t.Errorf("describeFetched(%+v) = %q, want %q", tt.tok, got, tt.want)
		}
	}
}

// `tokend fetch --pool` to an agent of an earlier release, which refuses
// unknown fields, says what to do; other errors pass unchanged.
func TestOlderAgent(t *testing.T) {
	old := api.Errorf(api.CodeBadRequest, "malformed request: json: unknown field \"pool\"")
	err := olderAgent(old, "pool")
	if !strings.Contains(err.Error(), "earlier release and knows no pool: restart it") || !errors.Is(err, old) {
		t.Errorf("olderAgent(%v) = %v", old, err)
	}
	if code := fail(io.Discard, "fetch", err); code != exitFailure {
		t.Errorf("exit code %d, want %d", code, exitFailure)
	}
	for _, e := range []error{
		api.Errorf(api.CodeBadRequest, "no pool named \"nope\" (pools: default, osg)"),
		api.Errorf(api.CodeFetchFailed, "unknown field \"pool\""),
		errors.New("x"),
	} {
		if got := olderAgent(e, "pool"); got != e {
			t.Errorf("olderAgent(%v) = %v, want it unchanged", e, got)
		}
	}
}

// tableLines splits a table into lines of single-space-separated fields.
func tableLines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		out = append(out, strings.Join(strings.Fields(l), " "))
	}
	return out
}
