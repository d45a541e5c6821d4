// Package keywatch tells when the signing keys in a key directory
// (SEC_PASSWORD_DIRECTORY) and a pool key file may have changed. verifyd
// reloads its keys when told; the agent re-checks its tokens
// (validate.key_dir).
//
// It watches with inotify (fsnotify) the key directory, its parent (the
// directory removed and recreated, or another renamed over it) and the
// pool key's directory, and re-adds its watches before every call, so a
// replaced directory is followed from then on. After the last event of a
// burst (Debounce, at most MaxDelay under a steady stream) it calls back
// once; after an event overflow, which loses events, it calls back too.
// The caller reads everything again at each call: an event says only that
// something may have changed.
//
// [Settled] adds the settle rule: a snapshot of the keys counts only when
// two reads Confirm (20 ms) apart agree, so a key file that disappears or
// changes for a moment (a copy in progress, a half-written file) is never
// taken for a change, and a real change still counts about 22 ms after the
// last write.
package keywatch

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Default timing.
const (
	// defaultDebounce is how long after the last event of a burst the
	// callback runs: an editor's or installer's burst becomes one call.
	defaultDebounce = 30 * time.Millisecond
	// defaultMaxDelay bounds the wait under a steady stream of events, so
	// a rotation is seen well within a second even then.
	defaultMaxDelay = 200 * time.Millisecond
)

// Options says what to watch and how.
type Options struct {
	Dir     string // the key directory
	PoolKey string // the pool key file; "" when it is in Dir
	// Debounce and MaxDelay: default 30 ms and 200 ms. Settled does not
	// debounce (it settles); MaxDelay bounds how long a steady stream of
	// events restarts its reads.
	Debounce, MaxDelay time.Duration
	// Resync calls back this often even without events, for what inotify
	// cannot see (a symlinked key whose target changes, the parent of
	// the key directory replaced); 0 never.
	Resync time.Duration
	// Fallback is the period of calls when inotify is not available; 0
	// means none (the caller has its own periodic check).
	Fallback time.Duration
	Log      *slog.Logger
}

// Watcher watches one key directory. Make it with New, then Run it.
type Watcher struct {
	o         Options
	dir, pool string
	w         *fsnotify.Watcher // nil when inotify is not available
	watchErr  map[string]string // dir -> problem last logged; New, then Run only
}

// New installs the watches (the caller reads the keys after New returns, so
// that no change falls between its reading and the watch). Without inotify
// it logs why and Run falls back to Options.Fallback.
func New(o Options) *Watcher {
	if o.Debounce <= 0 {
		o.Debounce = defaultDebounce
	}
	if o.MaxDelay < o.Debounce {
		o.MaxDelay = max(defaultMaxDelay, o.Debounce)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	kw := &Watcher{o: o, dir: filepath.Clean(o.Dir), watchErr: map[string]string{}}
	if o.PoolKey != "" {
		kw.pool = filepath.Clean(o.PoolKey)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log := o.Log.With("dir", kw.dir, "error", err, "fix", "raise fs.inotify.max_user_instances")
		if o.Fallback > 0 {
			log.Warn("cannot watch the key files (inotify); reading them periodically instead", "every", o.Fallback)
		} else {
			log.Warn("cannot watch the key files (inotify); their changes are seen only by the periodic check")
		}
		return kw
	}
	kw.w = w
	kw.addWatches()
	return kw
}

// dirs are the directories to watch.
func (kw *Watcher) dirs() []string {
	dirs := []string{kw.dir, filepath.Dir(kw.dir)}
	if kw.pool != "" {
		dirs = append(dirs, filepath.Dir(kw.pool))
	}
	slices.Sort(dirs)
	return slices.Compact(dirs)
}

// relevant reports whether an event on name can change the keys.
func (kw *Watcher) relevant(name string) bool {
	name = filepath.Clean(name)
	if name == kw.dir || filepath.Dir(name) == kw.dir {
		return true
	}
	return kw.pool != "" && (name == kw.pool || name == filepath.Dir(kw.pool))
}

// addWatches (re)adds every watch whose directory exists. Adding a watched
// directory again is harmless; a directory that was removed and recreated,
// or renamed over, is a new inode and gets a new watch here.
func (kw *Watcher) addWatches() {
	for _, d := range kw.dirs() {
		err := kw.w.Add(d)
		msg := ""
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			msg = pathErr(err).Error()
		}
		if kw.watchErr[d] != msg {
			kw.watchErr[d] = msg
			if msg != "" {
				kw.o.Log.Warn("cannot watch a key directory; its changes are seen only by the periodic check",
					"dir", d, "error", msg)
			}
		}
	}
}

func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Run calls changed after each burst of relevant events, after an event
// overflow and every Resync, until ctx is done; then it releases the
// watches. changed runs on Run's goroutine, one call at a time. A call
// says only that something may have changed; for snapshots that are never
// transient, use [Settled].
func (kw *Watcher) Run(ctx context.Context, changed func()) {
	kw.run(ctx, &debounce{kw: kw, changed: changed})
}

// driver is what the loop tells of events and time: Run's debounce, or
// Settled's settle rule.
type driver interface {
	// event: something may have changed at now.
	event(now time.Time)
	// periodic: the Resync (or Fallback) period passed.
	periodic(now time.Time)
	// due is when fire is to be called; zero for never.
	due() time.Time
	fire(now time.Time)
}

func (kw *Watcher) run(ctx context.Context, d driver) {
	var events <-chan fsnotify.Event
	var errs <-chan error
	every := kw.o.Resync
	if kw.w != nil {
		defer kw.w.Close()
		events, errs = kw.w.Events, kw.w.Errors
	} else {
		every = kw.o.Fallback
	}
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		timer.Stop()
		var fire <-chan time.Time
		if due := d.due(); !due.IsZero() {
			timer.Reset(max(time.Until(due), 0))
			fire = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if kw.relevant(ev.Name) {
				d.event(time.Now())
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				kw.o.Log.Warn("key directory events were lost (inotify queue overflow); reading the keys again", "dir", kw.dir)
			} else {
				kw.o.Log.Warn("key directory watch failed; reading the keys again", "dir", kw.dir, "error", err)
			}
			d.event(time.Now())
		case now := <-fire:
			d.fire(now)
		case now := <-tick:
			d.periodic(now)
		}
	}
}

// rewatch re-adds the watches before the keys are read again, so a
// replaced directory is followed from then on.
func (kw *Watcher) rewatch() {
	if kw.w != nil {
		kw.addWatches()
	}
}

// debounce calls changed Debounce after the last event of a burst, at most
// MaxDelay after its first.
type debounce struct {
	kw      *Watcher
	changed func()
	since   time.Time // first event not yet reported; zero if none
	next    time.Time
}

func (d *debounce) event(now time.Time) {
	if d.since.IsZero() {
		d.since = now
	}
	d.next = now.Add(max(min(d.kw.o.Debounce, d.kw.o.MaxDelay-now.Sub(d.since)), 0))
}

func (d *debounce) periodic(time.Time) {
	d.kw.rewatch()
	d.changed()
}

func (d *debounce) due() time.Time { return d.next }

func (d *debounce) fire(time.Time) {
	d.since, d.next = time.Time{}, time.Time{}
	d.kw.rewatch()
	d.changed()
}
