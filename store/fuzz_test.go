package store

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// FuzzStore runs arbitrary sequences of Put, Create, Replace, Hide, Remove,
// Rename, Wipe and reads, and checks after every step that the store shows
// exactly what a simple model says, that its change events replay into the
// same set of names (the filesystem's cache invalidation depends on them),
// that inode numbers are never reused, and that every secret buffer is
// released once the store is wiped.
func FuzzStore(f *testing.F) {
	f.Add([]byte{})
	// Put a, put b, hide the first shown token, rename a onto b, remove b.
	f.Add([]byte{opPut, 0, 0, opPut, 1, 3, opHide, 0, 1, opRename, 0, 1, 0, opRemove, 1})
	// Create, replace by inode, a file whose tokens are all rejected, wipe.
	f.Add([]byte{opCreate, 2, opReplace, 0, 2, opReplace, 1, 0, opPut, 3, 4, opPut, 3, 0, opWipe, opPut, 0, 5})
	// Up to the file limit and over it; bad names; garbage, NUL, too big.
	f.Add([]byte{opPut, 0, 0, opPut, 1, 1, opPut, 2, 2, opPut, 3, 3, opPut, 4, 0, opPut, 5, 0, opPut, 6, 0, opPut, 7, 0,
		opPut, 0, 8, opPut, 0, 9, opPut, 0, 10, opCreate, 0, opRename, 0, 6, 1, opRename, 0, 1, 1})
	// Hide every token of a two-token file, then write it again.
	f.Add([]byte{opPut, 0, 3, opHide, 0, 0, opHide, 0, 2, opCandidates, opPut, 0, 3, opRead, 0, 5})
	f.Add([]byte{opPut, 0, 11, opPut, 1, 12, opPut, 2, 7, opPut, 3, 6, opHide, 1, 3, opRead, 1, 200, opCandidates})

	f.Fuzz(func(t *testing.T, ops []byte) {
		baseline := secmem.Live()
		h := newHarness(t)
		for in := (input{b: ops}); !in.done(); {
			h.step(&in)
			h.check()
		}
		h.s.Close()
		h.settleEvents()
		if len(h.seen) != 0 {
			t.Fatalf("after Close the change events still show %v", slices.Sorted(maps.Keys(h.seen)))
		}
		if _, err := h.s.Put("a", h.content(0), nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("Put after Close: %v, want ErrClosed", err)
		}
		if n := secmem.Live() - baseline; n != 0 {
			t.Fatalf("%d secret buffers were never wiped", n)
		}
	})
}

// Operations, chosen by one byte each.
const (
	opPut = iota
	opCreate
	opReplace
	opHide
	opRemove
	opRename
	opWipe
	opCandidates
	opRead
	numOps
)

// input hands out the fuzzer's bytes; past the end it gives zeros.
type input struct {
	b []byte
	i int
}

func (in *input) done() bool { return in.i >= len(in.b) }

func (in *input) next(n int) int {
	if in.i >= len(in.b) {
		return 0
	}
	v := int(in.b[in.i])
	in.i++
	return v % n
}

var fuzzLimits = Limits{MaxFiles: 4, MaxFileSize: 1024, MaxNameLen: 8}

// names: valid ones first, then ones CheckName refuses.
var fuzzNames = []string{"a", "b", "c", "d", "e", "TOOL_x", "", "x/y", "..", "long-name"}

// fuzzTokens are signed once; "bad" ones are rejected by fuzzCheck.
var fuzzTokens = sync.OnceValue(func() [][]byte {
	subs := []string{"alice@example.org", "b@x", "carol.long.name@example.org", "d@x", "bad-1@x", "bad-2@example.org"}
	out := make([][]byte, len(subs))
	for i, sub := range subs {
		raw, err := token.Sign(token.Claims{Issuer: "example.org", Subject: sub, Lifetime: time.Hour, IssuedAt: time.Now()}, "POOL", key)
		if err != nil {
			panic(err)
		}
		out[i] = raw
	}
	return out
})

func fuzzCheck(t *token.Token) token.Reason {
	if strings.HasPrefix(t.Sub, "bad") {
		return token.Revoked
	}
	return token.Valid
}

