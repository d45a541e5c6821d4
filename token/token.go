package token

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Token is the parsed, non-secret part of one token: its header and claims.
// It never holds the raw token or its signature, so it is safe to print and
// log.
type Token struct {
	Alg, Kid             string // header
	Iss, Sub, Jti, Scope string
	Cap                  bool  // a capability token: may have no sub
	Iat, Exp, Nbf        int64 // unix seconds; 0 when absent
}

// Parse checks the structure of raw and returns its header and claims. It
// does not check time, issuer or signature (see [Check]). Errors wrap
// [ErrMalformed], say what is wrong, and never quote raw.
//
// A token is three dot-separated segments of unpadded base64url. The header
// is a JSON object with alg HS256, HS384 or HS512 and a non-empty kid. The
// payload is a JSON object with a non-empty string iss, a numeric iat, and a
// non-empty string sub unless cap is true; exp and nbf are optional numbers,
// scope and jti optional strings. Member names are matched exactly, as
// HTCondor does. The signature segment must have the exact length for the
// alg, so a truncated token never parses.
func Parse(raw []byte) (*Token, error) {
	header, payload, sig, err := split(raw)
	if err != nil {
		return nil, err
	}
	t := new(Token)
	if err := t.parseHeader(header); err != nil {
		return nil, err
	}
	if err := t.parsePayload(payload); err != nil {
		return nil, err
	}
	// The alphabet is already checked and every one of these lengths is a
	// valid unpadded base64 length, so the segment decodes: no need to.
	if want := sigLen(t.Alg); len(sig) != want {
		return nil, malformed(fmt.Sprintf("signature has %d characters, want %d for %s", len(sig), want, t.Alg))
	}
	return t, nil
}

// LogValue logs only what identifies a token to a person: sub, iss, kid and
// exp (when set).
func (t *Token) LogValue() slog.Value {
	if t == nil {
		return slog.StringValue("<nil>")
	}
	attrs := []slog.Attr{
		slog.String("sub", t.Sub),
		slog.String("iss", t.Iss),
		slog.String("kid", t.Kid),
	}
	if t.Exp != 0 {
		attrs = append(attrs, slog.Time("exp", time.Unix(t.Exp, 0).UTC()))
	}
	return slog.GroupValue(attrs...)
}

// ExpiresWithin reports whether the token is expired at now+margin. HTCondor
// servers allow no leeway, so a token is hidden once now+margin reaches exp.
// A token without exp never expires.
func (t *Token) ExpiresWithin(now time.Time, margin time.Duration) bool {
	return t.Exp != 0 && !now.Add(margin).Before(time.Unix(t.Exp, 0))
}

// Effective returns t as a pool's servers see it: when maxAge > 0 (the
// pool's SEC_TOKEN_MAX_AGE, which makes servers refuse a token whose iat is
// older), Exp is lowered to Iat+maxAge. Hiding and refresh use it, so that a
// token is treated as expired when the servers would refuse it.
func (t Token) Effective(maxAge time.Duration) Token {
	if maxAge <= 0 {
		return t
	}
	if limit := t.Iat + int64(maxAge/time.Second); t.Exp == 0 || limit < t.Exp {
		t.Exp = limit
	}
	return t
}

func malformed(what string) error {
	return fmt.Errorf("%w: %s", ErrMalformed, what)
}

var errSegments = malformed("want three dot-separated segments")

// sigLen is the length of an unpadded base64url HMAC for alg (32, 48 or 64
// bytes); 0 for an alg this package does not accept.
func sigLen(alg string) int {
	switch alg {
	case "HS256":
		return 43
	case "HS384":
		return 64
	case "HS512":
		return 86
	}
	return 0
}

// isTokenByte reports whether c may appear in a token: base64url or a dot.
func isTokenByte(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.'
}

// checkAlphabet rejects anything outside base64url and dots up front: the
// base64 decoder would otherwise skip embedded CR and LF.
func checkAlphabet(raw []byte) error {
	for _, c := range raw {
		if !isTokenByte(c) {
			return malformed("character not allowed in a token (want base64url and dots)")
		}
	}
	return nil
}

func split(raw []byte) (header, payload, sig []byte, err error) {
	if len(raw) == 0 {
		return nil, nil, nil, malformed("empty")
	}
	if err := checkAlphabet(raw); err != nil {
		return nil, nil, nil, err
	}
	header, rest, ok1 := bytes.Cut(raw, []byte{'.'})
	payload, sig, ok2 := bytes.Cut(rest, []byte{'.'})
	if !ok1 || !ok2 || bytes.IndexByte(sig, '.') >= 0 {
		return nil, nil, nil, errSegments
	}
	return header, payload, sig, nil
}

func (t *Token) parseHeader(seg []byte) error {
	var buf [256]byte // most headers fit: no allocation
	it, err := decodeObject(seg, buf[:], "header")
	if err != nil {
		return err
	}
	for name, v, ok := it.next(); ok; name, v, ok = it.next() {
		switch string(name) {
		case "alg":
			err = t.setAlg(v)
		case "kid":
			t.Kid, err = jsonString(v, "header kid")
		}
		if err != nil {
			return err
		}
	}
	if t.Alg == "" {
		return malformed("header alg is not HS256, HS384 or HS512")
	}
	if t.Kid == "" {
		return malformed("header has no kid")
	}
	return nil
}

// setAlg stores one of the accepted algs as a constant, saving an allocation.
func (t *Token) setAlg(v []byte) error {
	for _, alg := range []string{"HS256", "HS384", "HS512"} {
		if len(v) == len(alg)+2 && string(v[1:len(v)-1]) == alg && v[0] == '"' {
			t.Alg = alg
			return nil
		}
	}
	return malformed("header alg is not HS256, HS384 or HS512")
}

