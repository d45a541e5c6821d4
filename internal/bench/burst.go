package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/internal/testenv/proc"
)

// The burst phase: what a burst of work costs an agent in memory once it is
// over, against an agent of the same run that was never used.
const (
	burstAfter = 30 * time.Second // when the after-burst figure is read
	burstGoal  = 2560             // KiB of private memory burstAfter later
)

// burstVariant is one burst and the environment both agents run with.
type burstVariant struct {
	name           string
	env            []string
	writes         int  // tokens written through the mount
	reads, readers int  // HTCondor read sequences, and how many run at once
	goal           bool // the goal applies
}

var burstVariants = []burstVariant{
	// Issue 11's burst, the agent as shipped.
	{name: "agent as shipped", writes: 16, reads: 400, readers: 8, goal: true},
	// The same where the Go runtime would set GOMAXPROCS=64 (a 64-core
	// host) and the agent did not pin it: set explicitly, the agent honours
	// it.
	{name: "GOMAXPROCS=64", env: []string{"GOMAXPROCS=64"}, writes: 16, reads: 400, readers: 8},
	// A burst large enough for the garbage collector to run during it:
	// what the agent gives back once idle.
	{name: "128 writes, 3000 reads by 32", writes: 128, reads: 3000, readers: 32},
}

// burst measures, for each variant, the private memory of an agent after a
// burst of writes and reads beside that of an agent that was never used,
// both started together.
func (b *bench) burst() error {
	const section = secMemory
	users, err := b.users(2)
	if err != nil {
		return err
	}
	for i, v := range burstVariants {
		if err := b.burstVariant(section, fmt.Sprintf("burst%d", i), users, v); err != nil {
			return err
		}
	}
	b.note("burst: private memory is RssAnon (/proc/PID/status: the Go heap, stacks, runtime and the mlocked token " +
		"pages, one or more per token). Each burst writes its tokens with HTCondor's writer, spread evenly over its " +
		"read sequences, which run on as many threads at once; the never-used agent started with the busy one and " +
		"only fetched its session token. GOMAXPROCS=64 is set explicitly, as the Go runtime sets it by default on a " +
		"64-core host; the agent pins it to 2 unless it is set")
	return nil
}

func (b *bench) burstVariant(section, phase string, users []proc.User, v burstVariant) error {
	hs, err := b.homes(phase, users)
	if err != nil {
		return err
	}
	var agents []*agent
	for _, h := range hs {
		if err := h.writeConfig(b.verifyd.Sock, nil); err != nil {
			return err
		}
		a, err := b.startServing(h, v.env...)
		if err != nil {
			return err
		}
		agents = append(agents, a)
	}
	idle, busy := agents[0], agents[1]

	toks, err := busy.h.signN(v.writes)
	if err != nil {
		return err
	}
	b.logf("burst, %s: %d writes, %d read sequences by %d readers", v.name, v.writes, v.reads, v.readers)
	if _, err := b.runWorker(busy.h.u, bytes.Join(toks, []byte("\n")), "burst", busy.h.tokens, "b",
		strconv.Itoa(v.reads), strconv.Itoa(v.readers)); err != nil {
		return err
	}
	end := time.Now()
	atEnd, err := readMem(busy.pid(), b.tokend)
	if err != nil {
		return err
	}
	// Follow the busy agent's private memory, to say when it came down.
	var trace []string
	var after mem
	for s := 5 * time.Second; s <= burstAfter; s += 5 * time.Second {
		time.Sleep(time.Until(end.Add(s)))
		if after, err = readMem(busy.pid(), b.tokend); err != nil {
			return err
		}
		trace = append(trace, fmt.Sprintf("%d s %s", int(s.Seconds()), kib(after.rssAnon)))
	}
	never, err := readMem(idle.pid(), b.tokend)
	if err != nil {
		return err
	}

	base := kib(never.rssAnon) + " never used"
	b.add(row{section: section, figure: "after a burst, " + v.name + ": private, at its end",
		value: kib(atEnd.rssAnon), baseline: base, ratio: ratio(float64(atEnd.rssAnon) / float64(never.rssAnon))})
	r := row{section: section, figure: fmt.Sprintf("  %d s later", int(burstAfter.Seconds())),
		value: kib(after.rssAnon), baseline: base, ratio: ratio(float64(after.rssAnon) / float64(never.rssAnon))}
	if v.goal {
		r.goal, r.verdict = "≤ 2.5 MiB", verdict(float64(after.rssAnon), burstGoal)
	}
	b.add(r)
	b.note("burst, %s (%d writes, %d read sequences by %d readers): private memory after its end: %s; "+
		"threads %d (never used: %d)", v.name, v.writes, v.reads, v.readers, strings.Join(trace, ", "),
		threads(busy.pid()), threads(idle.pid()))
	for _, a := range agents {
		if err := b.stopAgent(a); err != nil {
			return err
		}
	}
	return nil
}

// threads is pid's number of threads, 0 if unknown.
func threads(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(rest))
			return n
		}
	}
	return 0
}

// burstJob is the worker's burst job: par readers run the read sequence on
// dir, seqs times in all, each on its own thread as separate tools would;
// meanwhile the tokens on stdin are written as dir/prefix-000, ..., spread
// evenly over the reads.
func burstJob(dir, prefix, seqsArg, parArg string, in io.Reader) error {
	seqs, err := strconv.Atoi(seqsArg)
	if err != nil {
		return err
	}
	par, err := strconv.Atoi(parArg)
	if err != nil {
		return err
	}
	var toks [][]byte
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		if t := bytes.TrimSpace(sc.Bytes()); len(t) > 0 {
			toks = append(toks, bytes.Clone(t))
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(toks) == 0 || seqs < len(toks) || par < 1 {
		return errors.New("burst: want tokens on stdin and at least as many sequences as tokens")
	}
	runtime.GOMAXPROCS(max(par, runtime.GOMAXPROCS(0)))
	var done atomic.Int64 // sequences run
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	for range par {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for done.Add(1) <= int64(seqs) && failed.Load() == nil {
				if _, err := condor.Read(dir, os.Getuid()); err != nil {
					failed.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	for i, t := range toks {
		// Token i goes in once i/len(toks) of the reads are done.
		for done.Load() < int64(i*seqs/len(toks)) && failed.Load() == nil {
			time.Sleep(100 * time.Microsecond)
		}
		if err := condor.Write(filepath.Join(dir, fmt.Sprintf("%s-%03d", prefix, i)), t); err != nil {
			failed.CompareAndSwap(nil, &err)
			break
		}
	}
	wg.Wait()
	if p := failed.Load(); p != nil {
		return *p
	}
	files, err := condor.Read(dir, os.Getuid())
	if err != nil {
		return err
	}
	if len(files) != len(toks)+1 {
		return fmt.Errorf("burst: the directory shows %d files after the burst, want %d", len(files), len(toks)+1)
	}
	return nil
}
