package token

import (
	"bytes"
	"fmt"
)

// LineKind is what one line of a token file holds.
type LineKind int

// Line kinds.
const (
	Blank LineKind = iota
	Comment
	TokenLine
)

func (k LineKind) String() string {
	switch k {
	case Blank:
		return "blank"
	case Comment:
		return "comment"
	case TokenLine:
		return "token"
	}
	return fmt.Sprintf("LineKind(%d)", int(k))
}

// Line is one line of a token file.
type Line struct {
	Kind LineKind
	// Start and End are the byte range [Start,End) of the trimmed line in
	// the content; for a TokenLine exactly the token.
	Start, End int
	Token      *Token // for TokenLine
}

// ParseFile parses the content of one token file the way HTCondor reads it
// (findToken): content ends at the first NUL; it is split on '\n'; each line
// is trimmed of whitespace (so CRLF is fine); blank lines and lines starting
// with '#' are kept as Blank and Comment; every other line must [Parse].
// A final '\n' does not start another line.
//
// The first bad line fails the whole file with an error that wraps
// [ErrMalformed] and names the 1-based line number, never the content.
func ParseFile(content []byte) ([]Line, error) {
	if i := bytes.IndexByte(content, 0); i >= 0 {
		content = content[:i]
	}
	var lines []Line
	for pos, n := 0, 1; pos < len(content); n++ {
		start, end, next, _ := nextLine(content, pos)
		kind, tok, err := classify(content[start:end])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		lines = append(lines, Line{Kind: kind, Start: start, End: end, Token: tok})
		pos = next
	}
	return lines, nil
}

// nextLine finds the line that starts at pos: its trimmed range
// [start,end), where the next line starts, and whether a '\n' ended it.
func nextLine(content []byte, pos int) (start, end, next int, terminated bool) {
	end, next = len(content), len(content)
	if i := bytes.IndexByte(content[pos:], '\n'); i >= 0 {
		end, next, terminated = pos+i, pos+i+1, true
	}
	start = pos
	for start < end && isSpace(content[start]) {
		start++
	}
	for end > start && isSpace(content[end-1]) {
		end--
	}
	return start, end, next, terminated
}

// isSpace matches C's isspace in the "C" locale, which HTCondor's trim uses.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// classify parses one trimmed line.
func classify(line []byte) (LineKind, *Token, error) {
	switch {
	case len(line) == 0:
		return Blank, nil, nil
	case line[0] == '#':
		return Comment, nil, nil
	}
	t, err := Parse(line)
	if err != nil {
		return 0, nil, err
	}
	return TokenLine, t, nil
}
