package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/logsafe"
)

// withLock runs f holding an exclusive lock on the file at path, waiting
// for it until ctx ends. The lock goes with the file descriptor, so a
// killed holder cannot leave it taken.
func withLock(ctx context.Context, path string, f func() error) error {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("could not open the lock %s: %w", path, err)
	}
	defer unix.Close(fd)
	for wait := 250 * time.Microsecond; ; wait = min(2*wait, 20*time.Millisecond) {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("could not lock %s: %w", path, err)
		}
		if pause(ctx, wait) != nil {
			return fmt.Errorf("another login of yours holds %s and did not finish in time", path)
		}
	}
	return f()
}

// startTime is a process's start time in clock ticks since boot (field 22
// of /proc/PID/stat): with the pid, it names one process for good.
func startTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold anything.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("malformed stat")
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22, counted from 3
}

// writePIDFile records the agent Open started as "PID STARTTIME".
func writePIDFile(path string, pid int) error {
	st, err := startTime(pid)
	if err != nil {
		return fmt.Errorf("could not read the agent's start time: %w", err)
	}
	tmp := path + ".new"
	os.Remove(tmp)
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", pid, st), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// livePID returns the pid in the pid file when that very process (same
// start time) still runs.
func livePID(path string) (int, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	var pid int
	var st uint64
	if _, err := fmt.Sscanf(string(data), "%d %d", &pid, &st); err != nil || pid <= 0 {
		return 0, false
	}
	now, err := startTime(pid)
	return pid, err == nil && now == st
}

// waitExit waits until the process pid has exited (or ctx ends). A process
// that is already gone counts as exited.
func waitExit(ctx context.Context, pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("could not watch process %d: %w", pid, err)
	}
	defer unix.Close(fd)
	return waitPidfd(ctx, fd)
}

// waitPidfd waits until the process behind a pidfd has exited: the pidfd
// turns readable, zombies included.
func waitPidfd(ctx context.Context, fd int) error {
	for {
		ms := 100
		if dl, ok := ctx.Deadline(); ok {
			ms = min(ms, max(int(time.Until(dl)/time.Millisecond), 0))
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return err
		}
		if n > 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// tail returns the last lines of a log file (at most 4 KiB), indented, each
// escaped (logsafe.Text): the file is the user's, and the root hook logs it.
func tail(path string, lines int) string {
	f, err := os.Open(filepath.Clean(path))
	if err != nil {
		return "  (no log: " + err.Error() + ")"
	}
	defer f.Close()
	const most = 4 << 10
	if st, err := f.Stat(); err == nil && st.Size() > most {
		f.Seek(st.Size()-most, io.SeekStart)
	}
	data, _ := io.ReadAll(io.LimitReader(f, most))
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	if len(all) == 1 && all[0] == "" {
		return "  (empty)"
	}
	for i, l := range all {
		all[i] = logsafe.Text(l)
	}
	return "  " + strings.Join(all, "\n  ")
}
