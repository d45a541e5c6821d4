package store

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// idOf returns the id of the token of name whose sub is sub.
func idOf(t *testing.T, s *Store, name, sub string) uint64 {
	t.Helper()
	for _, in := range s.Infos() {
		if in.Name == name && in.Token.Sub == sub {
			return in.ID
		}
	}
	t.Fatalf("no token %s in %q", sub, name)
	return 0
}

func info(s *Store, id uint64) (Info, bool) {
	for _, in := range s.Infos() {
		if in.ID == id {
			return in, true
		}
	}
	return Info{}, false
}

// checkLeaks fails the test if it leaves secret buffers behind.
func checkLeaks(t *testing.T) {
	before := secmem.Live()
	t.Cleanup(func() {
		if n := secmem.Live() - before; n != 0 {
			t.Errorf("%d secret buffers never wiped", n)
		}
	})
}

// A rotated-key token leaves the directory and comes back with the same
// bytes at the same place, comments and whitespace included, in any order.
func TestRestoreIsExact(t *testing.T) {
	checkLeaks(t)
	s := New(Limits{})
	defer s.Close()
	var rec recorder
	s.OnChange(rec.add)
	a, b, c := tok(t, "a@x", time.Hour), tok(t, "b@x", time.Hour), tok(t, "c@x", time.Hour)
	orig := "# pool A\n  " + string(a) + "\r\n\n" + string(b) + "\n# end\n" + string(c) // c unterminated
	attr, err := s.Put("f", []byte(orig), nil)
	if err != nil {
		t.Fatal(err)
	}
	rec.take()
	ids := []uint64{idOf(t, s, "f", "a@x"), idOf(t, s, "f", "b@x"), idOf(t, s, "f", "c@x")}
	for _, order := range [][]int{{0, 1, 2}, {2, 0, 1}, {1, 2, 0}} {
		for _, i := range []int{0, 2, 1} {
			if !s.Hide(ids[i], token.RotatedKey, 7) {
				t.Fatalf("Hide(%d) found nothing", ids[i])
			}
		}
		if _, ok := s.Lookup("f"); ok {
			t.Fatal("a file with every token hidden is shown")
		}
		if in, _ := info(s, ids[1]); !in.Hidden || !in.Remembered || in.Reason != token.RotatedKey {
			t.Fatalf("hidden token listed as %+v", in)
		}
		rs := s.Remembered()
		if len(rs) != 3 || rs[0].ID != ids[0] || rs[1].ID != ids[2] || rs[2].ID != ids[1] || rs[0].Epoch != 7 || rs[0].Name != "f" {
			t.Fatalf("Remembered = %+v, want a, c, b in hide order at epoch 7", rs)
		}
		for n, i := range order {
			var raw []byte
			if !s.WithRemembered(ids[i], func(b []byte) { raw = bytes.Clone(b) }) || !bytes.Equal(raw, [][]byte{a, b, c}[i]) {
				t.Fatalf("WithRemembered(%d) gave %q", ids[i], raw)
			}
			rec.take()
			prev, wasShown := s.Lookup("f")
			if !s.Restore(ids[i]) {
				t.Fatalf("Restore(%d) found nothing", ids[i])
			}
			now, ok := s.Lookup("f")
			if !ok || now.Ino <= max(prev.Ino, attr.Ino) {
				t.Fatalf("after a restore the file has inode %d (shown %v), want a new one", now.Ino, ok)
			}
			want := []Change{{Kind: Added, Name: "f", Ino: now.Ino}}
			if wasShown {
				want = []Change{{Kind: Replaced, Name: "f", Ino: now.Ino, Old: prev.Ino}}
			}
			if got := rec.take(); !slices.Equal(got, want) {
				t.Fatalf("restore %d events %v, want %v", n, got, want)
			}
			if in, _ := info(s, ids[i]); in.Hidden || in.Remembered || in.Reason != token.Valid {
				t.Fatalf("restored token listed as %+v", in)
			}
			if s.Restore(ids[i]) || s.Missed(ids[i], 99) || s.Forget(ids[i], token.Expired) {
				t.Fatal("a shown token was treated as remembered")
			}
		}
		if got := content(t, s, "f"); got != orig {
			t.Fatalf("after restoring in order %v:\n%q\nwant\n%q", order, got, orig)
		}
		if len(s.Remembered()) != 0 {
			t.Fatal("restored tokens are still remembered")
		}
	}
}

