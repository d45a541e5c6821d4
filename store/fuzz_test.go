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

// FuzzStore runs arbitrary sequences of Put, Create, Replace, Abandon, Hide,
// Restore, Missed, Forget, Mark, Remove, Rename, Wipe and reads, and checks
// after every step that the store shows exactly what a simple model says
// (byte for byte: a restored token is back at its place), that its change
// events replay into the same set of names (the filesystem's cache
// invalidation depends on them), that inode numbers are never reused, and
// that every secret buffer is released once the store is wiped.
func FuzzStore(f *testing.F) {
	f.Add([]byte{})
	// Put a, put b, hide the first shown token, rename a onto b, remove b.
	f.Add([]byte{opPut, 0, 0, opPut, 1, 3, opHide, 0, 1, 0, opRename, 0, 1, 0, opRemove, 1})
	// Create, replace by inode, a file whose tokens are all rejected, wipe.
	f.Add([]byte{opCreate, 2, opReplace, 0, 2, opReplace, 1, 0, opPut, 3, 4, opPut, 3, 0, opWipe, opPut, 0, 5})
	// Up to the file limit and over it; bad names; garbage, NUL, too big.
	f.Add([]byte{opPut, 0, 0, opPut, 1, 1, opPut, 2, 2, opPut, 3, 3, opPut, 4, 0, opPut, 5, 0, opPut, 6, 0, opPut, 7, 0,
		opPut, 0, 8, opPut, 0, 9, opPut, 0, 10, opCreate, 0, opRename, 0, 6, 1, opRename, 0, 1, 1})
	// Hide every token of a two-token file, then write it again.
	f.Add([]byte{opPut, 0, 3, opHide, 0, 0, 0, opHide, 0, 2, 0, opCandidates, opPut, 0, 3, opRead, 0, 5})
	f.Add([]byte{opPut, 0, 11, opPut, 1, 12, opPut, 2, 7, opPut, 3, 6, opHide, 1, 3, 0, opRead, 1, 200, opCandidates})
	// Remember both tokens of a commented file, restore them out of order.
	f.Add([]byte{opPut, 0, 5, opHide, 0, 1, 1, opHide, 0, 1, 1, opRestore, 1, opRestore, 0, opRead, 0, 0})
	// A not-yet-valid token at Put; missed twice; a rename carries the rest.
	f.Add([]byte{opPut, 1, 13, opMissed, 0, 1, opMissed, 0, 1, opMissed, 0, 2, opHide, 0, 1, 2, opRename, 1, 2, 0, opRestore, 0})
	// A pending file: refused (abandoned), then committed over a hidden one.
	f.Add([]byte{opPut, 0, 0, opHide, 0, 1, 0, opCreate, 0, opAbandon, 0, opCreate, 0, opReplace, 0, 1, opRestore, 0})
	// Forget, mark, remove a name with only remembered tokens.
	f.Add([]byte{opPut, 2, 3, opMark, 0, 1, opHide, 0, 1, 0, opHide, 0, 1, 0, opForget, 0, opRemove, 2})

	f.Fuzz(func(t *testing.T, ops []byte) {
		baseline := secmem.Live()
		h := newHarness(t)
		for in := (input{b: ops}); !in.done(); {
			h.step(&in)
			h.check()
		}
		h.s.Close()
		h.wipedPending(maps.Keys(h.pending))
		h.settleEvents()
		if len(h.seen) != 0 {
			t.Fatalf("after Close the change events still show %v", slices.Sorted(maps.Keys(h.seen)))
		}
		if _, err := h.s.Put("a", h.content(0), nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("Put after Close: %v, want ErrClosed", err)
		}
		if _, err := h.s.Create("a"); !errors.Is(err, ErrClosed) {
			t.Fatalf("Create after Close: %v, want ErrClosed", err)
		}
		if len(h.s.Infos()) != 0 || len(h.s.Remembered()) != 0 {
			t.Fatal("Close left tokens listed")
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
	opRestore
	opMissed
	opForget
	opMark
	opAbandon
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
	subs := []string{"alice@example.org", "b@x", "carol.long.name@example.org", "d@x", "bad-1@x", "bad-2@example.org", "later@x"}
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
	switch {
	case strings.HasPrefix(t.Sub, "bad"):
		return token.Revoked
	case t.Sub == "later@x":
		return token.NotYetValid
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
		{nl([]byte("# soon"), tk[6], []byte(" \t"+string(tk[0]))), [][]byte{tk[6], tk[0]}},
	}
}

// Token line states in the model.
const (
	lineShown = iota
	lineRemembered
	lineGone
)

type modelLine struct {
	raw    []byte
	state  int
	reason token.Reason // shown: Valid or UnknownKey; otherwise why hidden
	seq    int          // remembered: hide order
	epoch  uint64
	misses int
}

// modelFile is a file as the model sees it: every file the store keeps,
// shown or not.
type modelFile struct {
	ino     uint64
	commit  []byte      // the content of its last commit
	lines   []modelLine // the token lines of commit, in order
	visible bool        // not every token of it hidden
	seq     int         // when its mtime last changed: eviction takes the oldest
}

// anyRemembered reports whether a token line of m is remembered.
func (m *modelFile) anyRemembered() bool {
	for _, l := range m.lines {
		if l.state == lineRemembered {
			return true
		}
	}
	return false
}

// shownTokens returns the shown token lines, in order.
func (m *modelFile) shownTokens() [][]byte {
	out := [][]byte{}
	for _, l := range m.lines {
		if l.state == lineShown {
			out = append(out, l.raw)
		}
	}
	return out
}

// nth returns the index of the k-th line in state st.
func (m *modelFile) nth(st, k int) int {
	for i, l := range m.lines {
		if l.state == st {
			if k == 0 {
				return i
			}
			k--
		}
	}
	return -1
}

// want is the content the store must hold: the commit without the lines of
// tokens not shown. Lines are split on '\n', a token line is one that is
// neither blank nor a comment once trimmed.
func (m *modelFile) want() []byte {
	var out []byte
	k := 0
	for _, line := range bytes.SplitAfter(m.commit, []byte("\n")) {
		trimmed := bytes.TrimSpace(line)
		if len(trimmed) > 0 && trimmed[0] != '#' {
			st := m.lines[k].state
			k++
			if st != lineShown {
				continue
			}
		}
		out = append(out, line...)
	}
	return out
}

type harness struct {
	t        *testing.T
	s        *Store
	contents []fuzzContent
	model    map[string]*modelFile
	pending  map[uint64]string // pending files: inode -> name
	clock    int               // the model's mtime
	hides    int               // the model's hide order
	maxIno   uint64            // highest inode number seen
	gone     map[uint64]bool   // inode numbers of dropped files
	seen     map[string]uint64 // visible names replayed from change events
	quiet    map[uint64]bool   // pending inodes whose Removed (at a wipe) is expected
	events   *recorder
}

func newHarness(t *testing.T) *harness {
	h := &harness{
		t:        t,
		s:        New(fuzzLimits),
		contents: fuzzContents(),
		model:    map[string]*modelFile{},
		pending:  map[uint64]string{},
		gone:     map[uint64]bool{},
		seen:     map[string]uint64{},
		quiet:    map[uint64]bool{},
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

func (h *harness) drop(name string) {
	if m := h.model[name]; m != nil {
		h.gone[m.ino] = true
		delete(h.model, name)
	}
}

// room is the store's roomLocked: it evicts the oldest hidden files at the
// limit (pending files count) but never one holding remembered tokens, and
// fails with ErrTooMany when every file is shown, pending or remembered.
func (h *harness) room() error {
	for len(h.model)+len(h.pending) >= fuzzLimits.MaxFiles {
		victim := ""
		for n, m := range h.model {
			if !m.visible && !m.anyRemembered() && (victim == "" || m.seq < h.model[victim].seq) {
				victim = n
			}
		}
		if victim == "" {
			return ErrTooMany
		}
		h.drop(victim)
	}
	return nil
}

func (h *harness) newIno(what string, ino uint64) {
	if ino <= h.maxIno {
		h.t.Fatalf("%s got inode %d, not above every earlier one (%d)", what, ino, h.maxIno)
	}
	h.maxIno = ino
}

// newFile is the store's newFileLocked: it replaces any file of that name,
// then makes room.
func (h *harness) newFile(name string, ino uint64) error {
	h.drop(name)
	if err := h.room(); err != nil {
		return err
	}
	h.newIno(fmt.Sprintf("new file %q", name), ino)
	h.clock++
	h.model[name] = &modelFile{ino: ino, visible: true, seq: h.clock}
	return nil
}

// set installs content c into a file after a successful commit: its
// remembered tokens go, and the quick check hides (last line first, as the
// store does) what it rejects.
func (h *harness) set(m *modelFile, c fuzzContent) {
	m.commit = c.text
	m.lines = nil
	for _, raw := range c.tokens {
		tk, err := token.Parse(raw)
		if err != nil {
			panic(err)
		}
		m.lines = append(m.lines, modelLine{raw: raw, reason: fuzzCheck(tk)})
	}
	for i := len(m.lines) - 1; i >= 0; i-- {
		l := &m.lines[i]
		switch {
		case l.reason.Reversible():
			h.hides++
			l.state, l.seq = lineRemembered, h.hides
		case l.reason.Hides():
			l.state = lineGone
		}
	}
	m.visible = len(c.tokens) == 0 || len(m.shownTokens()) > 0
	h.clock++
	m.seq = h.clock
}

// wipedPending expects a Removed event for each pending inode: a wipe
// drops them.
func (h *harness) wipedPending(inos func(func(uint64) bool)) {
	for ino := range inos {
		h.quiet[ino] = true
		h.gone[ino] = true
		delete(h.pending, ino)
	}
}

// renumbered records that name's file got a new inode (a hide or restore
// that leaves it shown).
func (h *harness) renumbered(name string, m *modelFile, what string) {
	a, ok := h.s.Lookup(name)
	if !ok || a.Ino <= h.maxIno {
		h.t.Fatalf("after %s %q has inode %d (shown %v), want a new one above %d", what, name, a.Ino, ok, h.maxIno)
	}
	h.gone[m.ino] = true
	m.ino, h.maxIno = a.Ino, a.Ino
}

// remembered returns the model's remembered lines in hide order, with
// their files' names.
func (h *harness) remembered() (names []string, lines []*modelLine) {
	type ref struct {
		name string
		l    *modelLine
	}
	var refs []ref
	for name, m := range h.model {
		for i := range m.lines {
			if m.lines[i].state == lineRemembered {
				refs = append(refs, ref{name, &m.lines[i]})
			}
		}
	}
	slices.SortFunc(refs, func(a, b ref) int { return cmp.Compare(a.l.seq, b.l.seq) })
	for _, r := range refs {
		names, lines = append(names, r.name), append(lines, r.l)
	}
	return names, lines
}

// pickRemembered chooses the k-th remembered token (in hide order), or an
// id that is not remembered. It returns the store's record and the model's
// line, nil for the latter.
func (h *harness) pickRemembered(in *input) (Remembered, *modelLine) {
	rs := h.s.Remembered()
	k := in.next(len(rs) + 1)
	if k == len(rs) {
		return Remembered{ID: 1 << 40}, nil
	}
	names, lines := h.remembered()
	if len(names) != len(rs) || names[k] != rs[k].Name {
		h.t.Fatalf("Remembered lists %d tokens (the %d-th of %q), the model %d (%v)", len(rs), k, rs[k].Name, len(names), names)
	}
	return rs[k], lines[k]
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
			// A pending file: no name yet, nothing replaced.
			h.wantErr(what, err, h.room())
			if err == nil {
				h.newIno(what, a.Ino)
				h.pending[a.Ino] = name
				if !h.s.Pending(a.Ino) || !a.Pending {
					t.Fatalf("%s: inode %d is not pending", what, a.Ino)
				}
			}
		}
	case opReplace:
		// Any recent inode number: shown, hidden, pending, dropped or
		// never given out.
		ino := h.maxIno + 1 - uint64(in.next(4))
		c := h.contents[in.next(len(h.contents))]
		_, err := h.s.Replace(ino, c.text, fuzzCheck)
		_, m := h.byIno(ino)
		name, pending := h.pending[ino]
		want := contentErr(c)
		if want == nil && m == nil && !pending {
			want = ErrNotFound
		}
		h.wantErr(fmt.Sprintf("Replace(%d)", ino), err, want)
		switch {
		case want != nil:
		case pending:
			// The first commit names it, replacing that name's file.
			delete(h.pending, ino)
			h.drop(name)
			h.model[name] = &modelFile{ino: ino}
			h.set(h.model[name], c)
		default:
			h.set(m, c)
		}
	case opAbandon:
		ino := h.maxIno + 1 - uint64(in.next(4))
		_, pending := h.pending[ino]
		if got := h.s.Abandon(ino); got != pending {
			t.Fatalf("Abandon(%d) = %v, the model says pending %v", ino, got, pending)
		}
		if pending {
			delete(h.pending, ino)
			h.gone[ino] = true
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
		r := []token.Reason{token.Expired, token.RotatedKey, token.Revoked, token.NotYetValid}[in.next(4)]
		epoch := uint64(in.next(3))
		if k == len(shownInfos) {
			if h.s.Hide(1<<40, r, epoch) {
				t.Fatal("Hide of an id never given out reported a shown token")
			}
			return
		}
		info := shownInfos[k]
		if !h.s.Hide(info.ID, r, epoch) {
			t.Fatalf("Hide(%d) of a shown token of %q reported nothing hidden", info.ID, info.Name)
		}
		if h.s.Hide(info.ID, r, epoch) {
			t.Fatalf("Hide(%d) twice reported a shown token twice", info.ID)
		}
		// Infos are sorted by name then id, and ids grow with the position
		// in the file: the k-th shown info of a name is its k-th shown
		// token.
		pos := 0
		for _, other := range shownInfos[:k] {
			if other.Name == info.Name {
				pos++
			}
		}
		m := h.visible(info.Name)
		i := -1
		if m != nil {
			i = m.nth(lineShown, pos)
		}
		if i < 0 {
			t.Fatalf("Infos shows token %d of %q, which the model does not have", pos, info.Name)
		}
		l := &m.lines[i]
		l.reason = r
		if r.Reversible() {
			h.hides++
			l.state, l.seq, l.epoch, l.misses = lineRemembered, h.hides, epoch, 0
		} else {
			l.state = lineGone
		}
		m.visible = len(m.shownTokens()) > 0
		h.clock++
		m.seq = h.clock
		// What is left is a new inode; a file left with no token keeps
		// its own.
		if m.visible {
			h.renumbered(info.Name, m, fmt.Sprintf("Hide(%d)", info.ID))
		}
		// A token hidden again for the same reason is listed once.
		if !slices.ContainsFunc(h.s.Infos(), func(i Info) bool {
			return i.Name == info.Name && i.Token == info.Token && i.Hidden && i.Reason == r && i.Remembered == r.Reversible()
		}) {
			t.Fatalf("hidden token %d of %q is not listed as hidden for %q", info.ID, info.Name, r)
		}
	case opRestore:
		r, l := h.pickRemembered(in)
		var raw []byte
		if h.s.WithRemembered(r.ID, func(b []byte) { raw = bytes.Clone(b) }) != (l != nil) {
			t.Fatalf("WithRemembered(%d) disagrees with the model (remembered: %v)", r.ID, l != nil)
		}
		if l != nil && !bytes.Equal(raw, l.raw) {
			t.Fatalf("WithRemembered(%d) gave other bytes than the token hidden", r.ID)
		}
		if got := h.s.Restore(r.ID); got != (l != nil) {
			t.Fatalf("Restore(%d) = %v, the model says remembered %v", r.ID, got, l != nil)
		}
		if l == nil {
			return
		}
		if h.s.Restore(r.ID) {
			t.Fatalf("Restore(%d) twice", r.ID)
		}
		m := h.model[r.Name]
		l.state, l.reason, l.epoch, l.misses = lineShown, token.Valid, 0, 0
		m.visible = true
		h.clock++
		m.seq = h.clock
		h.renumbered(r.Name, m, fmt.Sprintf("Restore(%d)", r.ID))
	case opMissed:
		r, l := h.pickRemembered(in)
		epoch := uint64(in.next(4))
		// A not-yet-valid token that misses becomes a rotated-key one,
		// hidden at this epoch with no miss yet.
		nyv := l != nil && l.reason != token.RotatedKey
		zeroed := l != nil && !nyv && epoch > l.epoch && l.misses == 1
		if got := h.s.Missed(r.ID, epoch); got != zeroed {
			t.Fatalf("Missed(%d, %d) = %v, want %v", r.ID, epoch, got, zeroed)
		}
		switch {
		case nyv:
			l.reason, l.epoch, l.misses = token.RotatedKey, epoch, 0
		case l == nil || epoch <= l.epoch:
		case zeroed:
			l.state = lineGone
		default:
			l.epoch, l.misses = epoch, l.misses+1
		}
	case opForget:
		r, l := h.pickRemembered(in)
		if got := h.s.Forget(r.ID, token.Expired); got != (l != nil) {
			t.Fatalf("Forget(%d) = %v, the model says remembered %v", r.ID, got, l != nil)
		}
		if l != nil {
			l.state, l.reason = lineGone, token.Expired
		}
	case opMark:
		var shownInfos []Info
		for _, info := range h.s.Infos() {
			if !info.Hidden {
				shownInfos = append(shownInfos, info)
			}
		}
		k := in.next(len(shownInfos) + 1)
		r := []token.Reason{token.UnknownKey, token.Valid, token.Expired}[in.next(3)]
		if k == len(shownInfos) {
			if h.s.Mark(1<<40, token.UnknownKey) {
				t.Fatal("Mark of an id never given out reported a shown token")
			}
			return
		}
		info := shownInfos[k]
		if got := h.s.Mark(info.ID, r); got != !r.Hides() {
			t.Fatalf("Mark(%d, %q) = %v", info.ID, r, got)
		}
		if r.Hides() {
			return
		}
		pos := 0
		for _, other := range shownInfos[:k] {
			if other.Name == info.Name {
				pos++
			}
		}
		m := h.visible(info.Name)
		m.lines[m.nth(lineShown, pos)].reason = r
	case opRemove:
		// Any committed file goes, shown or not.
		name := fuzzNames[in.next(len(fuzzNames))]
		err := h.s.Remove(name)
		var want error
		if h.model[name] == nil {
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
		h.wipedPending(maps.Keys(maps.Clone(h.pending)))
	case opCandidates:
		cands, err := h.s.Candidates()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, m := range h.model {
			n += len(m.shownTokens())
		}
		if len(cands) != n {
			t.Fatalf("Candidates gave %d tokens, the model shows %d", len(cands), n)
		}
		for _, c := range cands {
			m := h.visible(c.Name)
			if m == nil || !slices.ContainsFunc(m.shownTokens(), func(raw []byte) bool { return bytes.Equal(raw, c.Raw.Bytes()) }) {
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
		if c.Kind == Removed && h.quiet[c.Ino] {
			delete(h.quiet, c.Ino)
			continue
		}
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
	for ino, name := range h.pending {
		if got, ok := h.s.Exists(ino); !ok || got != name || !h.s.Pending(ino) {
			t.Fatalf("pending %q (inode %d): Exists %q %v, Pending %v", name, ino, got, ok, h.s.Pending(ino))
		}
		if got, a, ok := h.s.Stat(ino); !ok || got != name || a.Size != 0 || !a.Pending {
			t.Fatalf("Stat of pending %q (inode %d): %q %+v %v", name, ino, got, a, ok)
		}
		if h.visible(name) == nil {
			if _, ok := h.s.Lookup(name); ok {
				t.Fatalf("pending %q is found by name", name)
			}
		}
	}
	if len(h.quiet) != 0 {
		t.Fatalf("no Removed event for wiped pending inodes %v", slices.Sorted(maps.Keys(h.quiet)))
	}
	for name, m := range h.model {
		if got, ok := h.s.Exists(m.ino); !ok || got != name || h.s.Pending(m.ino) {
			t.Fatalf("Exists(%d) = %q %v (pending %v), the model has %q", m.ino, got, ok, h.s.Pending(m.ino), name)
		}
		if !m.visible {
			if _, ok := h.s.Lookup(name); ok {
				t.Fatalf("%q is shown although all its tokens are hidden", name)
			}
			if _, _, ok := h.s.Stat(m.ino); ok {
				t.Fatalf("Stat finds hidden %q", name)
			}
		}
		// Byte for byte: what is left of the last commit (hidden files
		// keep their comments for their writer), restored tokens at their
		// place.
		if got, want := h.bytes(name, m.ino), m.want(); !bytes.Equal(got, want) {
			t.Fatalf("%q holds %q, the model %q", name, got, want)
		}
	}
	for ino := range h.gone {
		if _, ok := h.s.Exists(ino); ok {
			t.Fatalf("inode %d was dropped but the store still has it", ino)
		}
	}
	ids := map[uint64]bool{}
	type count struct{ shown, remembered int }
	per := map[string]count{}
	var shownReasons = map[string][]token.Reason{}
	for _, info := range h.s.Infos() {
		if ids[info.ID] {
			t.Fatalf("token id %d listed twice", info.ID)
		}
		ids[info.ID] = true
		if info.Hidden != info.Reason.Hides() || info.Remembered && !info.Hidden {
			t.Fatalf("token %d of %q: hidden %v, remembered %v, with reason %q", info.ID, info.Name, info.Hidden, info.Remembered, info.Reason)
		}
		c := per[info.Name]
		switch {
		case info.Remembered:
			c.remembered++
		case !info.Hidden:
			c.shown++
			shownReasons[info.Name] = append(shownReasons[info.Name], info.Reason)
		}
		per[info.Name] = c
	}
	for name, m := range h.model {
		var want count
		var reasons []token.Reason
		for _, l := range m.lines {
			switch l.state {
			case lineShown:
				want.shown++
				reasons = append(reasons, l.reason)
			case lineRemembered:
				want.remembered++
			}
		}
		if per[name] != want || !slices.Equal(shownReasons[name], reasons) {
			t.Fatalf("Infos shows %+v tokens of %q (reasons %q), the model %+v (%q)", per[name], name, shownReasons[name], want, reasons)
		}
		delete(per, name)
	}
	for name, c := range per {
		if c.shown+c.remembered > 0 {
			t.Fatalf("Infos shows tokens of %q, which the model does not have", name)
		}
	}
	names, lines := h.remembered()
	rs := h.s.Remembered()
	if len(rs) != len(names) {
		t.Fatalf("Remembered lists %d tokens, the model %d", len(rs), len(names))
	}
	for i, r := range rs {
		l := lines[i]
		tk, _ := token.Parse(l.raw)
		if r.Name != names[i] || r.Token != *tk || r.Reason != l.reason || r.Epoch != l.epoch || r.Misses != l.misses {
			t.Fatalf("Remembered[%d] = %q %q epoch %d misses %d, the model's %q %q epoch %d misses %d (hide order)",
				i, r.Name, r.Reason, r.Epoch, r.Misses, names[i], l.reason, l.epoch, l.misses)
		}
	}
}
