package proc

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv/poll"
)

func TestRun(t *testing.T) {
	r, err := Run(exec.Command("sh", "-c", `read x; echo "out $x"; echo err >&2; exit 3`), "in\n")
	if err != nil {
		t.Fatal(err)
	}
	if r != (Result{Stdout: "out in\n", Stderr: "err\n", Code: 3}) {
		t.Fatalf("Run: %+v", r)
	}
	if _, err := Run(exec.Command("/nonexistent/tool"), ""); err == nil {
		t.Fatal("a command that cannot run gave no error")
	}
}

// Stop ends a process with SIGTERM and reports how it exited.
func TestStop(t *testing.T) {
	p, err := Start(exec.Command("sleep", "60"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Exited() {
		t.Fatal("sleep exited at once")
	}
	err = p.Stop(10 * time.Second)
	if code, _ := ExitCode(err); code != -1 || errors.Is(err, ErrKilled) || !p.Exited() {
		t.Fatalf("Stop: %v (exit code %d), want ended by SIGTERM", err, code)
	}
	if err := p.Stop(time.Second); errors.Is(err, ErrKilled) {
		t.Fatalf("Stop of an exited process: %v", err)
	}
}

// A process that ignores SIGTERM is killed after the wait.
func TestStopKills(t *testing.T) {
	out := &syncbuf.Buffer{}
	p, err := Start(exec.Command("sh", "-c", `trap "" TERM; echo ready; exec sleep 60`), out)
	if err != nil {
		t.Fatal(err)
	}
	if !poll.Until(10*time.Second, func() bool { return strings.Contains(out.String(), "ready") }) {
		p.Kill()
		t.Fatalf("the process did not start: %q", out)
	}
	if err := p.Stop(50 * time.Millisecond); !errors.Is(err, ErrKilled) {
		t.Fatalf("Stop: %v, want ErrKilled", err)
	}
	if !p.Exited() {
		t.Fatal("Stop returned before the process exited")
	}
}

func TestWaitAndExitCode(t *testing.T) {
	out := &syncbuf.Buffer{}
	p, err := Start(exec.Command("sh", "-c", "echo hi; exit 7"), out)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Wait(10 * time.Second) {
		t.Fatal("the process did not exit")
	}
	if code, err := ExitCode(p.Err()); code != 7 || err != nil {
		t.Fatalf("ExitCode: %d, %v; want 7", code, err)
	}
	if out.String() != "hi\n" {
		t.Fatalf("output %q", out)
	}
	if code, err := ExitCode(nil); code != 0 || err != nil {
		t.Fatalf("ExitCode(nil): %d, %v", code, err)
	}
}
