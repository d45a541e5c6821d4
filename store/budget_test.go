package store

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// underLimit runs test again in a child under a real RLIMIT_MEMLOCK of
// 64 KiB, and logs the line the child reports starting with report.
func underLimit(t *testing.T, test, report string) {
	t.Helper()
	out := testenv.RunUnderMemlock(t, test, 64<<10)
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, report) {
			t.Log(strings.TrimSpace(line))
			return
		}
	}
	t.Fatalf("the child did not report %q:\n%s", report, out)
}

// TestBudget64KiB: under the RLIMIT_MEMLOCK of 64 KiB that EL 8 and 9 user
// sessions may have, everything a session holds is locked: 13 shown tokens
// of 1 KiB, 7 remembered ones (8 KiB), the copies of a check pass and two
// drafts. Past it, remembered tokens are zeroed before any live secret
// falls back to unlocked memory.
func TestBudget64KiB(t *testing.T) {
	if !testenv.MemlockChild() {
		underLimit(t, "TestBudget64KiB", "budget ok")
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
	fmt.Printf("budget ok: %d bytes locked of %d for it all\n", st.Locked, st.Limit)
}

// TestReclaimUnderLoad: at the edge of a real 64 KiB limit, writers,
// hiders, restorers and checkers race while the reclaim hook zeroes
// remembered tokens from inside their allocations; with -race, this finds
// lock-order mistakes between the store, its remembered list and secmem.
func TestReclaimUnderLoad(t *testing.T) {
	if !testenv.MemlockChild() {
		underLimit(t, "TestReclaimUnderLoad", "load ok")
		return
	}
	s := New(Limits{})
	var reclaimed atomic.Int64
	secmem.SetReclaim(func() bool {
		ok := s.ReclaimOne()
		if ok {
			reclaimed.Add(1)
		}
		return ok
	})
	toks := make([][]byte, 8)
	for i := range toks {
		toks[i] = lines(bigTok(t, fmt.Sprintf("u%d", i), 1500))
	}
	// Fill most of the limit with live secrets, as other users would.
	var ballast []*secmem.Buffer
	for range 40 {
		b, _ := secmem.New(1000)
		ballast = append(ballast, b)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 300 {
				name := fmt.Sprintf("f%d", (g+i)%6)
				switch i % 5 {
				case 0, 1:
					s.Put(name, toks[(g*7+i)%len(toks)], nil)
				case 2:
					for _, in := range s.Infos() {
						if !in.Hidden {
							s.Hide(in.ID, token.RotatedKey, uint64(i))
							break
						}
					}
				case 3:
					for _, r := range s.Remembered() {
						s.WithRemembered(r.ID, func(raw []byte) {
							if c, err := secmem.From(raw); err == nil {
								c.Wipe()
							}
						})
						if i%2 == 0 {
							s.Restore(r.ID)
						} else {
							s.Missed(r.ID, uint64(i))
						}
					}
				case 4:
					cands, err := s.Candidates()
					if err == nil {
						for _, c := range cands {
							c.Raw.Wipe()
						}
					}
				}
			}
		})
	}
	wg.Wait()
	s.Close()
	for _, b := range ballast {
		b.Wipe()
	}
	if n := secmem.Live(); n != 0 {
		fmt.Fprintf(os.Stderr, "child: %d secret buffers never wiped\n", n)
		os.Exit(3)
	}
	if reclaimed.Load() == 0 {
		fmt.Fprintln(os.Stderr, "child: the limit was never reached: the hook was not exercised")
		os.Exit(3)
	}
	fmt.Printf("load ok: %d remembered tokens reclaimed, memory locked: %v\n", reclaimed.Load(), !secmem.LockFailed())
}
