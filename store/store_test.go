package store

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/token"
)

var key = bytes.Repeat([]byte{1}, 32)

func tok(t *testing.T, sub string, life time.Duration) []byte {
	t.Helper()
	b, err := token.Sign(token.Claims{Issuer: "example.org", Subject: sub, Lifetime: life, IssuedAt: time.Now()}, "POOL", key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func lines(parts ...[]byte) []byte { return append(bytes.Join(parts, []byte("\n")), '\n') }

type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) add(c Change) { r.mu.Lock(); r.changes = append(r.changes, c); r.mu.Unlock() }

func (r *recorder) take() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.changes
	r.changes = nil
	return c
}

func content(t *testing.T, s *Store, name string) string {
	t.Helper()
	a, ok := s.Lookup(name)
	if !ok {
		return ""
	}
	b, err := s.Content(a.Ino)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Wipe()
	return string(b.Bytes())
}

func TestPutReplaceAndEvents(t *testing.T) {
	s := New(Limits{})
	var rec recorder
	s.OnChange(rec.add)
	a, b := tok(t, "a@x", time.Hour), tok(t, "b@x", time.Hour)

	attr, err := s.Put("f", lines(a), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); !slices.Equal(got, []Change{{Kind: Added, Name: "f", Ino: attr.Ino}}) {
		t.Fatalf("events after create: %v", got)
	}
	attr2, err := s.Put("f", lines([]byte("# comment"), b), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Put replaces the file as a rename over it would: a new inode.
	if attr2.Ino == attr.Ino {
		t.Fatalf("Put over a file kept its inode %d", attr.Ino)
	}
	if got := rec.take(); !slices.Equal(got, []Change{{Kind: Replaced, Name: "f", Ino: attr2.Ino, Old: attr.Ino}}) {
		t.Fatalf("events after replace: %v", got)
	}
	// Replace (the filesystem's writer) keeps the inode.
	attr3, err := s.Replace(attr2.Ino, lines([]byte("# comment"), b), nil)
	if err != nil || attr3.Ino != attr2.Ino {
		t.Fatalf("Replace: inode %d -> %d, %v", attr2.Ino, attr3.Ino, err)
	}
	if attr3.Mtime.Before(attr2.Mtime.Add(time.Second)) {
		t.Fatalf("mtime moved from %v to %v: want at least a second (HTCondor compares whole seconds)", attr2.Mtime, attr3.Mtime)
	}
	if got := rec.take(); !slices.Equal(got, []Change{{Kind: Modified, Name: "f", Ino: attr2.Ino}}) {
		t.Fatalf("events after Replace: %v", got)
	}
	if got := content(t, s, "f"); got != "# comment\n"+string(b)+"\n" {
		t.Fatalf("content %q", got)
	}
	// Bad content changes nothing.
	for _, bad := range [][]byte{[]byte("garbage\n"), append(lines(a), 0), bytes.Repeat([]byte("#"), 70000)} {
		if _, err := s.Put("f", bad, nil); err == nil {
			t.Fatalf("Put accepted %q...", bad[:min(len(bad), 20)])
		}
	}
	if got := content(t, s, "f"); got != "# comment\n"+string(b)+"\n" {
		t.Fatalf("a refused Put changed the content: %q", got)
	}
	if len(rec.take()) != 0 {
		t.Fatal("a refused Put sent events")
	}
}

func TestHideCutsLineAndKeepsWhy(t *testing.T) {
	s := New(Limits{})
	var rec recorder
	s.OnChange(rec.add)
	a, b := tok(t, "a@x", time.Hour), tok(t, "b@x", time.Hour)
	attr, _ := s.Put("f", []byte("  "+string(a)+"\r\n# keep me\n"+string(b)+"\n"), nil)
	rec.take()

	infos := s.Infos()
	if len(infos) != 2 {
		t.Fatalf("infos %v", infos)
	}
	if !s.Hide(infos[0].ID, token.RotatedKey) {
		t.Fatal("Hide did not find the token")
	}
	if got := content(t, s, "f"); got != "# keep me\n"+string(b)+"\n" {
		t.Fatalf("after hiding the first token: %q", got)
	}
	if got := rec.take(); !slices.Equal(got, []Change{{Kind: Modified, Name: "f", Ino: attr.Ino}}) {
		t.Fatalf("events: %v", got)
	}
	if s.Hide(infos[0].ID, token.RotatedKey) {
		t.Fatal("hid a token twice")
	}
	// Hiding the last token hides the file.
	s.Hide(infos[1].ID, token.Expired)
	if _, ok := s.Lookup("f"); ok {
		t.Fatal("a file with every token hidden is still visible")
	}
	if got := rec.take(); !slices.Equal(got, []Change{{Kind: Removed, Name: "f", Ino: attr.Ino}}) {
		t.Fatalf("events: %v", got)
	}
	infos = s.Infos()
	if len(infos) != 2 || !infos[0].Hidden || infos[0].Reason != token.RotatedKey || infos[1].Reason != token.Expired {
		t.Fatalf("hidden infos %+v", infos)
	}
	// The name can be used again; the history stays.
	if _, err := s.Put("f", lines(tok(t, "c@x", time.Hour)), nil); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Infos()); n != 3 {
		t.Fatalf("infos after reuse: %d", n)
	}
	if c, err := s.Create("f"); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over a visible file: %v %v", c, err)
	}
}

