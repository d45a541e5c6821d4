package token

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/secmem"
)

// TestVectors checks every HTCondor-made token against both key folders
// with the real current time.
func TestVectors(t *testing.T) {
	v := loadVectors(t)
	now := time.Now()
	for _, folder := range []string{"keys", "keys-rotated"} {
		kd := keyDir(t, folder)
		for _, c := range v.Cases {
			t.Run(folder+"/"+c.Name, func(t *testing.T) {
				want := c.Expect[folder]
				if len(want) == 0 {
					t.Fatalf("no expectation for %s", folder)
				}
				tok, err := Check([]byte(c.Token), now, 0, []string{v.TrustDomain}, kd)
				got := string(ReasonOf(err))
				if err == nil {
					got = "valid"
				}
				if !slices.Contains(want, got) {
					t.Errorf("got %s (%v), want one of %v", got, err, want)
				}
				if tok == nil {
					t.Error("Check returned no token for a well-formed token")
				}
			})
		}
	}
}

func TestStoreCredToken(t *testing.T) {
	content, err := os.ReadFile(filepath.Join(testdata, "store-cred", "schedd-fetched.jwt"))
	if err != nil {
		t.Fatal(err)
	}
	lines, err := ParseFile(content)
	if err != nil || len(lines) != 1 || lines[0].Kind != TokenLine {
		t.Fatalf("ParseFile = %+v, %v", lines, err)
	}
	raw := content[lines[0].Start:lines[0].End]
	kd := keyDir(t, "store-cred")
	if n := len(rawKeyFile(t, "store-cred", "POOL")); n != 45 {
		t.Fatalf("store-cred/POOL has %d bytes, want 45", n)
	}
	tok, err := Check(raw, time.Now(), time.Hour, []string{"127.0.0.1:9618"}, kd)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if tok.Sub != "tokuser@vm" || tok.Scope != "condor:/READ" {
		t.Errorf("claims %+v", tok)
	}
	if err := VerifyWith(raw, keyDir(t, "keys")); !errors.Is(err, ErrRotatedKey) {
		t.Errorf("against keys/: %v, want ErrRotatedKey", err)
	}
}

func TestVerify(t *testing.T) {
	raw := vector(t, "pool-plain")
	key := DeriveKey("POOL", rawKeyFile(t, "keys", "POOL"))
	if err := Verify(raw, key); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	rotated := DeriveKey("POOL", rawKeyFile(t, "keys-rotated", "POOL"))
	if err := Verify(raw, rotated); !errors.Is(err, ErrRotatedKey) {
		t.Errorf("rotated key: %v", err)
	}
	if err := Verify(raw, DeriveKey("AP", rawKeyFile(t, "keys", "POOL"))); !errors.Is(err, ErrRotatedKey) {
		t.Errorf("undoubled key: %v", err)
	}
	if err := Verify(raw, nil); !errors.Is(err, ErrKeyUnavailable) {
		t.Errorf("nil key: %v", err)
	}
	if err := Verify(raw[:len(raw)-1], key); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated: %v", err)
	}
	// HTCondor servers accept HS384 and HS512 with the same key.
	for _, alg := range []string{"HS384", "HS512"} {
		other := signAlg(t, alg, key)
		if err := Verify(other, key); err != nil {
			t.Errorf("%s: %v", alg, err)
		}
		if err := Verify(other, rotated); !errors.Is(err, ErrRotatedKey) {
			t.Errorf("%s rotated: %v", alg, err)
		}
	}
	if err := VerifyWith(raw, nil); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("nil keyring: %v", err)
	}
	if err := VerifyWith(raw, failingKeyring{}); !errors.Is(err, ErrKeyUnavailable) {
		t.Errorf("failing keyring: %v", err)
	}
}

type failingKeyring struct{}

func (failingKeyring) Key(string) (*secmem.Buffer, error) { return nil, errors.New("backend down") }

// signAlg re-signs pool-plain's header and payload with alg, the way a
// server that uses HS384 or HS512 would.
func signAlg(t *testing.T, alg string, key []byte) []byte {
	t.Helper()
	raw := craft(`{"alg":"`+alg+`","kid":"POOL"}`, payBase, 0)
	input := raw[:len(raw)-1] // header.payload
	m := map[string]func([]byte, []byte) []byte{"HS384": hmac384, "HS512": hmac512}[alg]
	return fmt.Appendf(nil, "%s.%s", input, b64(m(key, input)))
}

