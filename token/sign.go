package token

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tokend/tokend/secmem"
)

// Claims describes a token for [Sign].
type Claims struct {
	Issuer   string        // iss: the pool's TRUST_DOMAIN
	Subject  string        // sub: user@domain
	Authz    []string      // e.g. READ, WRITE; becomes scope "condor:/READ condor:/WRITE"; empty means unlimited
	Lifetime time.Duration // exp = iat + Lifetime, rounded up to a second; 0 means no exp
	IssuedAt time.Time     // iat; zero means now
}

// Sign makes a token the way condor_token_create does, byte for byte for
// ordinary values: header {"alg":"HS256","kid":"<kid>"} with no typ; payload
// members in sorted order: exp (only with a lifetime), iat, iss, jti (32
// random hex digits), scope (only with Authz), sub; '/' written as "\/" as
// HTCondor's JSON writer does. kid "" means [PoolKeyName]. key is the
// derived key ([DeriveKey]), not the key file. The token is returned in a
// buffer of its exact size that the caller clears when done; the MAC is
// computed in locked memory ([Verify] says how).
func Sign(c Claims, kid string, key []byte) ([]byte, error) {
	var id [16]byte
	rand.Read(id[:]) // never fails: crypto/rand crashes the program instead
	return sign(c, kid, key, hex.EncodeToString(id[:]))
}

func sign(c Claims, kid string, key []byte, jti string) ([]byte, error) {
	if kid == "" {
		kid = PoolKeyName
	}
	switch {
	case !plainName(kid):
		return nil, fmt.Errorf("token: sign: key name %q is not a plain file name", kid)
	case c.Issuer == "":
		return nil, fmt.Errorf("token: sign: no issuer")
	case c.Subject == "":
		return nil, fmt.Errorf("token: sign: no subject")
	case !utf8.ValidString(kid) || !utf8.ValidString(c.Issuer) || !utf8.ValidString(c.Subject):
		// JSON would replace the bad bytes: the token would name another key.
		return nil, fmt.Errorf("token: sign: key name, issuer and subject must be valid UTF-8")
	case c.Lifetime < 0:
		return nil, fmt.Errorf("token: sign: negative lifetime")
	case len(key) == 0:
		return nil, fmt.Errorf("token: sign: empty key")
	}
	iat := c.IssuedAt
	if iat.IsZero() {
		iat = time.Now()
	}
	claims := map[string]any{"iat": iat.Unix(), "iss": c.Issuer, "jti": jti, "sub": c.Subject}
	if c.Lifetime > 0 {
		claims["exp"] = iat.Unix() + int64((c.Lifetime+time.Second-1)/time.Second)
	}
	if len(c.Authz) > 0 {
		scopes := make([]string, len(c.Authz))
		for i, a := range c.Authz {
			if a == "" || strings.ContainsFunc(a, unicode.IsSpace) {
				return nil, fmt.Errorf("token: sign: authz %q is empty or has a space", a)
			}
			scopes[i] = "condor:/" + a
		}
		claims["scope"] = strings.Join(scopes, " ")
	}
	// encoding/json sorts map keys, as HTCondor's writer does.
	header, err := json.Marshal(map[string]any{"alg": "HS256", "kid": kid})
	if err != nil {
		return nil, fmt.Errorf("token: sign: %w", err)
	}
	payload, err := condorJSON(claims)
	if err != nil {
		return nil, fmt.Errorf("token: sign: %w", err)
	}
	return signed(header, payload, key)
}

// signed returns header.payload.signature, each segment base64url, in one
// buffer of exactly the token's size (appending would leave partial copies
// behind): the caller clears it. The MAC is computed into a secmem buffer
// and encoded from there.
func signed(header, payload, key []byte) ([]byte, error) {
	enc := base64.RawURLEncoding
	h, p := enc.EncodedLen(len(header)), enc.EncodedLen(len(payload))
	out := make([]byte, h+1+p+1+enc.EncodedLen(sha256.Size))
	enc.Encode(out, header)
	out[h] = '.'
	enc.Encode(out[h+1:], payload)
	out[h+1+p] = '.'
	sig, err := secmem.New(sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("token: sign: %w", err)
	}
	defer sig.Wipe()
	secmem.Do(func() {
		if err = mac(sig.Bytes(), sha256.New, key, out[:h+1+p]); err == nil {
			enc.Encode(out[h+1+p+1:], sig.Bytes())
		}
	})
	if err != nil {
		clear(out)
		return nil, fmt.Errorf("token: sign: %w", err)
	}
	return out, nil
}

// condorJSON marshals claims like HTCondor's JSON writer (picojson), which
// escapes '/' as "\/": condor_token_create writes scope as
// "condor:\/READ". Outside strings JSON has no '/', so a plain replace is
// exact.
func condorJSON(claims map[string]any) ([]byte, error) {
	b, err := json.Marshal(claims)
	if err != nil {
		return nil, err
	}
	return bytes.ReplaceAll(b, []byte("/"), []byte(`\/`)), nil
}
