package main

// The worker: this program run as a bench user, because a tokend mount
// admits only its owner (root included is refused). Each job prints its
// result on stdout.
//
//	write DIR PREFIX                 tokens on stdin, one a line, written with
//	                                 HTCondor's writer as DIR/PREFIX-000, ...
//	read MOUNT TMPFS ROUNDS PAR      copy MOUNT's files into TMPFS, then time
//	                                 the read sequence on both (JSON readResult)
//	watch DIR gone|appear TIMEOUT    print "ready", then poll DIR with the read
//	                                 sequence until every token shown at the
//	                                 start is gone (gone) or a token is shown
//	                                 (appear); print CLOCK_MONOTONIC in ns
//	burst DIR PREFIX SEQS PAR        tokens on stdin written as DIR/PREFIX-000,
//	                                 ... while PAR readers run the read
//	                                 sequence SEQS times (burst.go)
//	tool DIR PERIOD DURATION         print "ready", then run the read sequence
//	                                 on DIR every PERIOD for DURATION, one
//	                                 JSON toolRun a line (gate.go)

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/internal/testenv/simwire"
)

// workerFlag, as the first argument, makes this program a worker.
const workerFlag = "-worker"

// worker runs one job and returns the exit code.
func worker(args []string) int {
	var err error
	switch {
	case len(args) == 3 && args[0] == "write":
		err = writeJob(args[1], args[2], os.Stdin)
	case len(args) == 5 && args[0] == "read":
		err = readJob(args[1], args[2], args[3], args[4])
	case len(args) == 4 && args[0] == "watch":
		err = watchJob(args[1], args[2], args[3])
	case len(args) == 4 && args[0] == "tool":
		err = toolJob(args[1], args[2], args[3])
	case len(args) == 5 && args[0] == "burst":
		err = burstJob(args[1], args[2], args[3], args[4], os.Stdin)
	default:
		err = fmt.Errorf("bad worker job %q", args)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// monotonic is CLOCK_MONOTONIC, which every process on the host shares.
func monotonic() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

func writeJob(dir, prefix string, in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for i := 0; sc.Scan(); i++ {
		tok := bytes.TrimSpace(sc.Bytes())
		if len(tok) == 0 {
			continue
		}
		if err := condor.Write(filepath.Join(dir, fmt.Sprintf("%s-%03d", prefix, i)), tok); err != nil {
			return err
		}
	}
	return sc.Err()
}

// shownTokens runs the read sequence on dir and returns every token read.
func shownTokens(dir string) (map[string]bool, error) {
	r, err := simwire.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, f := range r.Files {
		for _, t := range f.Tokens {
			out[t] = true
		}
	}
	return out, nil
}

func watchJob(dir, mode, timeout string) error {
	limit, err := time.ParseDuration(timeout)
	if err != nil {
		return err
	}
	var done func(shown map[string]bool, err error) bool
	switch mode {
	case "gone":
		stale, err := shownTokens(dir)
		if err != nil || len(stale) == 0 {
			return fmt.Errorf("watch gone: %s shows no token to watch (%v)", dir, err)
		}
		done = func(shown map[string]bool, err error) bool {
			if err != nil {
				return false
			}
			for t := range stale {
				if shown[t] {
					return false
				}
			}
			return true
		}
	case "appear":
		done = func(shown map[string]bool, err error) bool { return err == nil && len(shown) > 0 }
	default:
		return fmt.Errorf("watch: mode %q: want gone or appear", mode)
	}
	fmt.Println("ready")
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
		if done(shownTokens(dir)) {
			fmt.Println(int64(monotonic()))
			return nil
		}
		time.Sleep(200 * time.Microsecond)
	}
	return fmt.Errorf("watch %s %s: not within %v", dir, mode, limit)
}

// pair is one figure on the mount and on tmpfs. For times, Mount and Tmpfs
// are nanoseconds per operation; for throughput, operations per second.
// Ratio is always the cost per operation on the mount divided by that on
// tmpfs, the median of the ratios of rounds run back to back.
type pair struct {
	Mount, Tmpfs, Ratio float64
}

// readResult is the output of the read job.
type readResult struct {
	Files    int   // token files read by the sequence
	Sequence pair  // HTCondor's read sequence over the whole directory
	OpenRead pair  // open, read, close of one file
	Parallel *pair // PAR readers of the directory at once; nil when PAR is 0
}

func readJob(mount, tmpfs, roundsArg, parArg string) error {
	rounds, err := strconv.Atoi(roundsArg)
	if err != nil {
		return err
	}
	par, err := strconv.Atoi(parArg)
	if err != nil {
		return err
	}
	if err := mirror(mount, tmpfs); err != nil {
		return err
	}
	seq := func(dir string) func() error {
		return func() error {
			files, err := condor.Read(dir, os.Getuid())
			if err != nil {
				return err
			}
			for _, f := range files {
				if f.Err != nil {
					return f.Err
				}
			}
			return nil
		}
	}
	mf, err := condor.Read(mount, os.Getuid())
	if err != nil {
		return err
	}
	tf, err := condor.Read(tmpfs, os.Getuid())
	if err != nil {
		return err
	}
	if len(mf) != len(tf) || len(mf) == 0 {
		return fmt.Errorf("the mount shows %d files, the tmpfs copy %d", len(mf), len(tf))
	}
	res := readResult{Files: len(mf)}
	const slice = 40 * time.Millisecond
	if res.Sequence, err = compare(rounds, slice, seq(mount), seq(tmpfs)); err != nil {
		return err
	}
	one := filepath.Base(mf[0].Path)
	buf := make([]byte, 64<<10)
	orc := func(dir string) func() error {
		p := filepath.Join(dir, one)
		return func() error {
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			n, err := unix.Read(fd, buf)
			unix.Close(fd)
			if err == nil && n == 0 {
				err = errors.New("empty read")
			}
			return err
		}
	}
	if res.OpenRead, err = compare(rounds, slice, orc(mount), orc(tmpfs)); err != nil {
		return err
	}
	if par > 0 {
		p, err := compareParallel(max(rounds/3, 3), 150*time.Millisecond, par, seq(mount), seq(tmpfs))
		if err != nil {
			return err
		}
		res.Parallel = &p
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// mirror makes dst hold exactly the files of src, same names and content,
// mode 0600.
func mirror(src, dst string) error {
	old, err := os.ReadDir(dst)
	if err != nil {
		return err
	}
	for _, e := range old {
		if err := os.Remove(filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// timeOps runs op for about d and returns nanoseconds per run.
func timeOps(d time.Duration, op func() error) (float64, error) {
	start := time.Now()
	for n := 1; ; n++ {
		if err := op(); err != nil {
			return 0, err
		}
		if el := time.Since(start); el >= d {
			return float64(el.Nanoseconds()) / float64(n), nil
		}
	}
}

// compare times mount and tmpfs in alternating slices of d, after a
// warm-up of each, and returns the medians.
func compare(rounds int, d time.Duration, mount, tmpfs func() error) (pair, error) {
	for _, op := range []func() error{mount, tmpfs} {
		if _, err := timeOps(d, op); err != nil {
			return pair{}, err
		}
	}
	var ms, ts, rs []float64
	for i := range rounds {
		var m, t float64
		var err1, err2 error
		if i%2 == 0 {
			m, err1 = timeOps(d, mount)
			t, err2 = timeOps(d, tmpfs)
		} else {
			t, err2 = timeOps(d, tmpfs)
			m, err1 = timeOps(d, mount)
		}
		if err := errors.Join(err1, err2); err != nil {
			return pair{}, err
		}
		ms, ts, rs = append(ms, m), append(ts, t), append(rs, m/t)
	}
	return pair{Mount: median(ms), Tmpfs: median(ts), Ratio: median(rs)}, nil
}

// compareParallel measures the throughput of n readers at once (each on
// its own OS thread, with as many Ps, as n separate tools would run) on
// mount and on tmpfs, in alternating rounds.
func compareParallel(rounds int, d time.Duration, n int, mount, tmpfs func() error) (pair, error) {
	prev := runtime.GOMAXPROCS(n)
	defer runtime.GOMAXPROCS(prev)
	var ms, ts, rs []float64
	for i := range rounds + 1 {
		m, err1 := throughput(d, n, mount)
		t, err2 := throughput(d, n, tmpfs)
		if err := errors.Join(err1, err2); err != nil {
			return pair{}, err
		}
		if i == 0 {
			continue // warm-up
		}
		ms, ts, rs = append(ms, m), append(ts, t), append(rs, t/m)
	}
	return pair{Mount: median(ms), Tmpfs: median(ts), Ratio: median(rs)}, nil
}

// throughput runs op in n goroutines, each locked to a thread, for d and
// returns operations per second.
func throughput(d time.Duration, n int, op func() error) (float64, error) {
	var total atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			<-start
			count := int64(0)
			for end := time.Now().Add(d); time.Now().Before(end); count++ {
				if err := op(); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
			total.Add(count)
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	return float64(total.Load()) / time.Since(t0).Seconds(), firstErr
}
