package store

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// TestBudget64KiB: under the RLIMIT_MEMLOCK of 64 KiB that EL 8 and 9 user
// sessions may have, everything a session holds is locked: 13 shown tokens
// of 1 KiB, 7 remembered ones (8 KiB), the copies of a check pass and two
// drafts. Past it, remembered tokens are zeroed before any live secret
// falls back to unlocked memory.
func TestBudget64KiB(t *testing.T) {
	if !testenv.MemlockChild() {
		out := testenv.RunUnderMemlock(t, "TestBudget64KiB", 64<<10)
		if !strings.Contains(out, "budget ok") {
			t.Fatalf("child said:\n%s", out)
		}
		for line := range strings.Lines(out) {
			if strings.HasPrefix(line, "in use:") {
				t.Log(strings.TrimSpace(line))
			}
		}
		return
	}
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "child: "+format+"\n", args...)
		os.Exit(3)
	}
	s := New(Limits{})
	secmem.SetReclaim(s.ReclaimOne)
	for i := range 13 + 7 {
		name := fmt.Sprintf("t%02d", i)
		raw := bigTok(t, name, 1000)
		if _, err := s.Put(name, lines(raw), nil); err != nil {
			fail("Put: %v", err)
		}
		if i >= 13 {
			s.Hide(idOf(t, s, name, mustParse(t, raw).Sub), token.RotatedKey, 0)
		}
	}
	cands, err := s.Candidates()
	if err != nil {
		fail("Candidates: %v", err)
	}
	d1, _ := secmem.New(2048)
	d2, _ := secmem.New(2048)
	st := secmem.ReadStats()
	if n := len(s.Remembered()); secmem.LockFailed() || n != 7 || len(cands) != 13 {
		fail("within the budget: lock failed %v, %d remembered, %d candidates, %+v", secmem.LockFailed(), n, len(cands), st)
	}
	fmt.Printf("in use: %d bytes locked of %d\n", st.Locked, st.Limit)
	// Past it: more live secrets push the remembered tokens out first.
	var more []*secmem.Buffer
	for !secmem.LockFailed() {
		b, err := secmem.New(1000)
		if err != nil {
			fail("New: %v", err)
		}
		more = append(more, b)
	}
	if n := len(s.Remembered()); n != 0 {
		fail("memory fell back to unlocked while %d remembered tokens were kept", n)
	}
	for _, b := range append(more, d1, d2) {
		b.Wipe()
	}
	for _, c := range cands {
		c.Raw.Wipe()
	}
	s.Close()
	fmt.Println("budget ok")
}