func (t *Token) parsePayload(seg []byte) error {
	var buf [1024]byte
	it, err := decodeObject(seg, buf[:], "payload")
	if err != nil {
		return err
	}
	var hasIat, hasExp bool
	for name, v, ok := it.next(); ok; name, v, ok = it.next() {
		switch string(name) {
		case "iss":
			t.Iss, err = jsonString(v, "payload iss")
		case "sub":
			t.Sub, err = jsonString(v, "payload sub")
		case "jti":
			t.Jti, err = jsonString(v, "payload jti")
		case "scope":
			t.Scope, err = jsonString(v, "payload scope")
		case "cap":
			t.Cap, err = jsonBool(v, "payload cap")
		case "iat":
			t.Iat, err = jsonNumber(v, "payload iat")
			hasIat = true
		case "exp":
			t.Exp, err = jsonNumber(v, "payload exp")
			hasExp = true
		case "nbf":
			t.Nbf, err = jsonNumber(v, "payload nbf")
		}
		if err != nil {
			return err
		}
	}
	switch {
	case t.Iss == "":
		return malformed("payload has no iss")
	case !hasIat:
		return malformed("payload has no iat")
	case t.Sub == "" && !t.Cap:
		return malformed("payload has no sub and is not a capability (cap)")
	case hasExp && t.Exp <= 0:
		// 0 means "no exp" in Token; an explicit exp <= 0 is never valid.
		return malformed("payload exp is not a positive time")
	}
	return nil
}

// decodeObject decodes a base64url segment holding a JSON object into buf
// (or a new buffer if buf is too small) and returns an iterator over its
// members.
func decodeObject(seg, buf []byte, part string) (members, error) {
	if n := base64.RawURLEncoding.DecodedLen(len(seg)); n > len(buf) {
		buf = make([]byte, n)
	}
	n, err := base64.RawURLEncoding.Decode(buf, seg)
	if err != nil {
		return members{}, malformed(part + " is not base64url")
	}
	data := buf[:n]
	i := skipSpace(data, 0)
	if !json.Valid(data) || data[i] != '{' {
		return members{}, malformed(part + " is not a JSON object")
	}
	return members{data: data, i: i + 1}, nil
}

// members walks the members of a JSON object that json.Valid accepted, so
// it only has to find boundaries. Names are compared exactly, as HTCondor
// does: encoding/json's struct decoding would also take "ISS" for iss. A
// repeated name is seen twice; the last one wins, as in HTCondor.
type members struct {
	data []byte
	i    int // just after '{' or after the previous member
}

// next returns the decoded name and the raw value of the next member.
func (m *members) next() (name, value []byte, ok bool) {
	d := m.data
	i := skipSpace(d, m.i)
	if d[i] == ',' {
		i = skipSpace(d, i+1)
	}
	if d[i] == '}' {
		return nil, nil, false
	}
	end := skipString(d, i)
	name = d[i+1 : end-1]
	if bytes.IndexByte(name, '\\') >= 0 {
		var s string
		_ = json.Unmarshal(bytes.Clone(d[i:end]), &s) // a valid JSON string
		name = []byte(s)
	}
	i = skipSpace(d, skipSpace(d, end)+1) // past the ':'
	end = skipValue(d, i)
	m.i = end
	return name, d[i:end], true
}

func skipSpace(d []byte, i int) int {
	for i < len(d) && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the end of the JSON string that starts at i.
func skipString(d []byte, i int) int {
	for i++; d[i] != '"'; i++ {
		if d[i] == '\\' {
			i++
		}
	}
	return i + 1
}

// skipValue returns the end of the JSON value that starts at i.
func skipValue(d []byte, i int) int {
	switch d[i] {
	case '"':
		return skipString(d, i)
	case '{', '[':
		for depth := 0; ; i++ {
			switch d[i] {
			case '"':
				i = skipString(d, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	}
	for i < len(d) && bytes.IndexByte([]byte(",}] \t\n\r"), d[i]) < 0 {
		i++
	}
	return i
}

// jsonString returns a JSON string value.
func jsonString(v []byte, what string) (string, error) {
	if len(v) < 2 || v[0] != '"' {
		return "", malformed(what + " is not a string")
	}
	// Fast paths for plain values and for HTCondor's "\/"; other escapes go
	// to encoding/json.
	if inner := v[1 : len(v)-1]; utf8.Valid(inner) {
		if bytes.IndexByte(inner, '\\') < 0 {
			return string(inner), nil
		}
		if s, ok := unescapeSlashes(inner); ok {
			return s, nil
		}
	}
	var s string
	if err := json.Unmarshal(bytes.Clone(v), &s); err != nil {
		return "", malformed(what + " is not a string")
	}
	return s, nil
}

// unescapeSlashes decodes a JSON string body whose only escape is "\/".
func unescapeSlashes(inner []byte) (string, bool) {
	var b strings.Builder
	b.Grow(len(inner))
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		if c == '\\' {
			if i+1 == len(inner) || inner[i+1] != '/' {
				return "", false
			}
			i++
			c = '/'
		}
		b.WriteByte(c)
	}
	return b.String(), true
}

// jsonNumber returns a JSON number as whole seconds; floats are truncated.
func jsonNumber(v []byte, what string) (int64, error) {
	if len(v) == 0 || v[0] != '-' && (v[0] < '0' || v[0] > '9') {
		return 0, malformed(what + " is not a number")
	}
	if n, err := strconv.ParseInt(string(v), 10, 64); err == nil {
		return n, nil
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil || f < -(1<<63) || f >= 1<<63 {
		return 0, malformed(what + " is not a number in range")
	}
	return int64(f), nil
}

func jsonBool(v []byte, what string) (bool, error) {
	switch string(v) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, malformed(what + " is not a boolean")
}
