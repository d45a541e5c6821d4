package fusefs

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/store"
	"github.com/tokend/tokend/token"
)

var (
	// stressTime is how long TestStress runs; longer runs:
	// go test ./fusefs -run TestStress -stress 2m (or TOKEND_STRESS=2m).
	stressTime = flag.Duration("stress", envDuration("TOKEND_STRESS", 3*time.Second), "how long TestStress hammers the mount")
	// stressStrict also fails TestStress on the known races
	// (mountWriteRace).
	stressStrict = flag.Bool("stress.strict", os.Getenv("TOKEND_STRESS_STRICT") != "", "fail TestStress on every torn read, the known races included")
)

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

// Files of the stress test: the agent changes some only through the store
// (fetch, refresh, expiry, rotation, `tokend rm`); HTCondor's writers
// write the others through the mount, and the agent changes those too.
var (
	agentFiles = []string{"tokend-session", "other"}
	mountFiles = []string{"writer-0", "writer-1"}
)

// TestStress runs, all at once and for a bounded time, what a busy session
// does to the token directory: HTCondor tools reading it, HTCondor's writers
// (write_out_token and the older O_APPEND writer), removals, and the agent
// replacing files (refresh) and hiding tokens (expiry, key rotation). It
// checks that
//   - no reader ever takes in a torn or half-written token from a file the
//     agent changes: every token that read_secure_file returned is one of
//     the tokens written, whole (files written through the mount are
//     counted apart: see mountWriteRace);
//   - once writes stop, every file reads back as whole tokens;
//   - read_secure_file fails only the ways HTCondor itself fails when a file
//     changes while it reads it (counted and reported, see expectedEvent);
//   - nothing deadlocks: every goroutine finishes once told to stop;
//   - memory stays bounded during the run (secret buffers, drafts, create
//     handles) and goes back to where it started once the store is wiped
//     and the mount is gone (secret buffers, goroutines, heap).
func TestStress(t *testing.T) {
	testenv.RequireRoot(t, "it mounts in-process with DirectMount")
	runtime.GC()
	goroutines0, secrets0 := runtime.NumGoroutine(), secmem.Live()
	var mem0 runtime.MemStats
	runtime.ReadMemStats(&mem0)

	const maxFiles = 16
	dir := t.TempDir()
	st := store.New(store.Limits{MaxFiles: maxFiles})
	sink := &syncbuf.Buffer{}
	fs, err := Mount(dir, st, Options{
		Logger: slog.New(slog.NewTextHandler(sink, nil)),
		// Long enough that a writer starved by the race detector keeps its
		// draft between its truncate and its write; short enough to wait
		// for at the end.
		DraftTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			st.Wipe()
			fs.Unmount()
		}
	})

	// Tokens of many lengths, so that a reader given one version's size
	// and another version's bytes takes in a torn line.
	var pool [][]byte
	known := map[string]bool{}
	for i := range 48 {
		raw := newToken(t, strings.Repeat("u", 1+i%31)+"@example.org")
		pool = append(pool, raw)
		known[string(raw)] = true
	}
	pick := func(r *rand.Rand) []byte { return pool[r.IntN(len(pool))] }
	path := func(name string) string { return filepath.Join(dir, name) }

	var (
		stop = make(chan struct{})
		wg   sync.WaitGroup
		s    stressStats
	)
	// actor runs step until stop: flat out, or once per tick.
	actor := func(every time.Duration, step func(r *rand.Rand)) {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(rand.Uint64(), 0))
			var tick <-chan time.Time
			if every > 0 {
				tk := time.NewTicker(every)
				defer tk.Stop()
				tick = tk.C
			}
			for {
				if tick != nil {
					select {
					case <-stop:
						return
					case <-tick:
					}
				} else {
					select {
					case <-stop:
						return
					default:
					}
				}
				step(r)
			}
		})
	}

	// Readers: the tools' read sequence, as the owner.
	for range 3 {
		actor(0, func(*rand.Rand) { s.read(dir, known, pool) })
	}
	// Writers: write_out_token mostly, the O_APPEND writer sometimes, each
	// on its own file (two writers racing on one file tear it on any
	// filesystem).
	for _, name := range mountFiles {
		appends := 0
		actor(0, func(r *rand.Rand) {
			var err error
			if appends < 3 && r.IntN(4) == 0 {
				appends++
				err = condor.Append(path(name), pick(r))
			} else {
				appends = 0
				err = condor.Write(path(name), pick(r))
			}
			s.wrote(err)
		})
	}
	// The agent: refreshes (replacing content by name, also a file a
	// writer is writing), expiries and rotations (hiding), `tokend rm`,
	// and a user's rm.
	actor(time.Millisecond, func(r *rand.Rand) {
		names := append(slices.Clone(agentFiles), mountFiles[0])
		content := append(slices.Clone(pick(r)), '\n')
		if r.IntN(3) == 0 {
			content = append(append(content, "# more\n"...), pick(r)...)
		}
		if _, err := st.Put(names[r.IntN(len(names))], content, nil); err != nil {
			s.count("store put: " + err.Error())
		}
	})
	actor(3*time.Millisecond, func(r *rand.Rand) {
		var shown []store.Info
		for _, in := range st.Infos() {
			if !in.Hidden {
				shown = append(shown, in)
			}
		}
		if len(shown) > 0 {
			st.Hide(shown[r.IntN(len(shown))].ID, []token.Reason{token.Expired, token.RotatedKey}[r.IntN(2)], 0)
		}
	})
	actor(7*time.Millisecond, func(r *rand.Rand) {
		if r.IntN(2) == 0 {
			st.Remove(agentFiles[1]) // tokend rm
			return
		}
		names := append(slices.Clone(mountFiles), agentFiles[0])
		err := os.Remove(path(names[r.IntN(len(names))]))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			s.count("unlink: " + errnoOf(err))
		}
	})

	// Watch memory while it runs. Secret buffers: one per file, one per
	// draft, a few in flight. Create handles: at most one per file (the
	// kernel does not always say when a created file is closed).
	var maxSecrets, maxGoroutines, maxDrafts, maxCreated, excess int
	sample := func() {
		fs.mu.Lock()
		drafts, created := len(fs.drafts), len(fs.created)
		secrets := secmem.Live() - secrets0
		fs.mu.Unlock()
		// Files (shown or not), drafts, and a few buffers in flight: a
		// parse, a draft's start, a hide's smaller copy, a resize.
		excess = max(excess, secrets-(maxFiles+drafts+8))
		maxSecrets = max(maxSecrets, secrets)
		maxGoroutines = max(maxGoroutines, runtime.NumGoroutine()-goroutines0)
		maxDrafts = max(maxDrafts, drafts)
		maxCreated = max(maxCreated, created)
	}
	end := time.After(*stressTime)
	tick := time.NewTicker(10 * time.Millisecond)
