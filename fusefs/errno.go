package fusefs

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tokend/tokend/store"
	"github.com/tokend/tokend/token"
)

// errno maps the store's and token's errors to the errno a caller sees. It is
// the only place that does.
func errno(err error) fuse.Status {
	switch {
	case err == nil:
		return fuse.OK
	case errors.Is(err, store.ErrNotFound):
		return fuse.ENOENT
	case errors.Is(err, store.ErrExists):
		return fuse.Status(syscall.EEXIST)
	case errors.Is(err, store.ErrTooMany):
		return fuse.Status(syscall.ENOSPC)
	case errors.Is(err, store.ErrTooBig):
		return fuse.Status(syscall.EFBIG)
	case errors.Is(err, store.ErrNameTooLong):
		return fuse.Status(syscall.ENAMETOOLONG)
	case errors.Is(err, store.ErrBadName), errors.Is(err, token.ErrMalformed):
		return fuse.EINVAL
	case errors.Is(err, store.ErrClosed):
		return fuse.Status(syscall.ESHUTDOWN)
	}
	return fuse.EIO
}

// opener names the process behind a request: FUSE gives the calling
// thread's id; the audit log wants its process and executable.
func opener(tid uint32) (pid int, exe string) {
	dir := "/proc/" + strconv.FormatUint(uint64(tid), 10)
	pid = int(tid)
	if status, err := os.ReadFile(dir + "/status"); err == nil {
		for line := range strings.SplitSeq(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					pid = n
				}
			}
		}
	}
	exe, err := os.Readlink(dir + "/exe")
	if err != nil {
		exe = "?"
	}
	return pid, exe
}