func TestCheck(t *testing.T) {
	kd := keyDir(t, "keys")
	key := lockedKey(t, kd, "POOL")
	iat := time.Unix(1795393154, 0)
	ten := mustSign(t, Claims{Issuer: "example.org", Subject: "a@example.org", Lifetime: 10 * time.Minute, IssuedAt: iat}, key)
	nbf := craft(hdr256, `{"iat":1795393154,"nbf":1795396754,"iss":"example.org","sub":"a@b"}`, 43)
	tests := []struct {
		name    string
		raw     []byte
		now     time.Time
		margin  time.Duration
		domains []string
		kr      Keyring
		want    error
	}{
		{"valid", ten, iat, 5 * time.Minute, []string{"example.org"}, kd, nil},
		{"no checks but time", ten, iat, 0, nil, nil, nil},
		{"within margin", ten, iat, 10 * time.Minute, nil, nil, ErrExpired},
		{"expired", ten, iat.Add(time.Hour), 0, nil, kd, ErrExpired},
		{"expired beats bad key", ten, iat.Add(time.Hour), 0, nil, keyDir(t, "keys-rotated"), ErrExpired},
		{"untrusted issuer", ten, iat, 0, []string{"other.org", "x"}, kd, ErrUntrustedIssuer},
		{"trusted among several", ten, iat, 0, []string{"other.org", "example.org"}, kd, nil},
		{"rotated", ten, iat, 0, nil, keyDir(t, "keys-rotated"), ErrRotatedKey},
		{"not yet valid", nbf, iat, 0, nil, nil, ErrNotYetValid},
		{"nbf reached", nbf, iat.Add(time.Hour), 0, nil, nil, nil},
		{"malformed", ten[:len(ten)-2], iat, 0, nil, kd, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := Check(tt.raw, tt.now, tt.margin, tt.domains, tt.kr)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Check = %v, want %v", err, tt.want)
			}
			if (tok == nil) != errors.Is(err, ErrMalformed) {
				t.Errorf("token %v with error %v", tok, err)
			}
		})
	}
	if _, err := Check(nbf, iat, 0, nil, nil); ReasonOf(err) != NotYetValid {
		t.Errorf("ReasonOf(%v) = %q", err, ReasonOf(err))
	}
}

// assertNoSecret fails if s holds raw, its signature, or a long piece of it.
func assertNoSecret(t *testing.T, s string, raw []byte) {
	t.Helper()
	sig := string(raw[bytes.LastIndexByte(raw, '.')+1:])
	for _, secret := range []string{string(raw), sig, sig[:12], sig[len(sig)-12:]} {
		if strings.Contains(s, secret) {
			t.Errorf("%q holds part of the token", s)
		}
	}
}

// TestErrorsHoldNoToken runs malformed and failing inputs built from a real
// token through every entry point and checks no error text carries it.
func TestErrorsHoldNoToken(t *testing.T) {
	raw := string(vector(t, "pool-scoped"))
	dot := strings.LastIndexByte(raw, '.')
	sig := raw[dot+1:]
	inputs := []string{
		raw[:len(raw)-1],
		raw + "A",
		raw + ".",
		raw[:dot],
		raw[:dot] + "." + sig + sig,
		raw[:10] + " " + raw[10:],
		raw[:dot] + "=" + raw[dot:],
		"eyJhbGciOiJub25lIiwia2lkIjoiUE9PTCJ9" + raw[strings.IndexByte(raw, '.'):],
		strings.Replace(raw, ".", "..", 1),
		sig + "." + sig + "." + sig,
	}
	kd := keyDir(t, "keys-rotated")
	key := lockedKey(t, kd, "POOL")
	for i, in := range append(inputs, raw) {
		b := []byte(in)
		var errs []error
		_, err := Parse(b)
		errs = append(errs, err)
		_, err = ParseFile([]byte("# x\n" + in + "\n"))
		errs = append(errs, err)
		_, err = CheckDraft([]byte(in + "\n"))
		errs = append(errs, err)
		_, err = CheckDraft(b)
		errs = append(errs, err)
		errs = append(errs, Verify(b, key), VerifyWith(b, kd))
		_, err = Check(b, time.Now(), 0, []string{"nowhere"}, kd)
		errs = append(errs, err)
		_, err = Check(b, time.Now(), 0, nil, kd)
		errs = append(errs, err)
		for _, err := range errs {
			if err != nil {
				assertNoSecret(t, err.Error(), []byte(raw))
				assertNoSecret(t, fmt.Sprintf("%+v %#v", err, err), []byte(raw))
			}
		}
		if i < len(inputs) && errs[0] == nil {
			t.Errorf("input %d parsed", i)
		}
	}
	tok, _ := Parse([]byte(raw))
	assertNoSecret(t, fmt.Sprintf("%v %+v %#v", tok, tok, *tok), []byte(raw))
}
