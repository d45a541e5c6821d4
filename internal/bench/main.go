// Command bench measures tokend on this machine and prints each figure
// beside a baseline measured in the same run, as a ratio, with the goal
// from the project's issues:
//
//   - reading: HTCondor's read sequence (internal/condor.Read) over 1, 16
//     and 128 token files, one open+read+close, and 32 parallel readers, on
//     a real agent's mount against the same files on tmpfs (/dev/shm);
//   - start and stop of an agent; memory of one idle agent and of a fleet
//     of idle agents of different users (RSS and PSS from /proc); an
//     agent's private memory after a burst of writes and reads, beside one
//     never used (burst.go);
//   - key rotation with a real verifyd: the time until the stale token is
//     gone from the directory and to the fresh session token, against an
//     agent whose verifyd grants no refetch slots; a tool reading every
//     30 ms across a rotation, with the gate and without (gate.go); how a
//     fleet's refetches spread out;
//   - verifyd's refetch schedule alone (no mounts): 1000 agents' slots,
//     and 100 with one in ten urgent, against the rate;
//   - login sessions (`tokend session open|close`), when available.
//
// Usage (as root; `make bench` builds bin/tokend first):
//
//	go run ./internal/bench -tokend bin/tokend [-agents 100] [-rounds 15] [-only PHASE,...]
//
// Agents run as the users tokend-bench-000, -001, ..., created with
// useradd when missing and kept for later runs. Reads are timed by this
// program run as the mount's owner (the worker, see worker.go): a tokend
// mount admits nobody else. Every agent, mount and process the run starts
// is gone when it ends, interrupted or not.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/internal/testenv/proc"
	"github.com/tokend/tokend/internal/testenv/verifydproc"
	"github.com/tokend/tokend/token"
)

// bench is one run.
type bench struct {
	tokend    string // the tokend binary (absolute)
	self      string // a copy of this program every user can run: the worker
	work      string // the run's directory (root, 0711)
	shm       string // the run's tmpfs directory for baselines (root, 0711)
	notifyDir string // agents' NOTIFY_SOCKETs
	fleet     int    // agents in the fleet figures
	rounds    int    // timing rounds of each read figure
	progress  io.Writer

	verifyd *verifydproc.Proc
	pool    []byte // verifyd's current POOL key file

	// Figures later phases compare with (zero when not measured).
	startUsable time.Duration // agent start to session token readable
	stopTime    time.Duration // SIGTERM to exited
	oneRSS      int64         // KiB, one idle agent
	sshRSS      int64         // KiB, an idle ssh-agent

	mu       sync.Mutex // guards the fields below (agents start and stop concurrently)
	seq      int
	agents   map[*agent]bool // running
	rows     []row
	notes    []string
	cleanups []func()
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == workerFlag {
		os.Exit(worker(os.Args[2:]))
	}
	tokend := flag.String("tokend", "bin/tokend", "the tokend `binary` to measure (built without -race)")
	fleet := flag.Int("agents", 100, "idle agents of different users for the fleet figures")
	rounds := flag.Int("rounds", 15, "timing rounds of each read figure")
	only := flag.String("only", "", "run only these `phases` (comma-separated: reading, start, memory, burst, rotation, gate, fleet, slots, sessions); slots alone needs no root")
	flag.Parse()
	os.Exit(run(*tokend, *fleet, *rounds, *only))
}

func run(tokend string, fleet, rounds int, only string) int {
	b := &bench{fleet: fleet, rounds: rounds, progress: os.Stderr, agents: map[*agent]bool{}}
	if slotsOnly(only) {
		err := b.slotsPhase()
		b.print(os.Stdout)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: slots: %v\n", err)
			return 1
		}
		return 0
	}
	if err := b.setup(tokend); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		b.cleanup()
		return 1
	}
	var once sync.Once
	cleanup := func() { once.Do(b.cleanup) }
	defer cleanup()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "\nbench: interrupted; stopping every agent")
		cleanup()
		os.Exit(130)
	}()

	started := time.Now()
	phases := []struct {
		name string
		run  func() error
	}{
		{"reading", b.reading},
		{"start", b.lifecycle},
		{"memory", b.memory},
		{"burst", b.burst},
		{"rotation", b.rotation},
		{"gate", b.gatePhase},
		{"fleet", b.fleetPhase},
		{"slots", b.slotsPhase},
		{"sessions", b.sessions},
	}
	failed := false
	for _, p := range phases {
		if only != "" && !slices.Contains(strings.Split(only, ","), p.name) {
			continue
		}
		b.logf("== %s", p.name)
		if err := p.run(); err != nil {
			failed = true
			b.logf("%s: %v", p.name, err)
			b.note("%s failed: %v", p.name, firstLine(err.Error()))
		}
		b.stopAll()
	}
	b.note("total run time %s; tokend %s; %s", time.Since(started).Round(time.Second), b.tokend, machine())
	b.print(os.Stdout)
	if failed {
		return 1
	}
	return 0
}

