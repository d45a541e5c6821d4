package keywatch

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
)

// recorder runs a Watcher and records, at every call, what the key
// directory held then (as a caller reading the keys would see it).
type recorder struct {
	t    *testing.T
	dir  string
	logs *syncbuf.Buffer

	mu    sync.Mutex
	calls [][]string // directory listing at each call
	block chan struct{}
}

// watch starts a watcher on dir with o (Dir and Log are filled in) until
// the test ends.
func watch(t *testing.T, dir string, o Options) *recorder {
	t.Helper()
	r := &recorder{t: t, dir: dir, logs: &syncbuf.Buffer{}}
	o.Dir = dir
	o.Log = slog.New(slog.NewTextHandler(r.logs, nil))
	w := New(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, r.changed)
	}()
	t.Cleanup(func() {
		cancel()
		r.mu.Lock()
		if r.block != nil {
			close(r.block)
			r.block = nil
		}
		r.mu.Unlock()
		<-done
	})
	return r
}

func (r *recorder) changed() {
	ents, _ := os.ReadDir(r.dir)
	names := []string{}
	for _, e := range ents {
		names = append(names, e.Name())
	}
	r.mu.Lock()
	r.calls = append(r.calls, names)
	block := r.block
	r.mu.Unlock()
	if block != nil {
		<-block
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// waitSeen waits for a call that saw name in the directory.
func (r *recorder) waitSeen(name string) {
	r.t.Helper()
	testenv.Eventually(r.t, 5*time.Second, "a call that sees "+name, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, names := range r.calls {
			if slices.Contains(names, name) {
				return true
			}
		}
		return false
	})
}

func write(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, path string) {
	t.Helper()
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
}

// TestReplacedDirectory: after the key directory is replaced, the watcher
// calls back, and then follows the new directory: a key written into it is
// seen at once (the periodic resync is off).
func TestReplacedDirectory(t *testing.T) {
	shapes := map[string]func(t *testing.T, dir string, round int){
		"removed and made again": func(t *testing.T, dir string, round int) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			mkdir(t, dir)
			write(t, filepath.Join(dir, "R"+strconv.Itoa(round)))
		},
		"moved away and another moved in": func(t *testing.T, dir string, round int) {
			next := dir + ".new"
			mkdir(t, next)
			write(t, filepath.Join(next, "R"+strconv.Itoa(round)))
			old := dir + ".old" + strconv.Itoa(round)
			if err := os.Rename(dir, old); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(next, dir); err != nil {
				t.Fatal(err)
			}
			// Changes in the old directory are no longer the keys'.
			write(t, filepath.Join(old, "stale"))
		},
		"renamed over an empty one": func(t *testing.T, dir string, round int) {
			next := dir + ".new"
			mkdir(t, next)
			write(t, filepath.Join(next, "R"+strconv.Itoa(round)))
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				os.Remove(filepath.Join(dir, e.Name()))
			}
			// rename(2) replaces an empty directory (os.Rename refuses to).
			if err := syscall.Rename(next, dir); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, replace := range shapes {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "passwords.d")
			mkdir(t, dir)
			r := watch(t, dir, Options{})
			for round := range 3 {
				replace(t, dir, round)
				r.waitSeen("R" + strconv.Itoa(round))
				w := "W" + strconv.Itoa(round)
				write(t, filepath.Join(dir, w))
				r.waitSeen(w)
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			for _, names := range r.calls {
				if slices.Contains(names, "stale") {
					t.Fatalf("a call saw the old directory: %v", names)
				}
			}
		})
	}
}

// TestPoolKeyElsewhere: the pool key's own directory is watched too, and
// only the pool key in it matters.
func TestPoolKeyElsewhere(t *testing.T) {
	root := t.TempDir()
	dir, other := filepath.Join(root, "passwords.d"), filepath.Join(root, "pool")
	mkdir(t, dir)
	mkdir(t, other)
	pool := filepath.Join(other, "POOL")
	write(t, pool)
	r := watch(t, dir, Options{PoolKey: pool})
	// Replace the pool key by rename, as a site rolls out a new one.
	tmp := filepath.Join(other, ".POOL.new")
	write(t, tmp)
	n := r.count()
	if err := os.Rename(tmp, pool); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "a call after the pool key was replaced", func() bool { return r.count() > n })
}

// TestDebounce: a burst of events is one call, made after the burst.
func TestDebounce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "passwords.d")
	mkdir(t, dir)
	const burst = 50
	// Generous, so a slow machine does not split the burst.
	r := watch(t, dir, Options{Debounce: 300 * time.Millisecond, MaxDelay: time.Minute})
	for i := range burst {
		write(t, filepath.Join(dir, fmt.Sprint("k", i)))
	}
	r.waitSeen(fmt.Sprint("k", burst-1))
	write(t, filepath.Join(dir, "marker"))
	r.waitSeen("marker")
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.calls) != 2 || len(r.calls[0]) != burst {
		t.Fatalf("calls saw %d, %d... files: want one call for the whole burst of %d, then one for the marker", len(r.calls[0]), len(r.calls[1%len(r.calls)]), burst)
	}
}

// TestMaxDelay: under a steady stream of events a call comes anyway, before
// the stream ends.
func TestMaxDelay(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "passwords.d")
	mkdir(t, dir)
	r := watch(t, dir, Options{Debounce: 200 * time.Millisecond, MaxDelay: 400 * time.Millisecond})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond) // faster than Debounce
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				os.WriteFile(filepath.Join(dir, "k"), []byte(strconv.Itoa(i)), 0o600)
			}
		}
	}()
	testenv.Eventually(t, 5*time.Second, "a call while events keep coming", func() bool { return r.count() > 0 })
	close(stop)
	<-done
}

// TestResync: with Resync set, calls come without any event.
func TestResync(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "passwords.d")
	mkdir(t, dir)
	r := watch(t, dir, Options{Resync: 20 * time.Millisecond})
	testenv.Eventually(t, 5*time.Second, "periodic calls", func() bool { return r.count() >= 3 })
}

// TestOverflow: when the kernel's event queue overflows (events were lost),
// the watcher says so and calls back, and keeps watching.
func TestOverflow(t *testing.T) {
	data, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	if err != nil {
		t.Skipf("cannot read the inotify queue size: %v", err)
	}
	max, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if max <= 0 || max > 1<<17 {
		t.Skipf("fs.inotify.max_queued_events is %d: too many events to overflow it in a test", max)
	}
	dir := filepath.Join(t.TempDir(), "passwords.d")
	mkdir(t, dir)
	r := watch(t, dir, Options{})
	// Hold the first call, so nothing reads the queue while it fills.
	r.mu.Lock()
	r.block = make(chan struct{})
	r.mu.Unlock()
	write(t, filepath.Join(dir, "first"))
	testenv.Eventually(t, 5*time.Second, "the first call", func() bool { return r.count() == 1 })
	// Each file is two events (create, delete); fsnotify reads some into
	// its own buffer (64 KiB) before it blocks.
	n := max/2 + 8192
	for i := range n {
		p := filepath.Join(dir, "f"+strconv.Itoa(i))
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
	}
	r.mu.Lock()
	close(r.block)
	r.block = nil
	r.mu.Unlock()
	testenv.Eventually(t, 30*time.Second, "the overflow to be reported", func() bool {
		return strings.Contains(r.logs.String(), "inotify queue overflow")
	})
	// It keeps watching.
	write(t, filepath.Join(dir, "after"))
	r.waitSeen("after")
}
