package token

import (
	"bytes"
	"fmt"
)

// DraftState classifies content that a writer may still be extending.
type DraftState int

// Draft states. The zero value is none of them, so a forgotten
// assignment is never taken for complete.
const (
	DraftComplete DraftState = iota + 1 // every line good: ParseFile succeeds
	DraftPending                        // the last, unterminated line may still become a token
	DraftBad                            // no more bytes can make this a good token file
)

func (s DraftState) String() string {
	switch s {
	case DraftComplete:
		return "complete"
	case DraftPending:
		return "pending"
	case DraftBad:
		return "bad"
	}
	return fmt.Sprintf("DraftState(%d)", int(s))
}

// CheckDraft classifies content being written into the token directory; the
// filesystem calls it after every write. Size limits are the caller's job.
//
//   - DraftBad, with an error wrapping [ErrMalformed], if content has a NUL
//     byte, a '\n'-terminated line that is neither blank, comment nor token,
//     or a last unterminated line that no further bytes can turn into a
//     token (a byte outside base64url and dots, more than three segments, a
//     complete header or payload segment that does not parse, a signature
//     longer than its alg allows).
//   - DraftPending if content holds no token yet (empty, or only blank and
//     comment lines: a file is not emptied of its tokens by a rewrite that
//     has only begun) or its last unterminated line is a possible token
//     prefix that does not parse yet.
//   - DraftComplete otherwise; then [ParseFile] succeeds on content and
//     finds at least one token.
//
// Once content is bad, appending never makes it good again.
func CheckDraft(content []byte) (DraftState, error) {
	if bytes.IndexByte(content, 0) >= 0 {
		return DraftBad, malformed("token file contains a NUL byte")
	}
	if len(content) == 0 {
		return DraftPending, nil
	}
	sawToken := false
	for pos, n := 0, 1; pos < len(content); n++ {
		start, end, next, terminated := nextLine(content, pos)
		line := content[start:end]
		kind, _, err := classify(line)
		sawToken = sawToken || kind == TokenLine
		if err != nil {
			if terminated {
				return DraftBad, fmt.Errorf("line %d: %w", n, err)
			}
			if err := checkPrefix(line); err != nil {
				return DraftBad, fmt.Errorf("line %d: %w", n, err)
			}
			return DraftPending, nil
		}
		pos = next
	}
	if !sawToken {
		return DraftPending, nil
	}
	return DraftComplete, nil
}

// checkPrefix returns nil if more bytes could turn line, which does not
// parse, into a token, and otherwise why not. It runs the same checks as
// Parse on every segment that is already complete.
func checkPrefix(line []byte) error {
	if err := checkAlphabet(line); err != nil {
		return err
	}
	header, rest, ok := bytes.Cut(line, []byte{'.'})
	if !ok {
		return nil
	}
	var t Token
	if err := t.parseHeader(header); err != nil {
		return err
	}
	payload, sig, ok := bytes.Cut(rest, []byte{'.'})
	if !ok {
		return nil
	}
	if bytes.IndexByte(sig, '.') >= 0 {
		return errSegments
	}
	if err := t.parsePayload(payload); err != nil {
		return err
	}
	if want := sigLen(t.Alg); len(sig) > want {
		return malformed(fmt.Sprintf("signature has %d characters, want %d for %s", len(sig), want, t.Alg))
	}
	return nil
}