// contents: what a file may be given. The model needs to know which token
// lines each holds; a nil entry in tokens means the content is refused.
type fuzzContent struct {
	text   []byte
	tokens [][]byte // every token line, shown or rejected; nil: refused
}

func fuzzContents() []fuzzContent {
	tk := fuzzTokens()
	nl := func(parts ...[]byte) []byte { return append(bytes.Join(parts, []byte("\n")), '\n') }
	return []fuzzContent{
		{nl(tk[0]), [][]byte{tk[0]}},
		{nl(tk[1]), [][]byte{tk[1]}},
		{nl([]byte("# fetched by hand"), tk[2]), [][]byte{tk[2]}},
		{nl(tk[0], tk[3]), [][]byte{tk[0], tk[3]}},
		{nl(tk[4]), [][]byte{tk[4]}},
		{nl(tk[1], []byte("# x"), tk[5]), [][]byte{tk[1], tk[5]}},
		{[]byte{}, [][]byte{}},
		{[]byte("# only a comment\n"), [][]byte{}},
		{[]byte("not a token\n"), nil},
		{append(nl(tk[0]), 0), nil},
		{bytes.Repeat([]byte("#\n"), 513), nil},
		{[]byte("\r\n" + string(tk[3]) + "\r\n  \n"), [][]byte{tk[3]}},
		{tk[2], [][]byte{tk[2]}},
	}
}

// modelFile is a file as the model sees it: every file the store keeps,
// shown or not.
type modelFile struct {
	ino     uint64
	tokens  [][]byte // shown token lines, in order
	visible bool     // not every token of it hidden
	seq     int      // when its mtime last changed: eviction takes the oldest
}

type harness struct {
	t        *testing.T
	s        *Store
	contents []fuzzContent
	model    map[string]*modelFile
	clock    int               // the model's mtime
	maxIno   uint64            // highest inode number seen
	gone     map[uint64]bool   // inode numbers of dropped files
	seen     map[string]uint64 // visible names replayed from change events
	events   *recorder
}

func newHarness(t *testing.T) *harness {
	h := &harness{
		t:        t,
		s:        New(fuzzLimits),
		contents: fuzzContents(),
		model:    map[string]*modelFile{},
		gone:     map[uint64]bool{},
		seen:     map[string]uint64{},
		events:   &recorder{},
	}
	h.s.OnChange(h.events.add)
	return h
}

func (h *harness) content(i int) []byte { return h.contents[i].text }

// visible returns name's file if it is shown.
func (h *harness) visible(name string) *modelFile {
	if m := h.model[name]; m != nil && m.visible {
		return m
	}
	return nil
}

func (h *harness) byIno(ino uint64) (string, *modelFile) {
	for name, m := range h.model {
		if m.ino == ino {
			return name, m
		}
	}
	return "", nil
}

// shown returns the token lines of c that the check lets through, and
// whether the file stays visible (it had no token, or one survived).
func shown(c fuzzContent) ([][]byte, bool) {
	var out [][]byte
	for _, raw := range c.tokens {
		tk, err := token.Parse(raw)
		if err != nil {
			panic(err)
		}
		if fuzzCheck(tk) == token.Valid {
			out = append(out, raw)
		}
	}
	return out, len(c.tokens) == 0 || len(out) > 0
}

func (h *harness) drop(name string) {
	if m := h.model[name]; m != nil {
		h.gone[m.ino] = true
		delete(h.model, name)
	}
}

// newFile is the store's newFileLocked: it replaces a hidden file of that
// name, evicts the oldest hidden files at the limit, and fails with
// ErrTooMany when every file is shown.
func (h *harness) newFile(name string, ino uint64) error {
	h.drop(name)
	for len(h.model) >= fuzzLimits.MaxFiles {
		victim := ""
		for n, m := range h.model {
			if !m.visible && (victim == "" || m.seq < h.model[victim].seq) {
				victim = n
			}
		}
		if victim == "" {
			return ErrTooMany
		}
		h.drop(victim)
	}
	if ino <= h.maxIno {
		h.t.Fatalf("new file %q got inode %d, not above every earlier one (%d)", name, ino, h.maxIno)
	}
	h.maxIno = ino
	h.clock++
	h.model[name] = &modelFile{ino: ino, tokens: [][]byte{}, visible: true, seq: h.clock}
	return nil
}

