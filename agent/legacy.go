package agent

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/secmem"
)

// importLegacy reads the token files already on disk in the token directory,
// before the mount hides them, and keeps the valid ones in memory. With
// legacy = move the imported files are deleted, but only once the mount is
// up (removeMoved): a mount that fails must not cost them. It returns them
// and their directory, opened before the mount covers it. With ignore
// nothing is read. Either way the agent says what it leaves on disk.
func (a *Agent) importLegacy() (under *os.File, moved []string) {
	entries, err := os.ReadDir(a.dir)
	if err != nil {
		a.log.Warn("could not read the token directory before mounting", "dir", a.dir, "err", err)
		return nil, nil
	}
	var imported, left []string
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(a.dir, e.Name())
		if a.cfg.Legacy == config.LegacyIgnore {
			left = append(left, e.Name())
			continue
		}
		if err := a.importFile(e.Name(), path); err != nil {
			a.log.Warn("left a file on disk that could not be imported", "file", path, "reason", err.Error())
			left = append(left, e.Name())
			continue
		}
		if a.cfg.Legacy == config.LegacyMove {
			moved = append(moved, e.Name())
		} else {
			left = append(left, e.Name())
		}
		imported = append(imported, e.Name())
	}
	if len(imported) > 0 {
		a.log.Info("imported token files from disk", "dir", a.dir, "files", imported, "legacy", a.cfg.Legacy)
	}
	if len(moved) > 0 {
		if under, err = os.Open(a.dir); err != nil {
			a.log.Warn("imported tokens but cannot delete their files", "dir", a.dir, "err", err)
			left, moved = append(left, moved...), nil
		}
	}
	if len(left) > 0 {
		a.log.Warn("plaintext files remain on disk under the mount: HTCondor no longer sees them, but they are still on disk; delete them, or set legacy = \"move\"",
			"dir", a.dir, "files", left)
	}
	return under, moved
}

// removeMoved deletes the files importLegacy moved into memory, now that
// the mount is up, through under: the directory as it is beneath the mount.
func (a *Agent) removeMoved(under *os.File, moved []string) {
	if under == nil {
		return
	}
	defer under.Close()
	for _, name := range moved {
		if err := unix.Unlinkat(int(under.Fd()), name, 0); err != nil {
			a.log.Warn("imported a token but could not delete its file; it remains on disk under the mount", "file", filepath.Join(a.dir, name), "err", err)
		}
	}
}

// importFile imports one file if HTCondor would have read it: a regular
// file (not a symlink, not a FIFO swapped in meanwhile) owned by the user
// and private to them, as read_secure_file demands.
func (a *Agent) importFile(name, path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return fmt.Errorf("not a regular file")
	case int(st.Uid) != os.Getuid():
		return fmt.Errorf("owned by uid %d, not you: HTCondor would refuse it too", st.Uid)
	case st.Mode&0o077 != 0:
		return fmt.Errorf("readable by others (mode %o): HTCondor would refuse it too; chmod 600 it and restart the agent to import it", st.Mode&0o777)
	}
	// Sized by the file, not by the limit: locked memory is scarce (a
	// 64 KiB RLIMIT_MEMLOCK holds every token of the session).
	max := a.store.Limits().MaxFileSize
	buf, err := secmem.New(int(min(st.Size, int64(max))) + 1)
	if err != nil {
		return err
	}
	defer buf.Wipe()
	n, err := io.ReadFull(f, buf.Bytes())
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return err
	}
	switch {
	case n > max:
		return fmt.Errorf("larger than %d bytes", max)
	case int64(n) > st.Size:
		return fmt.Errorf("it grew while being read: restart the agent to import it")
	}
	content := buf.Bytes()[:n]
	// HTCondor stops reading at the first NUL.
	for i, c := range content {
		if c == 0 {
			content = content[:i]
			break
		}
	}
	_, err = a.store.Put(name, content, a.router.Quick)
	return err
}
