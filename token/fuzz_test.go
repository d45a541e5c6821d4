package token

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"unicode/utf8"
)

// seeds adds the vectors and a few shapes around them to f's corpus.
func seeds(f *testing.F, file bool) {
	for _, c := range loadVectors(f).Cases {
		raw := c.Token
		f.Add([]byte(raw))
		f.Add([]byte(raw[:len(raw)-3]))
		if file {
			f.Add([]byte("# c\r\n" + raw + "\n\n" + raw[:40]))
			f.Add([]byte(raw + "\n" + raw + "\x00x"))
		}
	}
	f.Add([]byte(""))
	f.Add(craft(hdr256, `{"iat":1.5,"iss":"a\u0041","ISS":1,"sub":"\/","n":[{"x":"]}"}]}`, 43))
}

func FuzzParse(f *testing.F) {
	seeds(f, false)
	f.Fuzz(func(t *testing.T, raw []byte) {
		tok, err := Parse(raw)
		if err != nil {
			if tok != nil || ReasonOf(err) != Malformed {
				t.Fatalf("token %v with error %v", tok, err)
			}
			return
		}
		if sigLen(tok.Alg) == 0 || tok.Kid == "" || tok.Iss == "" || tok.Sub == "" && !tok.Cap {
			t.Fatalf("accepted %+v", tok)
		}
		if st, err := CheckDraft(raw); st != DraftComplete {
			t.Fatalf("parsed token is a %v draft: %v", st, err)
		}
	})
}

func FuzzParseFile(f *testing.F) {
	seeds(f, true)
	f.Fuzz(func(t *testing.T, content []byte) {
		lines, err := ParseFile(content)
		if err != nil {
			return
		}
		last := 0
		for _, l := range lines {
			if l.Start < last || l.End < l.Start || l.End > len(content) {
				t.Fatalf("bad range %d..%d after %d", l.Start, l.End, last)
			}
			last = l.End
			text := content[l.Start:l.End]
			switch l.Kind {
			case Blank:
				if len(text) != 0 {
					t.Fatalf("blank line %q", text)
				}
			case Comment:
				if text[0] != '#' {
					t.Fatalf("comment %q", text)
				}
			case TokenLine:
				if _, err := Parse(text); err != nil || l.Token == nil {
					t.Fatalf("token line does not parse: %v", err)
				}
			}
		}
	})
}

func FuzzCheckDraft(f *testing.F) {
	seeds(f, true)
	f.Fuzz(func(t *testing.T, content []byte) {
		st, err := CheckDraft(content)
		switch st {
		case DraftComplete:
			lines, perr := ParseFile(content)
			if err != nil || perr != nil {
				t.Fatalf("complete draft: %v, ParseFile: %v", err, perr)
			}
			if !slices.ContainsFunc(lines, func(l Line) bool { return l.Kind == TokenLine }) {
				t.Fatal("complete draft without a token")
			}
		case DraftPending:
			if err != nil {
				t.Fatalf("pending with error %v", err)
			}
		case DraftBad:
			if err == nil {
				t.Fatal("bad without error")
			}
			// Bad is final: no appended bytes make it good.
			for _, more := range []string{"\n", "A", ".", "# x\n"} {
				if st, _ := CheckDraft(append(bytes.Clone(content), more...)); st != DraftBad {
					t.Fatalf("bad draft + %q is %v", more, st)
				}
			}
		default:
			t.Fatalf("state %v", st)
		}
	})
}

// FuzzMembers checks the hand-written JSON member walk against
// encoding/json on valid objects.
func FuzzMembers(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":"x\"}","c":{"d":[1,{"e":"]"}]}, "a" : true }`))
	f.Add([]byte(` { } `))
	f.Add([]byte(`{"\u0061":null,"b\\":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var want map[string]json.RawMessage
		if json.Unmarshal(data, &want) != nil || want == nil || !utf8.Valid(data) {
			return
		}
		it := members{data: data, i: bytes.IndexByte(data, '{') + 1}
		got := map[string]json.RawMessage{}
		for name, v, ok := it.next(); ok; name, v, ok = it.next() {
			got[string(name)] = v
		}
		if len(got) != len(want) {
			t.Fatalf("got %d members, want %d", len(got), len(want))
		}
		for k, v := range want {
			if !bytes.Equal(got[k], v) {
				t.Fatalf("member %q: got %s, want %s", k, got[k], v)
			}
		}
	})
}