// set installs content c into a file after a successful write.
func (h *harness) set(m *modelFile, c fuzzContent) {
	m.tokens, m.visible = shown(c)
	h.clock++
	m.seq = h.clock
}

// wantErr fails unless err matches want (nil for success).
func (h *harness) wantErr(what string, err, want error) {
	h.t.Helper()
	if (want == nil) != (err == nil) || want != nil && !errors.Is(err, want) {
		h.t.Fatalf("%s: error %v, want %v", what, err, want)
	}
}

// nameErr is what CheckName says about a fuzzed name.
func nameErr(name string) error {
	switch {
	case name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
		return ErrBadName
	case len(name) > fuzzLimits.MaxNameLen:
		return ErrNameTooLong
	}
	return nil
}

// contentErr is what parsing a fuzzed content gives.
func contentErr(c fuzzContent) error {
	switch {
	case c.tokens != nil:
		return nil
	case len(c.text) > fuzzLimits.MaxFileSize:
		return ErrTooBig
	}
	return token.ErrMalformed
}

func (h *harness) step(in *input) {
	t := h.t
	t.Helper()
	switch op := in.next(numOps); op {
	case opPut:
		name, c := fuzzNames[in.next(len(fuzzNames))], h.contents[in.next(len(h.contents))]
		a, err := h.s.Put(name, c.text, fuzzCheck)
		what := fmt.Sprintf("Put(%q)", name)
		if want := cmp.Or(nameErr(name), contentErr(c)); want != nil {
			h.wantErr(what, err, want)
			return
		}
		// Put replaces any file of that name by a new one (a new inode),
		// as a rename over it would.
		h.wantErr(what, err, h.newFile(name, a.Ino))
		if err != nil {
			return
		}
		h.set(h.model[name], c)
	case opCreate:
		name := fuzzNames[in.next(len(fuzzNames))]
		a, err := h.s.Create(name)
		what := fmt.Sprintf("Create(%q)", name)
		switch {
		case nameErr(name) != nil:
			h.wantErr(what, err, nameErr(name))
		case h.visible(name) != nil:
			h.wantErr(what, err, ErrExists)
		default:
			h.wantErr(what, err, h.newFile(name, a.Ino))
		}
	case opReplace:
		// Any recent inode number: shown, hidden, dropped or never given out.
		ino := h.maxIno + 1 - uint64(in.next(4))
		c := h.contents[in.next(len(h.contents))]
		_, err := h.s.Replace(ino, c.text, fuzzCheck)
		_, m := h.byIno(ino)
		want := contentErr(c)
		if want == nil && m == nil {
			want = ErrNotFound
		}
		h.wantErr(fmt.Sprintf("Replace(%d)", ino), err, want)
		if want == nil {
			h.set(m, c)
		}
	case opHide:
		// The k-th shown token, or an id that is not shown.
		var shownInfos []Info
		for _, info := range h.s.Infos() {
			if !info.Hidden {
				shownInfos = append(shownInfos, info)
			}
		}
		k := in.next(len(shownInfos) + 1)
		r := []token.Reason{token.Expired, token.RotatedKey, token.Revoked}[in.next(3)]
		if k == len(shownInfos) {
			if h.s.Hide(1<<40, r, 0) {
				t.Fatal("Hide of an id never given out reported a shown token")
			}
			return
		}
		info := shownInfos[k]
		if !h.s.Hide(info.ID, r, 0) {
			t.Fatalf("Hide(%d) of a shown token of %q reported nothing hidden", info.ID, info.Name)
		}
		if h.s.Hide(info.ID, r, 0) {
			t.Fatalf("Hide(%d) twice reported a shown token twice", info.ID)
		}
		// Infos are sorted by name then id, and ids grow with the position
		// in the file: the k-th shown info of a name is its k-th token.
		pos := 0
		for _, other := range shownInfos[:k] {
			if other.Name == info.Name {
				pos++
			}
		}
		m := h.visible(info.Name)
		if m == nil || pos >= len(m.tokens) {
			t.Fatalf("Infos shows token %d of %q, which the model does not have", pos, info.Name)
		}
		m.tokens = slices.Delete(m.tokens, pos, pos+1)
		m.visible = len(m.tokens) > 0
		h.clock++
		m.seq = h.clock
		// What is left is a new inode; a file left with no token keeps
		// its own.
		if m.visible {
			a, ok := h.s.Lookup(info.Name)
			if !ok || a.Ino <= h.maxIno {
				t.Fatalf("after Hide(%d) %q has inode %d (shown %v), want a new one above %d", info.ID, info.Name, a.Ino, ok, h.maxIno)
			}
			h.gone[m.ino] = true
			m.ino, h.maxIno = a.Ino, a.Ino
		}
		// A token hidden again for the same reason is listed once.
		if !slices.ContainsFunc(h.s.Infos(), func(i Info) bool {
			return i.Name == info.Name && i.Token == info.Token && i.Hidden && i.Reason == r
		}) {
			t.Fatalf("hidden token %d of %q is not listed as hidden for %q", info.ID, info.Name, r)
		}
	case opRemove:
		name := fuzzNames[in.next(len(fuzzNames))]
		err := h.s.Remove(name)
		var want error
		if h.visible(name) == nil {
			want = ErrNotFound
		}
		h.wantErr(fmt.Sprintf("Remove(%q)", name), err, want)
		if want == nil {
			h.drop(name)
		}
	case opRename:
		from, to := fuzzNames[in.next(len(fuzzNames))], fuzzNames[in.next(len(fuzzNames))]
		noReplace := in.next(2) == 1
		err := h.s.Rename(from, to, noReplace)
		want := nameErr(to)
		switch {
		case want != nil:
		case h.visible(from) == nil:
			want = ErrNotFound
		case from == to:
		case noReplace && h.visible(to) != nil:
			want = ErrExists
		}
		h.wantErr(fmt.Sprintf("Rename(%q, %q, %v)", from, to, noReplace), err, want)
		if want == nil && from != to {
			h.drop(to)
			h.model[to] = h.model[from]
			delete(h.model, from)
		}
	case opWipe:
		h.s.Wipe()
		for name := range h.model {
			h.drop(name)
		}
	case opCandidates:
		cands, err := h.s.Candidates()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, m := range h.model {
			n += len(m.tokens)
		}
		if len(cands) != n {
			t.Fatalf("Candidates gave %d tokens, the model shows %d", len(cands), n)
		}
		for _, c := range cands {
			m := h.visible(c.Name)
			if m == nil || !slices.ContainsFunc(m.tokens, func(raw []byte) bool { return bytes.Equal(raw, c.Raw.Bytes()) }) {
				t.Fatalf("candidate of %q is not a shown token of that file", c.Name)
			}
			c.Raw.Wipe()
		}
	case opRead:
		name := fuzzNames[in.next(len(fuzzNames))]
		off := int64(in.next(256) * 4)
		a, ok := h.s.Lookup(name)
		if !ok {
			return
		}
		buf := make([]byte, 64)
		n, err := h.s.ReadAt(a.Ino, buf, off)
		if err != nil {
			t.Fatalf("ReadAt of visible %q: %v", name, err)
		}
		whole := h.bytes(name, a.Ino)
		want := []byte{}
		if off < int64(len(whole)) {
			want = whole[off:min(int(off)+len(buf), len(whole))]
		}
		if !bytes.Equal(buf[:n], want) {
			t.Fatalf("ReadAt(%q, %d) = %q, want %q", name, off, buf[:n], want)
		}
	}
}

