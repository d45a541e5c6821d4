package fusefs

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// mayWait reports whether the caller of a request may be held at a gate:
// a process whose real, effective, saved and filesystem uids are all the
// owner's (never root: with AllowRoot, HTCondor's schedd must never be
// held), which is neither the agent nor one of its descendants (the fetch
// command and whatever it runs read the directory too), as /proc tells.
// When /proc cannot tell, it may not.
func (fs *FS) mayWait(c *fuse.Caller) bool {
	uid := fs.opt.UID
	if uid == 0 || c.Uid != uid || c.Pid == 0 {
		return false
	}
	// The header's pid is the calling thread's id; /proc has it too.
	st, err := readProcStatus(int(c.Pid))
	if err != nil || st.uids != [4]uint32{uid, uid, uid, uid} {
		return false
	}
	agent := fs.opt.AgentPID
	if agent == 0 {
		agent = os.Getpid()
	}
	mine, err := descends(st, agent)
	return err == nil && !mine
}

// procStatus is what mayWait reads from /proc/PID/status.
type procStatus struct {
	tgid, ppid int
	uids       [4]uint32 // real, effective, saved, filesystem
}

func readProcStatus(pid int) (procStatus, error) {
	var st procStatus
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return st, err
	}
	seen := 0
	for line := range bytes.SplitSeq(data, []byte{'\n'}) {
		key, val, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		f := bytes.Fields(val)
		switch string(key) {
		case "Tgid":
			if len(f) == 1 {
				st.tgid, err = strconv.Atoi(string(f[0]))
				seen |= 1
			}
		case "PPid":
			if len(f) == 1 {
				st.ppid, err = strconv.Atoi(string(f[0]))
				seen |= 2
			}
		case "Uid":
			if len(f) == 4 {
				for i := range st.uids {
					var u uint64
					u, err = strconv.ParseUint(string(f[i]), 10, 32)
					if err != nil {
						break
					}
					st.uids[i] = uint32(u)
				}
				seen |= 4
			}
		}
		if err != nil {
			return st, fmt.Errorf("/proc/%d/status: %w", pid, err)
		}
	}
	if seen != 7 {
		return st, fmt.Errorf("/proc/%d/status lacks Tgid, PPid or Uid", pid)
	}
	return st, nil
}

// maxDepth bounds the walk up the process tree.
const maxDepth = 1024

// descends reports whether the process st describes is agent, a thread of
// it, or a descendant. The agent is a child subreaper, so that a
// double-forked child stays under it.
func descends(st procStatus, agent int) (bool, error) {
	if st.tgid == agent {
		return true, nil
	}
	pid := st.ppid
	for range maxDepth {
		switch {
		case pid == agent:
			return true, nil
		case pid <= 1:
			return false, nil
		}
		p, err := readProcStatus(pid)
		if err != nil {
			return false, err
		}
		pid = p.ppid
	}
	return false, errors.New("process tree too deep")
}

// The kernel's FUSE request timeout (Linux 6.14 on): a request unanswered
// for longer aborts the whole connection.
const (
	defaultTimeoutFile = "/proc/sys/fs/fuse/default_request_timeout"
	maxTimeoutFile     = "/proc/sys/fs/fuse/max_request_timeout"
)

// RequestTimeout returns the kernel's FUSE request timeout for a mount
// whose server sets none, as tokend's: default_request_timeout, capped by
// max_request_timeout (which applies alone when there is no default). 0
// means none (older kernels lack the files).
func RequestTimeout() (time.Duration, error) {
	def, err := readSeconds(defaultTimeoutFile)
	if err != nil {
		return 0, err
	}
	ceiling, err := readSeconds(maxTimeoutFile)
	if err != nil {
		return 0, err
	}
	if ceiling > 0 && (def == 0 || def > ceiling) {
		return ceiling, nil
	}
	return def, nil
}

func readSeconds(file string) (time.Duration, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(string(bytes.TrimSpace(data)), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	return time.Duration(n) * time.Second, nil
}

// WaitLimit is the longest a request may be held at a gate under a kernel
// request timeout of timeout (0: none): half of it, so that the kernel
// never aborts the mount for a held request.
func WaitLimit(timeout time.Duration) time.Duration {
	if timeout <= 0 {
		return math.MaxInt64
	}
	return timeout / 2
}