sampling:
	for {
		select {
		case <-end:
			break sampling
		case <-tick.C:
			sample()
		}
	}
	tick.Stop()
	close(stop)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(30 * time.Second):
		var b strings.Builder
		pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Fatalf("deadlock: the actors did not stop within 30 s of being told to:\n%s", b.String())
	}

	// Writes have stopped and the agent no longer changes anything: every
	// file must read back as whole tokens.
	settled := s.reads.Load() // reads numbered above this come after the changes
	for range 20 {
		s.read(dir, known, pool)
	}

	events := s.snapshot()
	t.Logf("%v: %d reads, %d tokens read, %d writes (%d failed); events: %v",
		*stressTime, s.reads.Load(), s.tokens.Load(), s.writes.Load(), s.writeFailures.Load(), events)
	t.Logf("peaks above the start: %d secret buffers, %d goroutines, %d drafts, %d create handles", maxSecrets, maxGoroutines, maxDrafts, maxCreated)
	if s.reads.Load() < 100 || s.tokens.Load() == 0 || s.writes.Load() == s.writeFailures.Load() {
		t.Errorf("the run did too little to mean anything: %d reads, %d tokens, %d writes", s.reads.Load(), s.tokens.Load(), s.writes.Load())
	}
	// A torn read of a file the agent changes is a bug (the store never
	// edits an inode a reader holds: its package doc); of a file written
	// through the mount it is the known race below; after the changes
	// stopped there must be none.
	var racing []tornRead
	for _, b := range s.torn {
		switch {
		case b.read > settled:
			t.Errorf("after every change stopped, a reader took in a torn token from %s", b)
		case slices.Contains(agentFiles, b.name):
			t.Errorf("a reader took in a torn token the agent was replacing: %s", b)
		case *stressStrict:
			t.Errorf("mountWriteRace: a reader took in a torn token from %s", b)
		default:
			racing = append(racing, b)
		}
	}
	if len(racing) > 0 {
		t.Logf("KNOWN ISSUE mountWriteRace (see stress_test.go): %d of %d reads took in a torn token, e.g. %s", len(racing), settled, racing[0])
	}
	// Readers here race writers far harder than any user does; more than
	// one read in twenty torn means the defences (pages dropped at a
	// truncation, mtime moved by every write) stopped working.
	if len(racing)*20 > int(settled) {
		t.Errorf("mountWriteRace: %d of %d reads torn, more than one in twenty", len(racing), settled)
	}
	for _, what := range slices.Sorted(maps.Keys(events)) {
		if !expectedEvent(what) {
			t.Errorf("%d times: %s", events[what], what)
		}
	}
	if excess > 0 {
		t.Errorf("secret buffers outnumbered files, drafts and those in flight by %d", excess)
	}
	if maxCreated > maxFiles+1 {
		t.Errorf("up to %d create handles were remembered at once, want at most %d (%d files)", maxCreated, maxFiles+1, maxFiles)
	}

	// Back to the start: drafts expire; the wipe and the unmount release
	// every secret buffer and goroutine; the heap is what it was.
	testenv.Eventually(t, 5*time.Second, "drafts were not dropped after writes stopped", func() bool {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		return len(fs.drafts) == 0
	})
	st.Wipe()
	if n := st.Len(); n != 0 {
		t.Errorf("after a wipe the store shows %d files", n)
	}
	mounted = false
	if err := fs.Unmount(); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	testenv.Eventually(t, 5*time.Second, "secret buffers or goroutines left after the wipe and the unmount", func() bool {
		return secmem.Live() == secrets0 && runtime.NumGoroutine() <= goroutines0
	})
	runtime.GC()
	runtime.GC()
	var mem1 runtime.MemStats
	runtime.ReadMemStats(&mem1)
	t.Logf("heap in use: %d KiB before, %d KiB after", mem0.HeapInuse>>10, mem1.HeapInuse>>10)
	if grew := int64(mem1.HeapInuse) - int64(mem0.HeapInuse); grew > 32<<20 {
		t.Errorf("the heap grew by %d MiB over the run and stayed", grew>>20)
	}
	for _, raw := range pool {
		if strings.Contains(sink.String(), string(raw[bytes.LastIndexByte(raw, '.')+1:])) {
			t.Fatal("the log holds a token")
		}
	}
}