// logf prints progress on stderr.
func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "bench: "+format+"\n", args...)
}

// setup checks the machine and prepares the run's directories, the worker
// and verifyd.
func (b *bench) setup(tokend string) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root: agents run as the bench users and mount FUSE (sudo make bench)")
	}
	var err error
	if b.tokend, err = filepath.Abs(tokend); err != nil {
		return err
	}
	if st, err := os.Stat(b.tokend); err != nil || st.Mode().Perm()&0o005 != 0o005 {
		return fmt.Errorf("%s must exist and be executable by everyone (make build): %v", b.tokend, err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		return errors.New("fusermount3 is missing: run .ci/setup (make bench does)")
	}
	if st, err := os.Stat("/dev/fuse"); err != nil || st.Mode().Perm()&0o006 != 0o006 {
		return errors.New("/dev/fuse is not usable by ordinary users: run .ci/setup (make bench does)")
	}
	if b.work, err = os.MkdirTemp("", "tokend-bench-"); err != nil {
		return err
	}
	if b.shm, err = os.MkdirTemp("/dev/shm", "tokend-bench-"); err != nil {
		return fmt.Errorf("tmpfs baseline: %w", err)
	}
	for _, d := range []string{b.work, b.shm} {
		if err := os.Chmod(d, 0o711); err != nil {
			return err
		}
	}
	b.notifyDir = filepath.Join(b.work, "notify")
	if err := os.Mkdir(b.notifyDir, 0o711); err != nil {
		return err
	}
	if err := b.copySelf(); err != nil {
		return fmt.Errorf("copying the worker: %w", err)
	}
	b.pool = keys.NewFile()
	if b.verifyd, err = b.startVerifyd(b.pool); err != nil {
		return err
	}
	return nil
}

// copySelf puts a copy of this program where every user can run it.
func (b *bench) copySelf() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		return err
	}
	b.self = filepath.Join(b.work, "bench-worker")
	return os.WriteFile(b.self, data, 0o755)
}

// users returns the first n bench users, creating missing ones.
func (b *bench) users(n int) ([]proc.User, error) {
	var out []proc.User
	for i := range n {
		u, err := ensureUser(benchUser(i))
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// homes makes a bench directory for each user under a new folder named
// phase, each with the pool's current key.
func (b *bench) homes(phase string, users []proc.User) ([]*home, error) {
	parent := filepath.Join(b.work, phase)
	if err := os.Mkdir(parent, 0o711); err != nil {
		return nil, err
	}
	var out []*home
	for _, u := range users {
		h, err := newHome(parent, u, b.pool)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

// rotate gives the pool a new key the way a site would: the schedd's copy
// (every home's, for the embedded issuer) first, then verifyd's by rename.
// It returns the time of the rename.
func (b *bench) rotate(hs []*home) (time.Time, time.Duration, error) {
	key := keys.NewFile()
	for _, h := range hs {
		if err := h.setKey(key); err != nil {
			return time.Time{}, 0, err
		}
	}
	b.pool = key
	at, mono := time.Now(), monotonic()
	return at, mono, keys.Install(filepath.Join(b.verifyd.Keys, token.PoolKeyName), key, 0, 0)
}

// stopAll stops every agent still running.
func (b *bench) stopAll() {
	b.mu.Lock()
	var running []*agent
	for a := range b.agents {
		running = append(running, a)
	}
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, a := range running {
		wg.Go(func() {
			if err := b.stopAgent(a); err != nil {
				b.logf("%v", err)
			}
		})
	}
	wg.Wait()
}

// atExit registers f to run when the run ends, interrupted or not (last
// registered, first run).
func (b *bench) atExit(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cleanups = append(b.cleanups, f)
}

// cleanup stops everything the run started and removes its directories.
func (b *bench) cleanup() {
	b.stopAll()
	b.mu.Lock()
	cleanups := b.cleanups
	b.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	for _, d := range []string{b.work, b.shm} {
		if d != "" {
			if err := os.RemoveAll(d); err != nil {
				b.logf("cleanup: %v", err)
			}
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// machine describes the host in one line.
func machine() string {
	var u syscall.Utsname
	syscall.Uname(&u)
	rel := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	cpus := 0
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		cpus = strings.Count(string(data), "\nprocessor")
		if strings.HasPrefix(string(data), "processor") {
			cpus++
		}
	}
	return fmt.Sprintf("Linux %s, %d CPUs (shared machine: compare ratios, not absolute times)", rel, cpus)
}