func TestQuickCheckHidesAtPut(t *testing.T) {
	s := New(Limits{})
	expired := func(tk *token.Token) token.Reason {
		if tk.Sub == "old@x" {
			return token.Expired
		}
		return token.Valid
	}
	if _, err := s.Put("f", lines(tok(t, "old@x", time.Hour), tok(t, "new@x", time.Hour)), expired); err != nil {
		t.Fatal(err)
	}
	got := content(t, s, "f")
	if strings.Count(got, "\n") != 1 {
		t.Fatalf("the expired token was not cut: %q", got)
	}
	if _, err := s.Put("g", lines(tok(t, "old@x", time.Hour)), expired); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Lookup("g"); ok {
		t.Fatal("a file holding only an expired token is visible")
	}
}

func TestLimitsAndNames(t *testing.T) {
	s := New(Limits{MaxFiles: 2, MaxNameLen: 8})
	a := lines(tok(t, "a@x", time.Hour))
	for _, c := range []struct {
		name string
		want error
	}{
		{"", ErrBadName}, {".", ErrBadName}, {"..", ErrBadName}, {"a/b", ErrBadName}, {"a\x00", ErrBadName},
		{"123456789", ErrNameTooLong},
	} {
		if _, err := s.Put(c.name, a, nil); !errors.Is(err, c.want) {
			t.Errorf("Put(%q): %v, want %v", c.name, err, c.want)
		}
	}
	s.Put("one", a, nil)
	s.Put("two", a, nil)
	if _, err := s.Put("three", a, nil); !errors.Is(err, ErrTooMany) {
		t.Fatalf("third file: %v", err)
	}
	// An invisible file makes room.
	for _, in := range s.Infos() {
		if in.Name == "two" {
			s.Hide(in.ID, token.Expired)
		}
	}
	if _, err := s.Put("three", a, nil); err != nil {
		t.Fatalf("third file after hiding one: %v", err)
	}
}

func TestRenameRemoveWipe(t *testing.T) {
	s := New(Limits{})
	var rec recorder
	s.OnChange(rec.add)
	a, b := lines(tok(t, "a@x", time.Hour)), lines(tok(t, "b@x", time.Hour))
	s.Put("a", a, nil)
	s.Put("b", b, nil)
	aa, _ := s.Lookup("a")
	ab, _ := s.Lookup("b")
	rec.take()
	if err := s.Rename("a", "b", true); !errors.Is(err, ErrExists) {
		t.Fatalf("noreplace: %v", err)
	}
	if err := s.Rename("a", "b", false); err != nil {
		t.Fatal(err)
	}
	want := []Change{{Kind: Removed, Name: "b", Ino: ab.Ino}, {Kind: Removed, Name: "a", Ino: aa.Ino}, {Kind: Added, Name: "b", Ino: aa.Ino}}
	if got := rec.take(); !slices.Equal(got, want) {
		t.Fatalf("rename events %v, want %v", got, want)
	}
	if got := content(t, s, "b"); got != string(a) {
		t.Fatal("rename did not move the content")
	}
	if err := s.Remove("b"); err != nil || s.Len() != 0 {
		t.Fatalf("remove: %v, %d left", err, s.Len())
	}
	if err := s.Remove("b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}
	s.Put("c", a, nil)
	s.Close()
	if s.Len() != 0 || len(s.Infos()) != 0 {
		t.Fatal("Close left tokens")
	}
	if _, err := s.Put("d", a, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close: %v", err)
	}
}

func TestCandidatesAreCopies(t *testing.T) {
	s := New(Limits{})
	a := tok(t, "a@x", time.Hour)
	s.Put("f", lines(a), nil)
	cands, err := s.Candidates()
	if err != nil || len(cands) != 1 {
		t.Fatalf("%v %v", cands, err)
	}
	if !bytes.Equal(cands[0].Raw.Bytes(), a) {
		t.Fatalf("raw %q", cands[0].Raw.Bytes())
	}
	s.Wipe()
	if !bytes.Equal(cands[0].Raw.Bytes(), a) {
		t.Fatal("a candidate shares memory with the store")
	}
	cands[0].Raw.Wipe()
}

func TestInfoNeverHoldsTheToken(t *testing.T) {
	s := New(Limits{})
	a := tok(t, "a@x", time.Hour)
	s.Put("f", lines(a), nil)
	for _, in := range s.Infos() {
		if strings.Contains(strings.Join([]string{in.Name, in.Token.Sub, in.Token.Iss, in.Token.Jti, in.Token.Kid}, " "), string(a[strings.LastIndexByte(string(a), '.')+1:])) {
			t.Fatal("info holds the signature")
		}
	}
}