// Only rotated-key and not-yet-valid tokens are remembered; the others are
// zeroed at once, their reason kept.
func TestOnlyReversibleRemembered(t *testing.T) {
	checkLeaks(t)
	s := New(Limits{})
	defer s.Close()
	reasons := []token.Reason{token.RotatedKey, token.NotYetValid, token.Expired, token.Malformed, token.UntrustedIssuer, token.Revoked}
	for i, r := range reasons {
		name := string(r)
		s.Put(name, lines(tok(t, name+"@x", time.Hour)), nil)
		if !s.Hide(idOf(t, s, name, name+"@x"), r, uint64(i)) {
			t.Fatal("nothing hidden")
		}
	}
	for _, in := range s.Infos() {
		if !in.Hidden || in.Reason != token.Reason(in.Name) || in.Remembered != in.Reason.Reversible() {
			t.Errorf("%q: %+v", in.Name, in)
		}
	}
	if n := len(s.Remembered()); n != 2 {
		t.Fatalf("%d remembered, want 2", n)
	}
}

// The quick check at Put: not-yet-valid is remembered (epoch 0), others
// zeroed; unknown-key stays shown, noted.
func TestQuickCheckRemembersNotYetValid(t *testing.T) {
	checkLeaks(t)
	s := New(Limits{})
	defer s.Close()
	check := func(tk *token.Token) token.Reason {
		switch tk.Sub {
		case "soon@x":
			return token.NotYetValid
		case "old@x":
			return token.Expired
		case "other@x":
			return token.UnknownKey
		}
		return token.Valid
	}
	soon, old, other := tok(t, "soon@x", time.Hour), tok(t, "old@x", time.Hour), tok(t, "other@x", time.Hour)
	if _, err := s.Put("f", lines(soon, old, other), check); err != nil {
		t.Fatal(err)
	}
	if got := content(t, s, "f"); got != string(other)+"\n" {
		t.Fatalf("content %q", got)
	}
	in, _ := info(s, idOf(t, s, "f", "other@x"))
	if in.Hidden || in.Reason != token.UnknownKey {
		t.Fatalf("unknown-key token: %+v, want shown with its reason", in)
	}
	rs := s.Remembered()
	if len(rs) != 1 || rs[0].Token.Sub != "soon@x" || rs[0].Epoch != 0 || rs[0].Reason != token.NotYetValid {
		t.Fatalf("remembered %+v", rs)
	}
	if !s.Restore(rs[0].ID) || content(t, s, "f") != string(soon)+"\n"+string(other)+"\n" {
		t.Fatalf("restore: %q", content(t, s, "f"))
	}
}

func TestMark(t *testing.T) {
	s := New(Limits{})
	defer s.Close()
	s.Put("f", lines(tok(t, "a@x", time.Hour)), nil)
	id := idOf(t, s, "f", "a@x")
	if s.Mark(id, token.RotatedKey) {
		t.Fatal("Mark accepted a reason that hides")
	}
	if !s.Mark(id, token.UnknownKey) {
		t.Fatal("Mark of a shown token failed")
	}
	if in, _ := info(s, id); in.Hidden || in.Reason != token.UnknownKey {
		t.Fatalf("%+v", in)
	}
	if !s.Mark(id, token.Valid) {
		t.Fatal("Mark back to valid failed")
	}
	if in, _ := info(s, id); in.Reason != token.Valid {
		t.Fatalf("%+v", in)
	}
	s.Hide(id, token.RotatedKey, 0)
	if s.Mark(id, token.UnknownKey) {
		t.Fatal("Mark of a hidden token")
	}
}