// bytes returns a copy of a visible file's content.
func (h *harness) bytes(name string, ino uint64) []byte {
	h.t.Helper()
	b, err := h.s.Content(ino)
	if err != nil {
		h.t.Fatalf("Content of visible %q: %v", name, err)
	}
	defer b.Wipe()
	return bytes.Clone(b.Bytes())
}

// settleEvents replays the change events since the last call into seen,
// failing on events that make no sense (a Modified or Removed name that was
// not visible, with another inode).
func (h *harness) settleEvents() {
	h.t.Helper()
	for _, c := range h.events.take() {
		ino, ok := h.seen[c.Name]
		switch c.Kind {
		case Added:
			if ok {
				h.t.Fatalf("event: %q added twice (inodes %d, %d)", c.Name, ino, c.Ino)
			}
			h.seen[c.Name] = c.Ino
		case Replaced:
			if !ok || ino != c.Old {
				h.t.Fatalf("event: %q replaced from inode %d, which the events never showed (have %d, %v)", c.Name, c.Old, ino, ok)
			}
			h.seen[c.Name] = c.Ino
		case Modified, Removed:
			if !ok || ino != c.Ino {
				h.t.Fatalf("event: %v of %q inode %d, which the events never showed (have %d, %v)", c.Kind, c.Name, c.Ino, ino, ok)
			}
			if c.Kind == Removed {
				delete(h.seen, c.Name)
			}
		}
	}
}

