// Package logsafe makes text that someone else controls safe to put in a
// log line: the output of a fetch command, what a user's agent answers,
// a user's own log file read back by the root hook.
package logsafe

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Max is the most bytes Text returns.
const Max = 512

// Text returns s on one line and at most Max bytes long: control
// characters (newlines, escape sequences, Unicode line separators and
// bidirectional overrides) are written as Go escapes (\n, \x1b, \u2028),
// bytes that are not UTF-8 as \xNN, and a longer result is cut at a
// character boundary and ends with "…[+N bytes]". Backslashes are left as
// they are, so that escaping twice changes nothing: the result is for
// people to read, not to decode.
func Text(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80 && unicode.IsControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case unicode.IsControl(r) || unicode.In(r, unicode.Zl, unicode.Zp, unicode.Bidi_Control, unicode.Cf):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	out := b.String()
	if len(out) <= Max {
		return out
	}
	return cut(out)
}

// cut shortens an escaped text to at most Max bytes, the last of them
// saying how many were left out.
func cut(s string) string {
	// The count left out is below len(s): a marker for len(s) is as long
	// as it can get.
	keep := Max - len(marker(len(s)))
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	return s[:keep] + marker(len(s)-keep)
}

func marker(n int) string { return fmt.Sprintf("…[+%d bytes]", n) }