// Any commit to a file zeroes its remembered tokens; a create or a refused
// write does not; they follow a rename; rm removes a name that has only
// them.
func TestCommitsZeroRemembered(t *testing.T) {
	checkLeaks(t)
	a, b := tok(t, "a@x", time.Hour), tok(t, "b@x", time.Hour)
	setup := func(t *testing.T) (*Store, uint64) {
		s := New(Limits{})
		t.Cleanup(s.Close)
		s.Put("f", lines(a, b), nil)
		id := idOf(t, s, "f", "a@x")
		s.Hide(id, token.RotatedKey, 1)
		return s, id
	}
	gone := func(t *testing.T, s *Store, id uint64) {
		t.Helper()
		if s.Restore(id) || len(s.Remembered()) != 0 {
			t.Fatal("a remembered token survived new content")
		}
		// Why it was hidden is still listed.
		found := false
		for _, in := range s.Infos() {
			if in.Token.Sub == "a@x" && in.Hidden && !in.Remembered && in.Reason == token.RotatedKey {
				found = true
			}
		}
		if !found {
			t.Fatalf("the zeroed token is not listed as hidden: %+v", s.Infos())
		}
	}
	kept := func(t *testing.T, s *Store, id uint64, name string) {
		t.Helper()
		if !s.Restore(id) {
			t.Fatal("the remembered token was lost")
		}
		if got := content(t, s, name); !strings.HasPrefix(got, string(a)+"\n") {
			t.Fatalf("restored content %q", got)
		}
	}
	t.Run("Put", func(t *testing.T) {
		s, id := setup(t)
		s.Put("f", lines(b), nil)
		gone(t, s, id)
	})
	t.Run("a writer's commit", func(t *testing.T) {
		s, id := setup(t)
		at, _ := s.Lookup("f")
		if _, err := s.Replace(at.Ino, lines(b), nil); err != nil {
			t.Fatal(err)
		}
		gone(t, s, id)
	})
	t.Run("a refused write", func(t *testing.T) {
		s, id := setup(t)
		at, _ := s.Lookup("f")
		if _, err := s.Replace(at.Ino, []byte("garbage\n"), nil); err == nil {
			t.Fatal("garbage accepted")
		}
		s.Touch(at.Ino) // what the filesystem does for a pending write
		kept(t, s, id, "f")
	})
	t.Run("create, abandoned", func(t *testing.T) {
		s, id := setup(t)
		s.Hide(idOf(t, s, "f", "b@x"), token.Expired, 0) // f is now hidden
		c, err := s.Create("f")
		if err != nil {
			t.Fatal(err)
		}
		if !s.Abandon(c.Ino) || s.Abandon(c.Ino) {
			t.Fatal("Abandon of a pending file")
		}
		kept(t, s, id, "f")
	})
	t.Run("create, committed", func(t *testing.T) {
		s, id := setup(t)
		s.Hide(idOf(t, s, "f", "b@x"), token.Expired, 0)
		c, _ := s.Create("f")
		if _, err := s.Replace(c.Ino, lines(b), nil); err != nil {
			t.Fatal(err)
		}
		gone(t, s, id)
	})
	t.Run("rename follows", func(t *testing.T) {
		s, id := setup(t)
		if err := s.Rename("f", "g", false); err != nil {
			t.Fatal(err)
		}
		if rs := s.Remembered(); len(rs) != 1 || rs[0].Name != "g" {
			t.Fatalf("remembered after rename: %+v", rs)
		}
		kept(t, s, id, "g")
	})
	t.Run("rename over", func(t *testing.T) {
		s, id := setup(t)
		s.Put("g", lines(b), nil)
		if err := s.Rename("g", "f", false); err != nil {
			t.Fatal(err)
		}
		gone(t, s, id)
	})
	t.Run("remove a name with only remembered tokens", func(t *testing.T) {
		s, id := setup(t)
		s.Hide(idOf(t, s, "f", "b@x"), token.RotatedKey, 1)
		if _, ok := s.Lookup("f"); ok {
			t.Fatal("shown")
		}
		if err := s.Remove("f"); err != nil {
			t.Fatalf("Remove of a remembered-only name: %v", err)
		}
		if s.Restore(id) || len(s.Remembered()) != 0 || len(s.Infos()) != 0 {
			t.Fatal("Remove left something")
		}
		if err := s.Remove("f"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second Remove: %v", err)
		}
	})
}

