package validate

import (
	"context"
	"testing"
	"time"

	"github.com/tokend/tokend/token"
)

// Each token is judged only by the checks of its iss's pool; a pool whose
// trust domain is unknown claims every iss no other pool claims; a token of
// no pool gets only the claims checks.
func TestRouter(t *testing.T) {
	now := time.Unix(2_000_000_000, 0)
	clock := func() time.Time { return now }
	def := &Checker{Pool: "default", Now: clock, Keys: []KeyChecker{fakeKey{"keys", token.RotatedKey, nil}}}
	osg := &Checker{Pool: "osg", Now: clock, Keys: []KeyChecker{fakeKey{"verifyd", token.Valid, nil}}}
	none := &Checker{Now: clock}
	r := NewRouter([]*Checker{def, osg}, []string{"", "osg.example"}, none)
	ctx := context.Background()

	check := func(iss string, wantPool string, want token.Reason, wantBy string) {
		t.Helper()
		tok := &token.Token{Iss: iss, Iat: now.Unix(), Exp: now.Unix() + 3600}
		v := r.Check(ctx, nil, tok)
		if v.Pool != wantPool || v.Reason != want || v.By != wantBy {
			t.Errorf("iss %s: %+v, want %q by %s in pool %q", iss, v, want, wantBy, wantPool)
		}
	}
	// Unknown default trust domain: it claims every other iss.
	if !r.ClaimsOther("default") || r.ClaimsOther("osg") {
		t.Fatal("ClaimsOther: the default pool with no trust domain claims other issuers, osg does not")
	}
	check("osg.example", "osg", token.Valid, "verifyd")
	check("anything.example", "default", token.RotatedKey, "keys")

	// Once known, the default pool speaks only for its own.
	if !r.SetTrustDomain("default", "cm.example", "verifyd") {
		t.Fatal("SetTrustDomain reported no change")
	}
	if r.SetTrustDomain("default", "cm.example", "verifyd") {
		t.Fatal("SetTrustDomain reported a change for the same trust domain")
	}
	if td, from := r.TrustDomain("default"); td != "cm.example" || from != "verifyd" {
		t.Fatalf("TrustDomain: %q from %q", td, from)
	}
	if r.ClaimsOther("default") {
		t.Fatal("a default pool with a trust domain claims other issuers")
	}
	check("cm.example", "default", token.RotatedKey, "keys")
	check("osg.example", "osg", token.Valid, "verifyd")
	check("flock.example", "", token.Valid, ByClaims)
	if r.PoolOf("flock.example") != nil {
		t.Fatal("PoolOf: a token of no pool has a pool")
	}

	// A token of no pool still expires.
	tok := &token.Token{Iss: "flock.example", Exp: now.Unix() - 1}
	if v := r.Check(ctx, nil, tok); v.Reason != token.Expired || v.Pool != "" {
		t.Errorf("an expired token of no pool: %+v", v)
	}
	if got := r.Quick(tok); got != token.Expired {
		t.Errorf("Quick of an expired token of no pool: %q", got)
	}

	// validate.trust_domains hides other issuers, pools or not.
	strict := &Checker{Now: clock, TrustDomains: []string{"cm.example"}}
	r2 := NewRouter([]*Checker{{Pool: "default", Now: clock, TrustDomains: strict.TrustDomains}}, []string{"cm.example"}, strict)
	if v := r2.Check(ctx, nil, &token.Token{Iss: "evil.example"}); v.Reason != token.UntrustedIssuer {
		t.Errorf("an untrusted issuer with trust_domains set: %+v", v)
	}
	if td, from := r2.TrustDomain("default"); td != "cm.example" || from != "config" {
		t.Errorf("a configured trust domain: %q from %q", td, from)
	}
}

// SEC_TOKEN_MAX_AGE makes a token expire at iat + max age.
func TestMaxAge(t *testing.T) {
	now := time.Unix(2_000_000_000, 0)
	var maxAge time.Duration
	c := &Checker{Margin: time.Second, Now: func() time.Time { return now }, MaxAge: func() time.Duration { return maxAge }}
	old := &token.Token{Iss: "x", Iat: now.Unix() - 60, Exp: now.Unix() + 3600}
	if r := c.Quick(old); r != token.Valid {
		t.Fatalf("no max age: %q", r)
	}
	maxAge = 9 * time.Second
	if r := c.Quick(old); r != token.Expired {
		t.Fatalf("iat 60 s ago, max age 9 s: %q, want expired", r)
	}
	if e := c.Effective(*old); e.Exp != old.Iat+9 {
		t.Fatalf("Effective exp %d, want iat+9", e.Exp)
	}
	young := &token.Token{Iss: "x", Iat: now.Unix() - 2}
	if r := c.Quick(young); r != token.Valid {
		t.Fatalf("iat 2 s ago, max age 9 s: %q", r)
	}
}