// mountWriteRace: a reader that reads a file while a writer writes it
// through the mount can take in a torn line. With no OPEN (see doc.go) the
// writer's write(2) goes through the kernel's page cache, which every
// reader shares: the kernel copies the new bytes into a cached page before
// it sends WRITE, while the cached size and mtime still describe the
// previous content, so read_secure_file's size and mtime checks can pass on
// a mix of old and new bytes. Two things shrink the window: a truncation
// (HTCondor's ftruncate, O_TRUNC) drops the cached pages before the writes
// that follow, and every write moves the mtime on by at least a second. What
// is left is an append (the pre-23.9 writer) or a second writer racing a
// reader within one WRITE round trip. HTCondor's own writer (truncate, then
// write, in place) gives readers a worse race on any local filesystem; the
// agent's own changes (fetch, refresh, hiding, rm) never tear. Only
// answering OPEN, with direct I/O for writers, would close it, at a round
// trip per open. -stress.strict makes these fail the test.

// stressStats counts what the actors saw.
type stressStats struct {
	reads, tokens, writes, writeFailures atomic.Int64

	mu     sync.Mutex
	events map[string]int
	torn   []tornRead
}

// tornRead is a line a reader took in that is not a whole token written.
type tornRead struct {
	name string
	read int64 // the number of the read that saw it
	what string
}

