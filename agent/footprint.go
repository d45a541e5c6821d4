package agent

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"time"
)

// An access point runs one agent per logged-in user, hundreds of them, on
// 32 to 128 cores. Two things keep each agent small there: GOMAXPROCS is
// pinned low (the runtime's per-P caches and go-fuse's idle readers grow
// with it: with GOMAXPROCS=64 an agent never used holds 3.5 MiB of private
// memory instead of 1.8), and memory a burst of work took is given back once
// the agent is idle again (left to itself, the Go runtime keeps free heap
// pages up to about 110% of its heap goal, which is 4 MiB at least).

// agentProcs is the agent's GOMAXPROCS unless the environment sets one. Its
// work is small (FUSE requests the kernel's caches miss, token checks, its
// socket); two let a request be served while the garbage collector or a
// check runs, and are go-fuse's minimum of idle readers anyway. One was
// tried: with a single request per token check it cut the CPU time of 100
// agents at a key change by almost three (the second P's spinning thread),
// but with the checks batched (validate.BatchKeyChecker) the difference is
// small, and one P left more memory behind a burst (2.6 MiB instead of
// 2.5 MiB in most runs of `make bench`, burst).
const agentProcs = 2

// PinProcs lowers GOMAXPROCS to agentProcs unless env, the value of the
// GOMAXPROCS environment variable, is one the Go runtime honoured (an
// administrator's explicit choice stays). It returns the GOMAXPROCS in
// force. Call it before mounting: go-fuse sizes its readers from it. A
// cgroup's CPU limit below agentProcs at the start still counts; once
// lowered, GOMAXPROCS no longer follows later changes of that limit.
func PinProcs(env string) int {
	cur := runtime.GOMAXPROCS(0)
	if n := procs(env, cur); n != cur {
		runtime.GOMAXPROCS(n)
		return n
	}
	return cur
}

// procs is the GOMAXPROCS the agent runs with, given the environment's
// GOMAXPROCS and the runtime's current one.
func procs(env string, cur int) int {
	// The runtime honours a positive decimal number and ignores anything
	// else.
	if n, err := strconv.ParseUint(env, 10, 31); err == nil && n > 0 {
		return cur
	}
	return min(cur, agentProcs)
}

// The agent looks at its heap every returnEvery. Memory goes back at the
// first look that finds the agent idle with free heap pages it has not yet
// returned, at most two looks after a burst ends.
//
// Free pages exist only once the garbage collector has run, and it runs only
// when the heap reaches its goal (4 MiB at least) or two minutes after its
// last run. So a small burst is left alone: forcing a first collection would
// cost more than it frees (its mark bits and work buffers, 0.2 to 0.6 MiB,
// stay with the process), and its garbage is what every agent carries until
// its heap grows. After a large one the runtime has already collected and
// keeps the free pages for later (it returns only what lies above about 110%
// of the heap goal); debug.FreeOSMemory collects once more and returns them.
// The collection after which go-fuse's pooled request buffers are free comes
// two minutes later (sync.Pool keeps them one collection longer), and the
// next look returns those too.
const (
	returnEvery = 10 * time.Second
	// idleBytes is what an idle agent may allocate between two looks: its
	// timers and looks allocate a few hundred bytes; one FUSE request that
	// the kernel's caches miss allocates up to go-fuse's 68 KiB read
	// buffer.
	idleBytes = 256 << 10
	// freeBytes of free heap pages are worth a collection (about a
	// millisecond of CPU on an agent's heap).
	freeBytes = 512 << 10
)

// ReturnMemory gives memory back to the system after bursts of work until
// ctx ends.
func ReturnMemory(ctx context.Context) {
	t := time.NewTicker(returnEvery)
	defer t.Stop()
	returnMemory(ctx, t.C, readHeap, debug.FreeOSMemory)
}

// returnMemory calls release at each tick that finds the agent idle with
// free heap pages to return.
func returnMemory(ctx context.Context, tick <-chan time.Time, read func() heap, release func()) {
	var r returner
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			if r.look(read()) {
				release()
				r.look(read())
			}
		}
	}
}

// heap is what a look reads.
type heap struct {
	allocs uint64 // bytes allocated since the start
	free   uint64 // bytes of free heap pages not returned to the system
}

// returner decides when memory goes back.
type returner struct {
	allocs uint64 // at the previous look
}

// look reports whether to return memory now: the agent allocated almost
// nothing since the previous look and holds free pages worth returning.
func (r *returner) look(h heap) bool {
	idle := h.allocs-r.allocs < idleBytes
	r.allocs = h.allocs
	return idle && h.free >= freeBytes
}

// readHeap reads the runtime's figures.
func readHeap() heap {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	return heap{allocs: s[0].Value.Uint64(), free: s[1].Value.Uint64()}
}