// Two key changes in which a token did not verify zero it; the same epoch
// twice counts once.
func TestMissedTwiceZeroes(t *testing.T) {
	checkLeaks(t)
	s := New(Limits{})
	defer s.Close()
	s.Put("f", lines(tok(t, "a@x", time.Hour)), nil)
	id := idOf(t, s, "f", "a@x")
	s.Hide(id, token.RotatedKey, 3)
	for _, step := range []struct {
		epoch  uint64
		zeroed bool
		misses int
	}{{3, false, 0}, {2, false, 0}, {4, false, 1}, {4, false, 1}, {5, true, 0}} {
		if got := s.Missed(id, step.epoch); got != step.zeroed {
			t.Fatalf("Missed(epoch %d) = %v", step.epoch, got)
		}
		if rs := s.Remembered(); !step.zeroed && (len(rs) != 1 || rs[0].Misses != step.misses) {
			t.Fatalf("after epoch %d: %+v, want %d misses", step.epoch, rs, step.misses)
		}
	}
	if in, _ := info(s, id); !in.Hidden || in.Remembered || in.Reason != token.RotatedKey {
		t.Fatalf("zeroed token listed as %+v", in)
	}
	// Forget records the reason it is given.
	s.Put("g", lines(tok(t, "b@x", time.Hour)), nil)
	id = idOf(t, s, "g", "b@x")
	s.Hide(id, token.NotYetValid, 0)
	if !s.Forget(id, token.Expired) || s.Forget(id, token.Expired) {
		t.Fatal("Forget")
	}
	if in, _ := info(s, id); !in.Hidden || in.Remembered || in.Reason != token.Expired {
		t.Fatalf("forgotten token listed as %+v", in)
	}
}

// A not-yet-valid token whose time came and whose signature then does not
// verify counts as rotated-key from that key change on, with two key
// changes to go, as any other.
func TestMissedNotYetValidBecomesRotated(t *testing.T) {
	checkLeaks(t)
	s := New(Limits{})
	defer s.Close()
	s.Put("f", lines(tok(t, "a@x", time.Hour)), nil)
	id := idOf(t, s, "f", "a@x")
	s.Hide(id, token.NotYetValid, 0)
	for _, step := range []struct {
		epoch  uint64
		zeroed bool
		misses int
	}{{2, false, 0}, {2, false, 0}, {3, false, 1}, {4, true, 0}} {
		if got := s.Missed(id, step.epoch); got != step.zeroed {
			t.Fatalf("Missed(epoch %d) = %v", step.epoch, got)
		}
		if rs := s.Remembered(); !step.zeroed && (len(rs) != 1 || rs[0].Reason != token.RotatedKey || rs[0].Misses != step.misses) {
			t.Fatalf("after epoch %d: %+v, want rotated-key with %d misses", step.epoch, rs, step.misses)
		}
	}
}

// Making room for a new file at the file limit never zeroes remembered
// tokens: their file is not shown, but it is not evicted either.
func TestRoomNeverEvictsRemembered(t *testing.T) {
	checkLeaks(t)
	s := New(Limits{MaxFiles: 3})
	defer s.Close()
	s.Put("kept", lines(tok(t, "a@x", time.Hour)), nil)
	id := idOf(t, s, "kept", "a@x")
	s.Hide(id, token.RotatedKey, 1)
	s.Put("b", lines(tok(t, "b@x", time.Hour)), nil)
	s.Put("c", lines(tok(t, "c@x", time.Hour)), nil)
	if _, err := s.Create("new"); !errors.Is(err, ErrTooMany) {
		t.Fatalf("Create at the limit with only a remembered file to evict: %v, want ErrTooMany", err)
	}
	if rs := s.Remembered(); len(rs) != 1 || rs[0].ID != id {
		t.Fatalf("remembered after the refused create: %+v", rs)
	}
	if !s.Restore(id) {
		t.Fatal("the remembered token cannot come back")
	}
}

