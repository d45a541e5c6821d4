package agent

import (
	"context"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv"
)

func TestProcs(t *testing.T) {
	for _, c := range []struct {
		env       string
		cur, want int
	}{
		{"", 64, agentProcs},  // a big host's default: pinned
		{"", 128, agentProcs}, //
		{"", 1, 1},            // a cgroup's single CPU stays
		{"", agentProcs, agentProcs},
		{"64", 64, 64},           // set explicitly: honoured
		{"1", 1, 1},              //
		{"0", 64, agentProcs},    // ignored by the runtime, so pinned
		{"-3", 64, agentProcs},   //
		{"+8", 64, agentProcs},   // the runtime takes digits only
		{"many", 64, agentProcs}, //
		{" 8", 64, agentProcs},   //
	} {
		if got := procs(c.env, c.cur); got != c.want {
			t.Errorf("procs(GOMAXPROCS=%q, current %d) = %d, want %d", c.env, c.cur, got, c.want)
		}
	}
}

func TestPinProcs(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })

	runtime.GOMAXPROCS(agentProcs + 6)
	if got := PinProcs(""); got != agentProcs || runtime.GOMAXPROCS(0) != agentProcs {
		t.Errorf("PinProcs(\"\") = %d, GOMAXPROCS %d; want both %d", got, runtime.GOMAXPROCS(0), agentProcs)
	}
	runtime.GOMAXPROCS(agentProcs + 6)
	if got := PinProcs("8"); got != agentProcs+6 || runtime.GOMAXPROCS(0) != agentProcs+6 {
		t.Errorf("PinProcs(\"8\") = %d, GOMAXPROCS %d; want the runtime's %d kept", got, runtime.GOMAXPROCS(0), agentProcs+6)
	}
}

func TestReturnerLooks(t *testing.T) {
	const mib = 1 << 20
	// Each step is one look: bytes allocated since the start, free heap
	// pages, and whether memory goes back.
	steps := []struct {
		allocs, free uint64
		want         bool
	}{
		{1 * mib, 0, false},              // the start: no collection yet, nothing free
		{1*mib + 300, 0, false},          // idle, nothing free
		{1*mib + 600, 0, false},          //
		{40 * mib, 3 * mib, false},       // a burst: pages freed but in use again soon
		{80 * mib, 3 * mib, false},       // still busy
		{80*mib + 100, 3 * mib, true},    // idle after it: return
		{80*mib + 200, 0, false},         // (after the return) idle, nothing free
		{80*mib + 300, 0, false},         //
		{80*mib + 400, 2 * mib, true},    // a collection freed pooled buffers: return
		{80*mib + 500, 0, false},         //
		{81 * mib, freeBytes - 1, false}, // a small burst leaves little free
		{81 * mib, freeBytes - 1, false}, // and idle stays idle
		{81 * mib, freeBytes, true},      //
	}
	var r returner
	for i, s := range steps {
		if got := r.look(heap{allocs: s.allocs, free: s.free}); got != s.want {
			t.Errorf("look %d (allocs %d, free %d) = %v, want %v", i, s.allocs, s.free, got, s.want)
		}
	}
}

// TestReturnMemoryLoop drives the loop with its own ticks: it returns memory
// at the tick after a burst that finds free pages, never while idle, and
// stops with its context.
func TestReturnMemoryLoop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	tick := make(chan time.Time)
	heaps := make(chan heap)
	released := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		returnMemory(ctx, tick, func() heap { return <-heaps }, func() { released <- struct{}{} })
	}()
	look := func(h heap) {
		t.Helper()
		tick <- time.Time{}
		heaps <- h
	}
	noRelease := func(when string) {
		t.Helper()
		select {
		case <-released:
			t.Fatalf("memory returned %s", when)
		default:
		}
	}

	look(heap{allocs: 1000})
	look(heap{allocs: 1100})
	noRelease("while idle")
	look(heap{allocs: 50 << 20, free: 4 << 20})
	noRelease("during a burst")
	look(heap{allocs: 50<<20 + 10, free: 4 << 20})
	heaps <- heap{allocs: 50<<20 + 20} // read after the return
	<-released
	look(heap{allocs: 50<<20 + 30})
	look(heap{allocs: 50<<20 + 40})
	noRelease("while idle after a return")

	cancel()
	<-done
}

// TestFreeOSMemoryReturnsFreePages checks the figure the loop reads: after a
// burst's garbage is collected, free pages show in readHeap until
// debug.FreeOSMemory returns them.
func TestFreeOSMemoryReturnsFreePages(t *testing.T) {
	before := readHeap()
	var burst [][]byte
	for range 256 {
		burst = append(burst, make([]byte, 32<<10))
	}
	runtime.KeepAlive(burst)
	after := readHeap()
	if after.allocs-before.allocs < 8<<20 {
		t.Fatalf("allocs grew by %d bytes, want at least 8 MiB", after.allocs-before.allocs)
	}
	burst = nil
	runtime.GC()
	if h := readHeap(); h.free < freeBytes {
		t.Fatalf("after a collection %d bytes free, want at least %d", h.free, freeBytes)
	}
	// Other tests' goroutines may free memory meanwhile: return and look
	// again until the figure is down, within a deadline.
	testenv.Eventually(t, 5*time.Second, "debug.FreeOSMemory to return the free pages", func() bool {
		debug.FreeOSMemory()
		return readHeap().free < freeBytes
	})
}
