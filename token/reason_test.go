package token

import (
	"testing"
	"time"
)

// TestReasonTable is the verdict table: only what breaks HTCondor's tools
// hides, and only what may become good again is kept.
func TestReasonTable(t *testing.T) {
	for _, c := range []struct {
		r                 Reason
		hides, reversible bool
	}{
		{Valid, false, false},
		{UnknownKey, false, false},
		{RotatedKey, true, true},
		{NotYetValid, true, true},
		{Expired, true, false},
		{Malformed, true, false},
		{UntrustedIssuer, true, false},
		{Revoked, true, false},
	} {
		if c.r.Hides() != c.hides || c.r.Reversible() != c.reversible {
			t.Errorf("%q: Hides=%v Reversible=%v, want %v %v", c.r, c.r.Hides(), c.r.Reversible(), c.hides, c.reversible)
		}
		if c.r.Reversible() && !c.r.Hides() {
			t.Errorf("%q is reversible but does not hide", c.r)
		}
	}
}

func TestEffective(t *testing.T) {
	const iat = 1_700_000_000
	for _, c := range []struct {
		name    string
		exp     int64
		maxAge  time.Duration
		wantExp int64
	}{
		{"no max age keeps exp", iat + 3600, 0, iat + 3600},
		{"no max age, no exp", 0, 0, 0},
		{"negative max age is none", iat + 3600, -time.Minute, iat + 3600},
		{"max age lowers exp", iat + 3600, time.Minute, iat + 60},
		{"max age gives an exp", 0, time.Minute, iat + 60},
		{"an earlier exp stays", iat + 30, time.Minute, iat + 30},
		{"whole seconds", iat + 3600, 1500 * time.Millisecond, iat + 1},
	} {
		tok := Token{Iss: "pool", Sub: "u", Kid: "POOL", Iat: iat, Exp: c.exp, Nbf: iat - 5}
		got := tok.Effective(c.maxAge)
		want := tok
		want.Exp = c.wantExp
		if got != want {
			t.Errorf("%s: Effective(%v) = %+v, want %+v", c.name, c.maxAge, got, want)
		}
		if tok.Exp != c.exp {
			t.Errorf("%s: Effective changed its receiver", c.name)
		}
	}
	// As the servers do: a token past its max age is expired.
	tok := Token{Iat: iat, Exp: iat + 3600}
	if e := tok.Effective(time.Minute); !e.ExpiresWithin(time.Unix(iat+61, 0), 0) || e.ExpiresWithin(time.Unix(iat+59, 0), 0) {
		t.Error("Effective exp does not drive ExpiresWithin")
	}
}