// check compares the store with the model.
func (h *harness) check() {
	t := h.t
	t.Helper()
	h.settleEvents()
	want := map[string]uint64{}
	for name, m := range h.model {
		if m.visible {
			want[name] = m.ino
		}
	}
	if !maps.Equal(h.seen, want) {
		t.Fatalf("change events show %v, the model %v", h.seen, want)
	}
	list := h.s.List()
	if len(list) != len(want) || h.s.Len() != len(want) {
		t.Fatalf("List has %d files, Len says %d, the model %d", len(list), h.s.Len(), len(want))
	}
	for i, e := range list {
		if i > 0 && list[i-1].Name >= e.Name {
			t.Fatalf("List is not sorted: %q before %q", list[i-1].Name, e.Name)
		}
		if want[e.Name] != e.Attr.Ino {
			t.Fatalf("List shows %q inode %d, the model %d", e.Name, e.Attr.Ino, want[e.Name])
		}
		if a, ok := h.s.Lookup(e.Name); !ok || a != e.Attr {
			t.Fatalf("Lookup(%q) = %+v %v, List says %+v", e.Name, a, ok, e.Attr)
		}
		if name, a, ok := h.s.Stat(e.Attr.Ino); !ok || name != e.Name || a != e.Attr {
			t.Fatalf("Stat(%d) = %q %+v %v, List says %q %+v", e.Attr.Ino, name, a, ok, e.Name, e.Attr)
		}
		if content := h.bytes(e.Name, e.Attr.Ino); len(content) != e.Attr.Size {
			t.Fatalf("%q: size %d, content %d bytes", e.Name, e.Attr.Size, len(content))
		}
	}
	for name, m := range h.model {
		if got, ok := h.s.Exists(m.ino); !ok || got != name {
			t.Fatalf("Exists(%d) = %q %v, the model has %q", m.ino, got, ok, name)
		}
		if !m.visible {
			if _, ok := h.s.Lookup(name); ok {
				t.Fatalf("%q is shown although all its tokens are hidden", name)
			}
			if _, _, ok := h.s.Stat(m.ino); ok {
				t.Fatalf("Stat finds hidden %q", name)
			}
		}
		// Hidden files keep what is left (comments) for their writer.
		content := h.bytes(name, m.ino)
		lines, err := token.ParseFile(content)
		if err != nil {
			t.Fatalf("%q holds content that does not parse: %v", name, err)
		}
		var got [][]byte
		for _, l := range lines {
			if l.Kind == token.TokenLine {
				got = append(got, content[l.Start:l.End])
			}
		}
		if !slices.EqualFunc(got, m.tokens, bytes.Equal) {
			t.Fatalf("%q holds %d tokens, the model %d (or different ones)", name, len(got), len(m.tokens))
		}
	}
	for ino := range h.gone {
		if _, ok := h.s.Exists(ino); ok {
			t.Fatalf("inode %d was dropped but the store still has it", ino)
		}
	}
	ids := map[uint64]bool{}
	shownPer := map[string]int{}
	for _, info := range h.s.Infos() {
		if ids[info.ID] {
			t.Fatalf("token id %d listed twice", info.ID)
		}
		ids[info.ID] = true
		if info.Hidden != (info.Reason != token.Valid) {
			t.Fatalf("token %d of %q: hidden %v with reason %q", info.ID, info.Name, info.Hidden, info.Reason)
		}
		if !info.Hidden {
			shownPer[info.Name]++
		}
	}
	for name, m := range h.model {
		if shownPer[name] != len(m.tokens) {
			t.Fatalf("Infos shows %d tokens of %q, the model %d", shownPer[name], name, len(m.tokens))
		}
		delete(shownPer, name)
	}
	if len(shownPer) != 0 {
		t.Fatalf("Infos shows tokens of files the model does not have: %v", shownPer)
	}
}