// bigTok returns a token of about n bytes.
func bigTok(t *testing.T, sub string, n int) []byte {
	t.Helper()
	pad := max(0, (n-200)*3/4)
	return tok(t, sub+strings.Repeat("x", pad)+"@x", time.Hour)
}

// The bound: 16 tokens or 8 KiB, whichever comes first, oldest first, with
// a log line.
func TestRememberedBound(t *testing.T) {
	checkLeaks(t)
	var logs syncbuf.Buffer
	s := New(Limits{})
	defer s.Close()
	s.SetLogger(slog.New(slog.NewTextHandler(&logs, nil)))
	var ids []uint64
	for i := range MaxRemembered + 2 {
		name := string(rune('a' + i))
		s.Put(name, lines(tok(t, name+"@x", time.Hour)), nil)
		ids = append(ids, idOf(t, s, name, name+"@x"))
		s.Hide(ids[i], token.RotatedKey, 0)
	}
	rs := s.Remembered()
	if len(rs) != MaxRemembered || rs[0].ID != ids[2] {
		t.Fatalf("%d remembered, the oldest %d; want %d from %d", len(rs), rs[0].ID, MaxRemembered, ids[2])
	}
	for _, id := range ids[:2] {
		if in, ok := info(s, id); !ok || in.Remembered || !in.Hidden {
			t.Fatalf("token over the bound: %+v", in)
		}
	}
	if n := strings.Count(logs.String(), "zeroed a hidden token that could have come back"); n != 2 {
		t.Fatalf("%d log lines for 2 tokens zeroed:\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "signature") {
		t.Fatal("the log has more than claims")
	}
	s.Wipe()

	// Bytes: tokens of about 1.5 KiB; the newest that fit in 8 KiB stay.
	ids = nil
	var sizes []int
	for i := range 7 {
		name := string(rune('a' + i))
		raw := bigTok(t, name, 1500)
		s.Put(name, lines(raw), nil)
		ids = append(ids, idOf(t, s, name, mustParse(t, raw).Sub))
		sizes = append(sizes, len(raw)+1)
		s.Hide(ids[i], token.RotatedKey, 0)
	}
	fit, total := 0, 0
	for i := len(sizes) - 1; i >= 0 && total+sizes[i] <= MaxRememberedBytes; i-- {
		fit, total = fit+1, total+sizes[i]
	}
	rs = s.Remembered()
	if fit >= 7 || len(rs) != fit || rs[0].ID != ids[7-fit] {
		t.Fatalf("%d remembered tokens of %d bytes, want the newest %d (8 KiB)", len(rs), sizes[0], fit)
	}
}

func mustParse(t *testing.T, raw []byte) *token.Token {
	t.Helper()
	tk, err := token.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// ReclaimOne zeroes the oldest remembered token, but not one a caller is
// reading.
func TestReclaimOne(t *testing.T) {
	checkLeaks(t)
	s := New(Limits{})
	defer s.Close()
	for _, name := range []string{"a", "b"} {
		s.Put(name, lines(tok(t, name+"@x", time.Hour)), nil)
		s.Hide(idOf(t, s, name, name+"@x"), token.RotatedKey, 0)
	}
	first := s.Remembered()[0].ID
	var inside bool
	s.WithRemembered(first, func([]byte) {
		// As secmem calls it from an allocation made by this goroutine.
		inside = s.ReclaimOne()
	})
	if !inside {
		t.Fatal("ReclaimOne found nothing besides the pinned token")
	}
	if rs := s.Remembered(); len(rs) != 1 || rs[0].ID != first {
		t.Fatalf("ReclaimOne took the token being read: %+v", rs)
	}
	if !s.ReclaimOne() || s.ReclaimOne() {
		t.Fatal("ReclaimOne of the last one")
	}
	if in, _ := info(s, first); !in.Hidden || in.Remembered || in.Reason != token.RotatedKey {
		t.Fatalf("%+v", in)
	}
}

// A file made by Create is invisible until its first commit.
func TestPendingFiles(t *testing.T) {
	checkLeaks(t)
	s := New(Limits{MaxFiles: 2})
	defer s.Close()
	var rec recorder
	s.OnChange(rec.add)
	a := lines(tok(t, "a@x", time.Hour))
	c, err := s.Create("new")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Lookup("new"); ok || s.Len() != 0 || len(s.List()) != 0 || s.Has("new") {
		t.Fatal("a pending file is visible by name")
	}
	if name, at, ok := s.Stat(c.Ino); !ok || name != "new" || at.Size != 0 {
		t.Fatal("the creator cannot stat its file")
	}
	if name, ok := s.Exists(c.Ino); !ok || name != "new" || !s.Pending(c.Ino) {
		t.Fatal("pending file missing")
	}
	if n, err := s.ReadAt(c.Ino, make([]byte, 8), 0); n != 0 || err != nil {
		t.Fatalf("ReadAt of a pending file: %d %v", n, err)
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("Create reported %v", got)
	}
	// It counts toward the limit, and is not evicted.
	c2, _ := s.Create("other")
	if _, err := s.Create("third"); !errors.Is(err, ErrTooMany) {
		t.Fatalf("a third file: %v", err)
	}
	if !s.Abandon(c2.Ino) {
		t.Fatal("Abandon")
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("Abandon reported %v", got)
	}
	// The first commit names it.
	if _, err := s.Replace(c.Ino, a, nil); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); !slices.Equal(got, []Change{{Kind: Added, Name: "new", Ino: c.Ino}}) {
		t.Fatalf("commit events %v", got)
	}
	if at, ok := s.Lookup("new"); !ok || at.Ino != c.Ino || s.Pending(c.Ino) {
		t.Fatal("not committed")
	}
	// A second creator of a shown name is refused; of a shown name made
	// meanwhile, its commit replaces it.
	if _, err := s.Create("new"); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over a shown file: %v", err)
	}
	s.Remove("new")
	rec.take()
	c3, _ := s.Create("new")
	put, _ := s.Put("new", a, nil)
	rec.take()
	if _, err := s.Replace(c3.Ino, a, nil); err != nil {
		t.Fatal(err)
	}
	if got := rec.take(); !slices.Equal(got, []Change{{Kind: Replaced, Name: "new", Ino: c3.Ino, Old: put.Ino}}) {
		t.Fatalf("commit over a shown file: %v", got)
	}
	// A wipe drops pending files, reporting them so their drafts go.
	c4, _ := s.Create("late")
	rec.take()
	s.Wipe()
	got := rec.take()
	if !slices.Contains(got, Change{Kind: Removed, Name: "late", Ino: c4.Ino}) {
		t.Fatalf("wipe events %v", got)
	}
	if _, ok := s.Exists(c4.Ino); ok {
		t.Fatal("the pending file survived a wipe")
	}
}

// A writer commits a token, then the newline after it: a not-yet-valid
// token is zeroed and remembered again, and listed once.
func TestWriterSecondWriteListedOnce(t *testing.T) {
	checkLeaks(t)
	s := New(Limits{})
	defer s.Close()
	soon := tok(t, "soon@x", time.Hour)
	check := func(*token.Token) token.Reason { return token.NotYetValid }
	c, _ := s.Create("f")
	for _, content := range [][]byte{soon, lines(soon)} {
		if _, err := s.Replace(c.Ino, content, check); err != nil {
			t.Fatal(err)
		}
	}
	infos := s.Infos()
	if len(infos) != 1 || !infos[0].Remembered || infos[0].Reason != token.NotYetValid {
		t.Fatalf("infos %+v, want the token once, remembered", infos)
	}
	if !s.Restore(infos[0].ID) || content(t, s, "f") != string(soon)+"\n" {
		t.Fatal("restore of the second write's token")
	}
}
