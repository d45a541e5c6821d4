package fusefs

import (
	"errors"
	"os"
	"strconv"
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

// exeOf names the executable of pid for the audit log.
func exeOf(pid uint32) string {
	exe, err := os.Readlink("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/exe")
	if err != nil {
		return "?"
	}
	return exe
}
