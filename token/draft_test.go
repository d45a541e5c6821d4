package token

import (
	"errors"
	"testing"
)

func TestCheckDraft(t *testing.T) {
	a := string(vector(t, "pool-plain"))
	b := string(vector(t, "pool-scoped"))
	dot1 := len("eyJhbGciOiJIUzI1NiIsImtpZCI6IlBPT0wifQ")
	tests := []struct {
		name    string
		content string
		want    DraftState
	}{
		{"empty", "", DraftPending},
		{"half a token", a[:len(a)/2], DraftPending},
		{"header only", a[:dot1], DraftPending},
		{"header and dot", a[:dot1+1], DraftPending},
		{"all but last signature char", a[:len(a)-1], DraftPending},
		{"full token, no newline", a, DraftComplete},
		{"full token, newline", a + "\n", DraftComplete},
		{"full token, CRLF", a + "\r\n", DraftComplete},
		{"leading spaces", "  " + a[:10], DraftPending},
		{"hello", "hello", DraftPending},
		// No token yet: a rewrite that has only begun.
		{"comment only", "# note", DraftPending},
		{"comment line", "# note\n", DraftPending},
		{"blank lines", "\n\n  \n", DraftPending},
		{"two tokens, second truncated", a + "\n" + b[:len(b)-5], DraftPending},
		{"two tokens", a + "\n" + b + "\n", DraftComplete},
		{"token then comment without newline", a + "\n# x", DraftComplete},

		{"garbage line", "hello\n", DraftBad},
		{"truncated token line", a[:len(a)-1] + "\n", DraftBad},
		{"hello world", "hello world", DraftBad},
		{"NUL", a + "\n\x00", DraftBad},
		{"NUL in prefix", "eyJ\x00", DraftBad},
		{"four segments", a + ".", DraftBad},
		{"signature too long", a + "A", DraftBad},
		{"bad header segment", "bm90IGpzb24.eyJ", DraftBad},
		{"bad payload segment", a[:dot1] + ".bm90IGpzb24.", DraftBad},
		{"padding", a[:dot1] + "=", DraftBad},
		{"good line then garbage", a + "\n" + "%", DraftBad},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CheckDraft([]byte(tt.content))
			if got != tt.want {
				t.Fatalf("CheckDraft = %v (%v), want %v", got, err, tt.want)
			}
			if (got == DraftBad) != (err != nil) {
				t.Fatalf("state %v with error %v", got, err)
			}
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Errorf("error %v does not wrap ErrMalformed", err)
				}
				assertNoSecret(t, err.Error(), []byte(a))
			}
			if got == DraftComplete {
				if _, err := ParseFile([]byte(tt.content)); err != nil {
					t.Errorf("complete draft does not parse: %v", err)
				}
			}
		})
	}
}

// TestCheckDraftByteByByte writes a file one byte at a time, as a slow
// writer would: every prefix is pending or complete, never bad.
func TestCheckDraftByteByByte(t *testing.T) {
	content := "# tokens\r\n" + string(vector(t, "pool-plain")) + "\n" + string(vector(t, "named-ap")) + "\n"
	for i := range len(content) + 1 {
		if got, err := CheckDraft([]byte(content[:i])); got == DraftBad {
			t.Fatalf("prefix of %d bytes is bad: %v", i, err)
		}
	}
}
