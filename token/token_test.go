package token

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestParseVectors(t *testing.T) {
	for _, c := range loadVectors(t).Cases {
		t.Run(c.Name, func(t *testing.T) {
			tok, err := Parse([]byte(c.Token))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			num := func(k string) int64 {
				f, _ := c.Claims[k].(float64)
				return int64(f)
			}
			str := func(k string) string { s, _ := c.Claims[k].(string); return s }
			want := Token{
				Alg: c.Header["alg"].(string), Kid: c.Header["kid"].(string),
				Iss: str("iss"), Sub: str("sub"), Jti: str("jti"), Scope: str("scope"),
				Iat: num("iat"), Exp: num("exp"), Nbf: num("nbf"),
			}
			if *tok != want {
				t.Errorf("got %+v\nwant %+v", *tok, want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte
		want string // substring of the error; "" means valid
	}{
		{"plain", craft(hdr256, payBase, 43), ""},
		{"hs384", craft(`{"alg":"HS384","kid":"AP"}`, payBase, 64), ""},
		{"hs512", craft(`{"alg":"HS512","kid":"AP"}`, payBase, 86), ""},
		{"extra header members", craft(`{"typ":"JWT","alg":"HS256","kid":"POOL"}`, payBase, 43), ""},
		{"float times", craft(hdr256, `{"iat":1.7953931545e9,"exp":2.1e9,"nbf":1e9,"iss":"x","sub":"y"}`, 43), ""},
		{"capability", craft(hdr256, `{"iat":1,"iss":"x","cap":true,"jti":"abc"}`, 43), ""},
		{"escaped strings", craft(hdr256, `{"iat":1,"iss":"x","sub":"a\u0040b","scope":"condor:\/READ"}`, 43), ""},

		{"empty", nil, "empty"},
		{"two segments", []byte("eyJh.eyJh"), "three"},
		{"four segments", append(craft(hdr256, payBase, 43), ".x"...), "three"},
		{"padding", append(craft(hdr256, payBase, 42), '='), "character"},
		{"std base64", append(craft(hdr256, payBase, 42), '+'), "character"},
		{"inner space", []byte("eyJh bGc.x.y"), "character"},
		{"inner CR", []byte("eyJh\rbGc.x.y"), "character"},
		{"header not base64", []byte("A.eyJh.AAAA"), "header is not base64url"},
		{"header not JSON", craft(`alg`, payBase, 43), "header is not a JSON object"},
		{"header null", craft(`null`, payBase, 43), "header is not a JSON object"},
		{"header array", craft(`[1]`, payBase, 43), "header is not a JSON object"},
		{"header trailing data", craft(hdr256+`{}`, payBase, 43), "header is not a JSON object"},
		{"alg none", craft(`{"alg":"none","kid":"POOL"}`, payBase, 43), "alg"},
		{"alg RS256", craft(`{"alg":"RS256","kid":"POOL"}`, payBase, 43), "alg"},
		{"no alg", craft(`{"kid":"POOL"}`, payBase, 43), "alg"},
		{"no kid", craft(`{"alg":"HS256"}`, payBase, 43), "header has no kid"},
		{"empty kid", craft(`{"alg":"HS256","kid":""}`, payBase, 43), "header has no kid"},
		{"kid number", craft(`{"alg":"HS256","kid":7}`, payBase, 43), "kid is not a string"},
		{"kid wrong case", craft(`{"alg":"HS256","KID":"POOL"}`, payBase, 43), "header has no kid"},
		{"payload not JSON", craft(hdr256, `{"iat":`, 43), "payload is not a JSON object"},
		{"no iss", craft(hdr256, `{"iat":1,"sub":"y"}`, 43), "no iss"},
		{"iss wrong case", craft(hdr256, `{"iat":1,"ISS":"x","sub":"y"}`, 43), "no iss"},
		{"iss number", craft(hdr256, `{"iat":1,"iss":1,"sub":"y"}`, 43), "iss is not a string"},
		{"no iat", craft(hdr256, `{"iss":"x","sub":"y"}`, 43), "no iat"},
		{"iat string", craft(hdr256, `{"iat":"1","iss":"x","sub":"y"}`, 43), "iat is not a number"},
		{"iat null", craft(hdr256, `{"iat":null,"iss":"x","sub":"y"}`, 43), "iat is not a number"},
		{"iat huge", craft(hdr256, `{"iat":1e300,"iss":"x","sub":"y"}`, 43), "in range"},
		{"no sub", craft(hdr256, `{"iat":1,"iss":"x"}`, 43), "no sub"},
		{"cap false", craft(hdr256, `{"iat":1,"iss":"x","cap":false}`, 43), "no sub"},
		{"cap string", craft(hdr256, `{"iat":1,"iss":"x","cap":"true"}`, 43), "cap is not a boolean"},
		{"exp string", craft(hdr256, `{"exp":"2","iat":1,"iss":"x","sub":"y"}`, 43), "exp is not a number"},
		{"exp zero", craft(hdr256, `{"exp":0,"iat":1,"iss":"x","sub":"y"}`, 43), "exp is not a positive time"},
		{"nbf bool", craft(hdr256, `{"nbf":true,"iat":1,"iss":"x","sub":"y"}`, 43), "nbf is not a number"},
		{"scope number", craft(hdr256, `{"scope":1,"iat":1,"iss":"x","sub":"y"}`, 43), "scope is not a string"},
		{"jti object", craft(hdr256, `{"jti":{},"iat":1,"iss":"x","sub":"y"}`, 43), "jti is not a string"},
		{"signature short", craft(hdr256, payBase, 42), "want 43"},
		{"signature long", craft(hdr256, payBase, 44), "want 43"},
		{"hs512 short signature", craft(`{"alg":"HS512","kid":"AP"}`, payBase, 43), "want 86"},
		{"no signature", craft(hdr256, payBase, 0), "want 43"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := Parse(tt.raw)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", tok)
			}
			if !errors.Is(err, ErrMalformed) || ReasonOf(err) != Malformed {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if tok != nil {
				t.Error("token returned with error")
			}
		})
	}
}

func TestParseValues(t *testing.T) {
	tok, err := Parse(craft(hdr256, `{"iat":1.9,"exp":2.5e9,"nbf":-5,"iss":"x","cap":true,"jti":"j","scope":"condor:\/READ"}`, 43))
	if err != nil {
		t.Fatal(err)
	}
	want := Token{Alg: "HS256", Kid: "POOL", Iss: "x", Jti: "j", Scope: "condor:/READ", Cap: true, Iat: 1, Exp: 2500000000, Nbf: -5}
	if *tok != want {
		t.Errorf("got %+v, want %+v", *tok, want)
	}
}

func TestExpiresWithin(t *testing.T) {
	now := time.Unix(1000, 0)
	tests := []struct {
		exp    int64
		margin time.Duration
		want   bool
	}{
		{0, time.Hour, false},
		{1001, 0, false},
		{1000, 0, true},
		{999, 0, true},
		{1300, 5 * time.Minute, true},
		{1301, 5 * time.Minute, false},
	}
	for _, tt := range tests {
		tok := &Token{Exp: tt.exp}
		if got := tok.ExpiresWithin(now, tt.margin); got != tt.want {
			t.Errorf("exp %d margin %s: got %v, want %v", tt.exp, tt.margin, got, tt.want)
		}
	}
}

func TestLogValue(t *testing.T) {
	raw := vector(t, "pool-scoped")
	tok, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "token", tok)
	var rec struct{ Token map[string]any }
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.Token) != 4 || rec.Token["sub"] != "alice@example.org" || rec.Token["iss"] != "example.org" ||
		rec.Token["kid"] != "POOL" || rec.Token["exp"] != "2036-11-20T00:19:14Z" {
		t.Errorf("logged %v", rec.Token)
	}
	sig := string(raw[bytes.LastIndexByte(raw, '.')+1:])
	if strings.Contains(buf.String(), sig) || strings.Contains(buf.String(), tok.Jti) {
		t.Error("log holds the signature or jti")
	}
	if got := (*Token)(nil).LogValue().String(); got != "<nil>" {
		t.Errorf("nil LogValue = %q", got)
	}
}

func TestReasonOf(t *testing.T) {
	tests := []struct {
		err  error
		want Reason
	}{
		{nil, Valid},
		{ErrExpired, Expired},
		{ErrNotYetValid, NotYetValid},
		{ErrRotatedKey, RotatedKey},
		{ErrUnknownKey, UnknownKey},
		{ErrKeyUnavailable, UnknownKey},
		{ErrRevoked, Revoked},
		{ErrMalformed, Malformed},
		{ErrUntrustedIssuer, UntrustedIssuer},
		{errors.New("other"), Malformed},
		{errors.Join(errors.New("x"), ErrRevoked), Revoked},
	}
	for _, tt := range tests {
		if got := ReasonOf(tt.err); got != tt.want {
			t.Errorf("ReasonOf(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
	// The string values are a public contract.
	for r, s := range map[Reason]string{Valid: "", Expired: "expired", NotYetValid: "not-yet-valid",
		RotatedKey: "rotated-key", UnknownKey: "unknown-key", Revoked: "revoked",
		Malformed: "malformed", UntrustedIssuer: "untrusted-issuer"} {
		if string(r) != s {
			t.Errorf("Reason %q changed", s)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	raw := vector(b, "pool-scoped")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(raw); err != nil {
			b.Fatal(err)
		}
	}
}