func (b tornRead) String() string { return fmt.Sprintf("%s (read %d): %s", b.name, b.read, b.what) }

// read runs the tools' read sequence once and checks what it returns. A
// file only the agent changes must never change under a reader: its
// read_secure_file may fail for want of the file (ENOENT), never because
// what it read changed.
func (s *stressStats) read(dir string, known map[string]bool, pool [][]byte) {
	files, err := condor.Read(dir, 0)
	if err != nil {
		s.count("readdir: " + errnoOf(err))
		return
	}
	n := s.reads.Add(1)
	for _, f := range files {
		if f.Err != nil {
			what := readFailure(f.Err)
			if slices.Contains(agentFiles, filepath.Base(f.Path)) && (errors.Is(f.Err, condor.ErrModified) || errors.Is(f.Err, condor.ErrShortRead)) {
				what += " of a file only the agent changes (an inode edited under its reader)"
			}
			s.count(what)
			continue
		}
		for _, tok := range f.Tokens {
			if known[string(tok)] {
				s.tokens.Add(1)
				continue
			}
			s.mu.Lock()
			s.torn = append(s.torn, tornRead{filepath.Base(f.Path), n, describe(tok, pool)})
			s.mu.Unlock()
		}
	}
}

func (s *stressStats) count(what string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.events == nil {
		s.events = map[string]int{}
	}
	s.events[what]++
}

func (s *stressStats) snapshot() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.events)
}

func (s *stressStats) wrote(err error) {
	s.writes.Add(1)
	if err != nil {
		s.writeFailures.Add(1)
		s.count("write: " + errnoOf(err))
	}
}

// readFailure names why read_secure_file refused a file, without the path.
func readFailure(err error) string {
	switch {
	case errors.Is(err, condor.ErrShortRead):
		return "read_secure_file: short read"
	case errors.Is(err, condor.ErrModified):
		return "read_secure_file: file modified during reading"
	}
	op, _, _ := strings.Cut(err.Error(), " ")
	return "read_secure_file: " + op + ": " + errnoOf(err)
}

func errnoOf(err error) string {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e.Error()
	}
	return err.Error()
}

// expectedEvent says which failures a race between a reader or a writer and
// a concurrent change explains, the same race HTCondor meets on any
// filesystem:
//   - a file removed or hidden between readdir and open, or between open
//     and fstat or read (ENOENT): the file is gone, as on any filesystem
//     when a name is unlinked; here a hidden token stops being readable
//     even through a descriptor opened before, on purpose;
//   - "file modified during reading" and "short read" of a file written
//     through the mount: a writer changed it in place between
//     read_secure_file's fstat and its read, and its own checks caught it;
//     real HTCondor reports the same when condor_token_fetch rewrites a
//     file under it, and it should: the reader may have read a mix, and
//     refusing is what keeps it from using one. A file only the agent
//     changes never changes under a reader (a new inode each time), so
//     there it is a bug (see stressStats.read);
//   - a writer's file removed or hidden under it (ENOENT), or created by
//     the agent between write_out_token's open and its O_EXCL create
//     (EEXIST), as with any other process creating the same name;
//   - a write refused as not a token (EINVAL) because the kernel zeroed
//     part of it in flight: a reader's stat told the kernel the file's
//     committed size while the writer was writing past it, and the kernel
//     cut its cached pages to that size, bytes just copied from the writer
//     included (mountWriteRace again). The draft checker refuses the NUL
//     bytes, so the file keeps its previous content.
func expectedEvent(what string) bool {
	return slices.Contains([]string{
		"read_secure_file: open: no such file or directory",
		"read_secure_file: fstat: no such file or directory",
		"read_secure_file: read: no such file or directory",
		"read_secure_file: short read",
		"read_secure_file: file modified during reading",
		"write: no such file or directory",
		"write: file exists",
		"write: invalid argument",
	}, what)
}

