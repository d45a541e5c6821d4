package token

import (
	"errors"
	"strings"
	"testing"
)

func TestParseFile(t *testing.T) {
	a := string(vector(t, "pool-plain"))
	b := string(vector(t, "named-ap"))
	type want struct {
		kind LineKind
		text string // content[Start:End]
	}
	tests := []struct {
		name    string
		content string
		want    []want
	}{
		{"empty", "", nil},
		{"one token, newline", a + "\n", []want{{TokenLine, a}}},
		{"one token, no newline", a, []want{{TokenLine, a}}},
		{"several tokens", a + "\n" + b + "\n", []want{{TokenLine, a}, {TokenLine, b}}},
		{"comments and blanks", "# mine\n\n" + a + "\n  \n#" + b + "\n",
			[]want{{Comment, "# mine"}, {Blank, ""}, {TokenLine, a}, {Blank, ""}, {Comment, "#" + b}}},
		{"CRLF", a + "\r\n" + b + "\r\n", []want{{TokenLine, a}, {TokenLine, b}}},
		{"spaces around", "  \t" + a + " \t\n", []want{{TokenLine, a}}},
		{"NUL stops parsing", a + "\n\x00garbage\n", []want{{TokenLine, a}}},
		{"NUL ends a line", a + "\x00garbage", []want{{TokenLine, a}}},
		{"lone newline", "\n", []want{{Blank, ""}}},
		{"trailing blank", a + "\n \r", []want{{TokenLine, a}, {Blank, ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines, err := ParseFile([]byte(tt.content))
			if err != nil {
				t.Fatal(err)
			}
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d lines, want %d: %+v", len(lines), len(tt.want), lines)
			}
			for i, l := range lines {
				if l.Kind != tt.want[i].kind || tt.content[l.Start:l.End] != tt.want[i].text {
					t.Errorf("line %d: got %v %q", i+1, l.Kind, tt.content[l.Start:l.End])
				}
				if (l.Kind == TokenLine) != (l.Token != nil) {
					t.Errorf("line %d: kind %v with token %v", i+1, l.Kind, l.Token)
				}
			}
		})
	}
}

func TestParseFileErrors(t *testing.T) {
	a := string(vector(t, "pool-plain"))
	truncated := a[:len(a)-1]
	tests := []struct {
		name    string
		content string
		line    string
	}{
		{"garbage", "hello\n", "line 1:"},
		{"truncated third line", a + "\n#c\n" + truncated + "\n", "line 3:"},
		{"truncated without newline", a + "\n" + truncated, "line 2:"},
		{"two tokens on a line", a + " " + a + "\n", "line 1:"},
		{"bad line before NUL", "# ok\nbad\x00" + a, "line 2:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines, err := ParseFile([]byte(tt.content))
			if err == nil {
				t.Fatalf("ParseFile succeeded: %+v", lines)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.HasPrefix(err.Error(), tt.line) {
				t.Errorf("error %q does not start with %q", err, tt.line)
			}
			assertNoSecret(t, err.Error(), []byte(a))
		})
	}
}
