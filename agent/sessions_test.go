package agent

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv"
)

// testCounter returns a session counter whose end is counted in ended.
func testCounter(t *testing.T, grace time.Duration) (*sessionCounter, *atomic.Int32) {
	t.Helper()
	var ended atomic.Int32
	c := newSessionCounter(func() { ended.Add(1) })
	c.grace = grace
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.watch(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, &ended
}

// sessionProcess starts a process that lives until killed.
func sessionProcess(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func TestSessionsCount(t *testing.T) {
	c, ended := testCounter(t, 0)
	a, b := sessionProcess(t), sessionProcess(t)
	for i, pid := range []int{a.Process.Pid, a.Process.Pid, b.Process.Pid} {
		if n, err := c.Open(pid); err != nil || n != i+1 {
			t.Fatalf("open %d: %d, %v", i, n, err)
		}
	}
	// A close from a process that opened nothing changes nothing.
	if n, ending := c.Close(os.Getpid()); n != 3 || ending {
		t.Fatalf("close of an unknown pid: %d, %v", n, ending)
	}
	if n, ending := c.Close(a.Process.Pid); n != 2 || ending {
		t.Fatalf("first close: %d, %v", n, ending)
	}
	if n, ending := c.Close(a.Process.Pid); n != 1 || ending {
		t.Fatalf("second close: %d, %v", n, ending)
	}
	if n, ending := c.Close(b.Process.Pid); n != 0 || !ending {
		t.Fatalf("last close: %d, %v", n, ending)
	}
	testenv.Eventually(t, 10*time.Second, "the end was not called", func() bool { return ended.Load() == 1 })
	if _, err := c.Open(b.Process.Pid); !errors.Is(err, ErrWiping) {
		t.Fatalf("open while wiping: %v", err)
	}
	if ended.Load() != 1 {
		t.Fatalf("ended %d times", ended.Load())
	}
}

func TestSessionsRefuseBadPIDs(t *testing.T) {
	c, _ := testCounter(t, 0)
	if _, err := c.Open(0); err == nil {
		t.Fatal("pid 0 accepted")
	}
	gone := exec.Command("true")
	gone.Run()
	if _, err := c.Open(gone.Process.Pid); err == nil {
		t.Fatal("an exited process accepted")
	}
}

// A session whose process dies without a close is dropped, zombies
// included; the last one ends the agent.
func TestSessionsDropDeadProcesses(t *testing.T) {
	c, ended := testCounter(t, 0)
	a, b := sessionProcess(t), sessionProcess(t)
	c.Open(a.Process.Pid)
	c.Open(b.Process.Pid)
	a.Process.Kill() // not reaped: a zombie until the cleanup
	testenv.Eventually(t, 10*time.Second, "the dead session was not dropped", func() bool { return c.Count() == 1 })
	if ended.Load() != 0 {
		t.Fatal("ended with a session left")
	}
	b.Process.Kill()
	b.Wait()
	testenv.Eventually(t, 10*time.Second, "the last dead session did not end the agent", func() bool { return ended.Load() == 1 })
	c.mu.Lock()
	gone := c.lastGone
	c.mu.Unlock()
	if gone != b.Process.Pid {
		t.Fatalf("lastGone = %d, want %d", gone, b.Process.Pid)
	}
}

// The grace keeps the tokens across a quick re-login, then ends.
func TestSessionsGrace(t *testing.T) {
	c, ended := testCounter(t, 300*time.Millisecond)
	a := sessionProcess(t)
	c.Open(a.Process.Pid)
	if _, ending := c.Close(a.Process.Pid); ending {
		t.Fatal("ending at once despite the grace")
	}
	c.Open(a.Process.Pid) // within the grace
	c.mu.Lock()
	pending := c.timer != nil
	c.mu.Unlock()
	if pending || ended.Load() != 0 {
		t.Fatal("a login during the grace did not cancel the end")
	}
	c.Close(a.Process.Pid)
	testenv.Eventually(t, 10*time.Second, "no end after the grace", func() bool { return ended.Load() == 1 })
}