// describe says how a line that is not a token written relates to the
// tokens written: a prefix of one, one followed by bytes of another, ...
func describe(line []byte, pool [][]byte) string {
	for i, tok := range pool {
		switch {
		case bytes.HasPrefix(tok, line):
			return fmt.Sprintf("the first %d bytes of token %d (%d bytes)", len(line), i, len(tok))
		case bytes.HasPrefix(line, tok):
			rest := line[len(tok):]
			for j, other := range pool {
				if bytes.HasSuffix(other, rest) {
					return fmt.Sprintf("token %d followed by the last %d bytes of token %d", i, len(rest), j)
				}
			}
			return fmt.Sprintf("token %d followed by %d other bytes", i, len(rest))
		}
	}
	return fmt.Sprintf("%d bytes that start no token written", len(line))
}

// Appending with >> after a shorter file replaced a longer one (the
// kernel's cached size is stale), or after the agent hid a token (the name
// has a new, smaller inode): the append must still land at the end.
func TestAppendAfterShrink(t *testing.T) {
	f := mount(t, store.Limits{}, func(o *Options) { o.DraftTimeout = 50 * time.Millisecond })
	long := newToken(t, strings.Repeat("l", 40)+"@example.org")
	short := newToken(t, "s@x")
	f.put(t, "tok", append(slices.Clone(long), '\n'))
	if _, err := os.ReadFile(f.path("tok")); err != nil { // cache the long size
		t.Fatal(err)
	}
	script := `echo "$1" > "$3" && echo "$2" >> "$3"`
	if out, err := exec.Command("sh", "-c", script, "sh", string(short), string(long), f.path("tok")).CombinedOutput(); err != nil {
		t.Fatalf("echo > then echo >>: %v: %s", err, out)
	}
	if got, want := f.mustContent(t, "tok"), string(short)+"\n"+string(long)+"\n"; got != want {
		t.Fatalf("after echo > and echo >>: %q, want %q", got, want)
	}

	// The agent hides the first token: the name gets a smaller inode.
	testenv.Eventually(t, 2*time.Second, "the writer's draft was not dropped", func() bool {
		f.fs.mu.Lock()
		defer f.fs.mu.Unlock()
		return len(f.fs.drafts) == 0
	})
	before, _ := f.store.Lookup("tok")
	for _, in := range f.store.Infos() {
		if in.Token.Sub == "s@x" {
			f.store.Hide(in.ID, token.Expired, 0)
		}
	}
	// Until the kernel is told, the name still leads to the old inode, and
	// a write to it fails (ENOENT) as after a rename over the file.
	testenv.Eventually(t, 2*time.Second, "the kernel to see the new inode", func() bool {
		var st syscall.Stat_t
		return syscall.Stat(f.path("tok"), &st) == nil && st.Ino != before.Ino
	})
	if err := condor.Append(f.path("tok"), short); err != nil {
		t.Fatalf("O_APPEND after a hide: %v", err)
	}
	if got, want := f.mustContent(t, "tok"), string(long)+"\n"+string(short)+"\n"; got != want {
		t.Fatalf("O_APPEND after a hide: %q, want %q", got, want)
	}
}

func (f *fixture) mustContent(t *testing.T, name string) string {
	t.Helper()
	got, ok := f.content(name)
	if !ok {
		t.Fatalf("%s is gone", name)
	}
	return got
}

// Files made with O_CREAT are closed without a RELEASE once the kernel
// knows OPEN is not implemented: their handles must not pile up.
func TestCreateHandlesBounded(t *testing.T) {
	f := mount(t, store.Limits{})
	tok := newToken(t, "a@x")
	f.put(t, "existing", append(slices.Clone(tok), '\n'))
	if _, err := os.ReadFile(f.path("existing")); err != nil { // OPEN: ENOSYS
		t.Fatal(err)
	}
	for range 50 {
		if err := condor.Write(f.path("new"), tok); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(f.path("new")); err != nil {
			t.Fatal(err)
		}
	}
	f.fs.mu.Lock()
	n := len(f.fs.created)
	f.fs.mu.Unlock()
	if n > 2 {
		t.Fatalf("%d create handles remembered for 50 files created and removed", n)
	}
}
