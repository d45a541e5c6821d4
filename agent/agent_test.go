package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/agent/validate"
	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/mounttab"
)

// Two agents never both hold the lock, though an ending agent removes its
// lock file: one that opened the old file just before it went locks it,
// sees that the path names another file, and starts over.
func TestLockFileRace(t *testing.T) {
	rt := config.RuntimeFiles(filepath.Join(t.TempDir(), "run", "agent.sock"))
	ln, lock, err := listen(rt)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := listen(rt); err == nil || !strings.Contains(err.Error(), "another tokend agent is already running") {
		t.Fatalf("a second agent while the first runs: %v, want refused", err)
	}

	// A second agent opened the lock file just before the first ended.
	early, err := os.OpenFile(rt.Lock, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	release(rt, ln, lock)
	if ents, err := os.ReadDir(rt.Dir); err != nil || len(ents) != 0 {
		t.Fatalf("the ended agent left %v in its runtime directory (%v)", ents, err)
	}
	// The early one gets the lock of the removed file, and must not count it.
	if err := unix.Flock(int(early.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("flock of the removed lock file: %v", err)
	}
	if lockCurrent(early, rt.Lock) {
		t.Fatal("a lock on a removed lock file counts as the agent's lock")
	}

	// A third agent creates and takes a new one; the early one, starting
	// over as takeLock does, is refused.
	ln, lock, err = listen(rt)
	if err != nil {
		t.Fatalf("an agent after the first ended: %v", err)
	}
	if f, err := takeLock(rt.Lock); !errors.Is(err, errLocked) {
		f.Close()
		t.Fatalf("the early agent, starting over: %v, want the lock taken", err)
	}
	release(rt, ln, lock)
}

// The last session close is answered before the agent wipes and exits:
// the agent does not drop the connection that asked it to end.
func TestLastSessionCloseIsAnswered(t *testing.T) {
	testenv.RequireFUSE(t)
	root := t.TempDir()
	cfg := config.Default()
	cfg.Dir = filepath.Join(root, "tokens.d")
	cfg.Socket = filepath.Join(root, "run", "agent.sock")
	cfg.Legacy = config.LegacyIgnore
	logs := &syncbuf.Buffer{}
	ready := make(chan struct{})
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		done <- Run(ctx, Options{
			Config:  cfg,
			Logger:  slog.New(holdClose{Handler: slog.NewTextHandler(logs, nil), socket: cfg.Socket}),
			Version: "test",
			Ready:   func() { close(ready) },
			Fetcher: &fuzzFetcher{},
			Keys:    []validate.KeyChecker{},
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("the agent ended at once: %v\n%s", err, logs)
	case <-time.After(20 * time.Second):
		t.Fatalf("the agent did not start within 20 s:\n%s", logs)
	}

	c := api.NewClient(cfg.Socket)
	opened, err := c.Session(ctx, api.SessionRequest{Action: "open", PID: os.Getpid()})
	if err != nil || opened.Sessions != 1 {
		t.Fatalf("session open: %+v, %v", opened, err)
	}
	closed, err := c.Session(ctx, api.SessionRequest{Action: "close", PID: os.Getpid()})
	if err != nil {
		t.Fatalf("the last session close got no answer: %v\n%s", err, logs)
	}
	if !closed.Wiped || closed.Sessions != 0 {
		t.Errorf("the last session close answered %+v, want wiped and no sessions left", closed)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the agent ended with %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the agent did not end within 20 s of the last close:\n%s", logs)
	}
	if mounttab.Mounted(cfg.Dir) {
		t.Errorf("%s is still mounted after the agent ended", cfg.Dir)
	}
}

// holdClose logs through Handler, but holds the agent's answer to a
// session close (which it logs just before answering) until the agent no
// longer accepts connections: the moment an agent that drops its
// connections when it stops would lose the answer.
type holdClose struct {
	slog.Handler
	socket string
}

func (h holdClose) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "login session closed" {
		deadline := time.Now().Add(10 * time.Second)
		for wait := time.Millisecond; time.Now().Before(deadline); wait = min(2*wait, 20*time.Millisecond) {
			c, err := net.Dial("unix", h.socket)
			if err != nil {
				break
			}
			c.Close()
			time.Sleep(wait)
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h holdClose) WithAttrs(as []slog.Attr) slog.Handler {
	return holdClose{Handler: h.Handler.WithAttrs(as), socket: h.socket}
}

func (h holdClose) WithGroup(name string) slog.Handler {
	return holdClose{Handler: h.Handler.WithGroup(name), socket: h.socket}
}
