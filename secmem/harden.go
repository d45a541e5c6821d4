package secmem

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Harden makes the process unreadable to its owner's other processes
// (no ptrace, no /proc/PID/mem) and turns off core dumps, so that a crash or
// a debugger cannot copy tokens out of memory.
func Harden() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("secmem: could not clear the dumpable flag: %w", err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return fmt.Errorf("secmem: could not disable core dumps: %w", err)
	}
	return nil
}
