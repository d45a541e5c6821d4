package fusefs

import (
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Open answers ENOSYS: from then on the kernel opens files itself, with page
// caching, and never asks again. Where the kernel cannot do that (see
// OpenHandles), and in audit mode (which logs the opener), it answers with
// what the kernel would have used: keep the page cache, no FLUSH.
func (fs *FS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if !fs.opt.Audit && !fs.openHandles {
		return fuse.ENOSYS
	}
	if !fs.allowed(&in.Caller) {
		return fuse.EACCES
	}
	name, _, ok := fs.store.Stat(in.NodeId)
	if !ok {
		return fuse.ENOENT
	}
	if fs.opt.Audit {
		pid, exe := opener(in.Caller.Pid)
		fs.log.Info("token file opened", "name", name, "pid", pid, "exe", exe, "flags", in.Flags)
	}
	fs.opened.Add(1)
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH
	return fuse.OK
}

// Flush answers ENOSYS so that close(2) costs no round trip.
func (fs *FS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return fuse.ENOSYS
}

// Fsync: there is nothing to sync; ENOSYS makes the kernel report success
// without asking again.
func (fs *FS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return fuse.ENOSYS
}

// Read serves the file's committed content (the kernel asks only after an
// invalidation). buf is go-fuse's reply buffer, zeroed once the reply is
// written.
func (fs *FS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if !fs.allowed(&in.Caller) {
		return nil, fuse.EACCES
	}
	n, err := fs.store.ReadAt(in.NodeId, buf[:min(len(buf), int(in.Size))], int64(in.Offset))
	if err != nil {
		return nil, errno(err)
	}
	return clearedRead(buf[:n]), fuse.OK
}

// clearedRead is a read reply held in go-fuse's reply buffer, which Done
// zeroes: go-fuse calls Done once it has written the reply to the kernel
// (or failed to), for every reply with status OK.
type clearedRead []byte

func (r clearedRead) Size() int                          { return len(r) }
func (r clearedRead) Bytes([]byte) ([]byte, fuse.Status) { return r, fuse.OK }
func (r clearedRead) Done()                              { clear(r) }

// Slices makes go-fuse send the reply with one writev straight from the
// buffer, and call Done only after it, whatever its splice settings (with
// splicing disabled it calls Done before writing what Bytes returned).
func (r clearedRead) Slices() ([][]byte, fuse.Status) { return [][]byte{r}, fuse.OK }

// SetAttr keeps the mode at 0600 and the owner fixed; truncation goes to the
// inode's draft like a write; times are ignored (mtime changes only with
// content, which HTCondor's "modified during reading" check relies on).
func (fs *FS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if !fs.allowed(&in.Caller) {
		return fuse.EACCES
	}
	isRoot := in.NodeId == rootIno
	name := "."
	if !isRoot {
		n, _, ok := fs.store.Stat(in.NodeId)
		if !ok {
			return fuse.ENOENT
		}
		name = n
	}
	if mode, ok := in.GetMode(); ok {
		want := uint32(fileMode)
		if isRoot {
			want = 0o700
		}
		if mode&0o7777 != want {
			fs.log.Warn("refused chmod: token files stay private", "name", name, "mode", modeString(mode&0o7777))
			return fuse.EPERM
		}
	}
	if uid, ok := in.GetUID(); ok && uid != fs.opt.UID {
		fs.log.Warn("refused chown", "name", name, "uid", uid)
		return fuse.EPERM
	}
	if gid, ok := in.GetGID(); ok && gid != fs.opt.GID {
		fs.log.Warn("refused chgrp", "name", name, "gid", gid)
		return fuse.EPERM
	}
	size, truncating := in.GetSize()
	if truncating {
		if isRoot {
			return fuse.EISDIR
		}
		if st := fs.truncate(in.NodeId, name, size); st != fuse.OK {
			return st
		}
	}
	st := fs.GetAttr(cancel, &fuse.GetAttrIn{InHeader: in.InHeader}, out)
	if st == fuse.OK && truncating {
		// Answer with the size the writer asked for, though the file keeps
		// its content until the rewrite is complete: a size that differs
		// from the kernel's makes it drop the file's cached pages itself,
		// before the writes that follow. Those writes then cannot land in a
		// page readers share: readers wait for them, or read from us.
		// Readers see that size (often 0: no token, not half of one) until
		// the rewrite is committed and the notifier refreshes them.
		out.Size = size
		out.Blocks = (size + 511) / 512
	}
	return st
}

func modeString(m uint32) string {
	const digits = "01234567"
	return string([]byte{'0', digits[m>>9&7], digits[m>>6&7], digits[m>>3&7], digits[m&7]})
}

// Everything below is refused: the directory is flat and holds only regular
// files.

func (fs *FS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	fs.log.Warn("refused mkdir: the token directory is flat", "name", name)
	return fuse.EPERM
}

func (fs *FS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if _, ok := fs.store.Lookup(name); ok {
		return fuse.ENOTDIR
	}
	return fuse.ENOENT
}

func (fs *FS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	fs.log.Warn("refused symlink: token files must be regular files", "name", name)
	return fuse.EPERM
}

func (fs *FS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	fs.log.Warn("refused hard link: a token lives under one name", "name", name)
	return fuse.EPERM
}

func (fs *FS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	return fuse.Status(syscall.EOPNOTSUPP)
}

func (fs *FS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	return fuse.Status(syscall.EOPNOTSUPP)
}

func (fs *FS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	return fuse.Status(syscall.ENOTTY)
}
