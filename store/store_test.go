package store

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	if !s.Hide(infos[0].ID, token.RotatedKey, 0) {
		t.Fatal("Hide did not find the token")
	}
	if got := content(t, s, "f"); got != "# keep me\n"+string(b)+"\n" {
		t.Fatalf("after hiding the first token: %q", got)
	}
	// What is left is a new inode; the old one is gone at once.
	attr2, _ := s.Lookup("f")
	if attr2.Ino <= attr.Ino {
		t.Fatalf("after a hide the file has inode %d, want a new one above %d", attr2.Ino, attr.Ino)
	}
	if _, ok := s.Exists(attr.Ino); ok {
		t.Fatalf("the inode %d the hidden token was in still exists", attr.Ino)
	}
	if got, want := rec.take(), []Change{{Kind: Removed, Name: "f", Ino: attr.Ino}, {Kind: Added, Name: "f", Ino: attr2.Ino}}; !slices.Equal(got, want) {
		t.Fatalf("events: %v, want %v", got, want)
	}
	if s.Hide(infos[0].ID, token.RotatedKey, 0) {
		t.Fatal("hid a token twice")
	}
	// Hiding the last token hides the file, which keeps its inode for a
	// writer it may have.
	s.Hide(infos[1].ID, token.Expired, 0)
	if _, ok := s.Lookup("f"); ok {
		t.Fatal("a file with every token hidden is still visible")
	}
	if _, ok := s.Exists(attr2.Ino); !ok {
		t.Fatal("a file with every token hidden lost its inode")
	}
	if got := rec.take(); !slices.Equal(got, []Change{{Kind: Removed, Name: "f", Ino: attr2.Ino}}) {
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
			s.Hide(in.ID, token.Expired, 0)
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

// A reader that has a file open reads one inode, page by page (ReadAt).
// Neither Put nor Hide may change what that inode holds: the reader gets the
// rest of what it started, or an error, never the start of one version and
// the end of another (see the package doc).
func TestChangesNeverEditAnOpenInode(t *testing.T) {
	a, b, c := tok(t, "a@x", time.Hour), tok(t, "b@x", time.Hour), tok(t, "c@x", time.Hour)
	for _, change := range []struct {
		what string
		do   func(*Store)
	}{
		{"Put", func(s *Store) { s.Put("f", lines(c), nil) }},
		{"Hide", func(s *Store) { s.Hide(s.Infos()[0].ID, token.Expired, 0) }},
	} {
		s := New(Limits{})
		before := lines(a, b)
		attr, err := s.Put("f", before, nil)
		if err != nil {
			t.Fatal(err)
		}
		start := make([]byte, len(a)/2)
		if n, err := s.ReadAt(attr.Ino, start, 0); err != nil || n != len(start) {
			t.Fatalf("%s: first read: %d bytes, %v", change.what, n, err)
		}
		change.do(s)
		rest := make([]byte, len(before))
		if n, err := s.ReadAt(attr.Ino, rest, int64(len(start))); err == nil {
			t.Errorf("%s: the reader of inode %d read on after the change (%q), want ErrNotFound", change.what, attr.Ino, rest[:n])
		}
		if _, _, ok := s.Stat(attr.Ino); ok {
			t.Errorf("%s: inode %d can still be stat'ed after the change", change.what, attr.Ino)
		}
		if now, ok := s.Lookup("f"); !ok || now.Ino == attr.Ino {
			t.Errorf("%s: the name has inode %d (shown %v), want a new one", change.what, now.Ino, ok)
		}
	}
}

// Readers race Puts and Hides: whatever a reader reads whole from one inode
// is what that inode held when the reader started.
func TestReadersNeverSeeAMix(t *testing.T) {
	s := New(Limits{})
	var pool [][]byte
	for i := range 8 {
		pool = append(pool, tok(t, strings.Repeat("u", 1+5*i)+"@x", time.Hour))
	}
	var (
		mu    sync.Mutex
		first = map[uint64]string{} // inode -> the content it was given
		done  = make(chan struct{})
		wg    sync.WaitGroup
	)
	record := func(name string) {
		a, ok := s.Lookup(name)
		if !ok {
			return
		}
		b, err := s.Content(a.Ino)
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		if _, seen := first[a.Ino]; !seen {
			first[a.Ino] = string(b.Bytes())
		}
		mu.Unlock()
		b.Wipe()
	}
	wg.Go(func() { // the agent: refreshes and hides
		defer close(done)
		for i := range 3000 {
			name := []string{"f", "g"}[i%2]
			if i%3 == 0 {
				for _, in := range s.Infos() {
					if in.Name == name && !in.Hidden {
						s.Hide(in.ID, token.Expired, 0)
						break
					}
				}
			} else {
				n := 1 + i%4
				s.Put(name, lines(slices.Repeat([][]byte{pool[i%len(pool)]}, n)...), nil)
			}
			record(name)
		}
	})
	var whole, failed atomic.Int64
	for range 3 {
		wg.Go(func() { // a tool reading page by page
			buf := make([]byte, 4096)
			for {
				select {
				case <-done:
					return
				default:
				}
				name := []string{"f", "g"}[rand.IntN(2)]
				a, ok := s.Lookup(name)
				mu.Lock()
				want, known := first[a.Ino]
				mu.Unlock()
				if !ok || !known {
					continue
				}
				var got []byte
				for {
					n, err := s.ReadAt(a.Ino, buf[:7], int64(len(got)))
					if err != nil {
						failed.Add(1)
						got = nil
						break
					}
					if n == 0 {
						break
					}
					got = append(got, buf[:n]...)
					runtime.Gosched()
				}
				if got == nil {
					continue
				}
				whole.Add(1)
				if string(got) != want {
					t.Errorf("inode %d read whole as %d bytes that are not the %d bytes it was given: it was edited in place", a.Ino, len(got), len(want))
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d whole reads, %d ended by a change", whole.Load(), failed.Load())
	if whole.Load() < 100 || failed.Load() == 0 {
		t.Fatalf("the race was not run: %d whole reads, %d ended by a change", whole.Load(), failed.Load())
	}
}

func TestMissing(t *testing.T) {
	s := New(Limits{})
	a, _ := s.Put("a", lines(tok(t, "a@x", time.Hour)), nil)
	b, _ := s.Put("b", lines(tok(t, "b@x", time.Hour)), nil)
	hidden, _ := s.Put("h", lines(tok(t, "h@x", time.Hour)), func(*token.Token) token.Reason { return token.Expired })
	s.Remove("b")
	got := s.Missing([]uint64{a.Ino, b.Ino, hidden.Ino, 999})
	if want := []uint64{b.Ino, 999}; !slices.Equal(got, want) {
		t.Fatalf("Missing = %v, want %v (a file not shown is not missing)", got, want)
	}
}
