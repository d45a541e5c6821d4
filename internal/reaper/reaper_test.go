package reaper

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Orphans that come to the subreaper are reaped, daemons (setsid) and
// plain double forks alike, while os/exec still gets the exit status of
// every child it started, whatever the reaper does meanwhile.
func TestReaper(t *testing.T) {
	if err := Start(slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The grandchild outlives its parents: it waits for them to
			// be gone (its parent becomes this process), then exits.
			detach := []string{"", "setsid"}[i%2]
			pidFile := filepath.Join(dir, strconv.Itoa(i))
			script := `(` + detach + ` sh -c 'echo $$ > "$1"; while [ "$(cut -d" " -f4 /proc/$$/stat)" != "$2" ]; do :; done' sh "$1" "$2" &); exit 3`
			cmd := exec.Command("sh", "-c", script, "sh", pidFile, strconv.Itoa(os.Getpid()))
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // as fetch starts them
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 3 {
				t.Errorf("child %d: %v, want exit status 3", i, err)
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for i := range 20 {
		pidFile := filepath.Join(dir, strconv.Itoa(i))
		for {
			b, err := os.ReadFile(pidFile)
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if err == nil && pid > 0 {
				if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); errors.Is(err, os.ErrNotExist) {
					break // exited and reaped
				}
			}
			if time.Now().After(deadline) {
				st, _ := readStat(pid)
				t.Fatalf("orphan %d (pid %d, state %c, parent %d) not reaped", i, pid, st.state, st.ppid)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if o := Orphans(); len(o) != 0 {
		t.Errorf("zombies left: %v", o)
	}
}

// The process is a child subreaper once Start returned.
func TestSubreaper(t *testing.T) {
	if err := Start(slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	var v int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&v)), 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if v != 1 {
		t.Fatal("not a child subreaper")
	}
}
