package logsafe

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestText(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, ünïcode ✓":           "plain text, ünïcode ✓",
		"line\nfake: tokend session open": `line\nfake: tokend session open`,
		"cr\rtab\tesc\x1b[31mred\x7f":     `cr\rtab\tesc\x1b[31mred\x7f`,
		"bad \xff\xfe utf8":               `bad \xff\xfe utf8`,
		"c1 \u0085 ls \u2028 ps \u2029":   `c1 \u0085 ls \u2028 ps \u2029`,
		"rlo \u202e evil \u2066":          `rlo \u202e evil \u2066`,
		"hid\u200bden\ufeff\U000e0041":    `hid\u200bden\ufeff\ue0041`,
		`a backslash \n stays as it is`:   `a backslash \n stays as it is`,
		"":                                "",
	} {
		if got := Text(in); got != want {
			t.Errorf("Text(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTextBounded(t *testing.T) {
	for _, in := range []string{
		strings.Repeat("a", 10000),
		strings.Repeat("\n", 10000),
		strings.Repeat("é", 10000),
		strings.Repeat("x\x00", 1<<20),
	} {
		got := Text(in)
		if len(got) > Max || !utf8.ValidString(got) || strings.ContainsAny(got, "\n\x00") {
			t.Errorf("Text of %d bytes: %d bytes, valid %v: %q", len(in), len(got), utf8.ValidString(got), got)
		}
		if !strings.Contains(got, "…[+") || !strings.HasSuffix(got, " bytes]") {
			t.Errorf("a cut text does not say so: %q", got)
		}
		if again := Text(got); again != got {
			t.Errorf("escaping twice changed the text:\n%q\n%q", got, again)
		}
	}
	exact := strings.Repeat("b", Max)
	if got := Text(exact); got != exact {
		t.Errorf("a text of exactly Max bytes was cut: %q", got)
	}
}

func FuzzText(f *testing.F) {
	f.Add("line\nnext\x1b[0m\xff")
	f.Fuzz(func(t *testing.T, s string) {
		got := Text(s)
		if len(got) > Max || !utf8.ValidString(got) {
			t.Fatalf("Text(%q) = %q", s, got)
		}
		for _, r := range got {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' {
				t.Fatalf("Text(%q) = %q holds %U", s, got, r)
			}
		}
		if Text(got) != got {
			t.Fatalf("not idempotent on %q", s)
		}
	})
}
