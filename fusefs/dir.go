package fusefs

import (
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Lookup resolves a name in the directory. Misses are cached too (negative
// entries); names the agent adds later are announced with NotifyEntry. A
// miss of a name a gate covers waits at the gate, and is never cached.
func (fs *FS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if !fs.allowed(&h.Caller) {
		return fuse.EACCES
	}
	if h.NodeId != rootIno {
		return fuse.ENOTDIR
	}
	if err := fs.store.CheckName(name); err != nil {
		return errno(err)
	}
	a, ok := fs.store.Lookup(name)
	if !ok {
		waited, st := fs.hold(cancel, &h.Caller, name, false)
		if st != fuse.OK {
			return st
		}
		if waited {
			a, ok = fs.store.Lookup(name)
		}
	}
	if !ok {
		// NodeId 0 with a timeout is a cacheable "no such name". Not for
		// a name being created: its first commit makes it appear, and the
		// notifier would tell the kernel only a moment later. Nor for a
		// gated name: its fresh token must be found the moment it is in
		// the store, although the notifier may hold back its NotifyEntry.
		out.NodeId = 0
		if !fs.store.Creating(name) && !fs.gates.noNegative(name) {
			out.SetEntryTimeout(fs.opt.CacheTTL)
		}
		return fuse.OK
	}
	fs.entryOut(a, out)
	return fuse.OK
}

// Forget needs nothing: inode numbers are never reused, so the store keeps
// no per-lookup state.
func (fs *FS) Forget(nodeid, nlookup uint64) {}

// OpenDir answers ENOSYS so that the kernel stops sending it and caches
// listings (FOPEN_CACHE_DIR is its default without opendir). Where the
// kernel cannot do without (see OpenHandles) it answers with those defaults.
func (fs *FS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if !fs.openHandles {
		return fuse.ENOSYS
	}
	if !fs.allowed(&in.Caller) {
		return fuse.EACCES
	}
	if in.NodeId != rootIno {
		return fuse.ENOTDIR
	}
	fs.opened.Add(1)
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_CACHE_DIR
	return fuse.OK
}

func (fs *FS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fs.readDir(cancel, in, out, false)
}

func (fs *FS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fs.readDir(cancel, in, out, true)
}

// readDir lists the directory from offset in.Offset; offsets count entries
// ("." is 0, ".." is 1, files follow in name order). A listing's start
// waits at every closed gate.
func (fs *FS) readDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	if !fs.allowed(&in.Caller) {
		return fuse.EACCES
	}
	if in.NodeId != rootIno {
		return fuse.ENOTDIR
	}
	if in.Offset == 0 {
		if _, st := fs.hold(cancel, &in.Caller, "", true); st != fuse.OK {
			return st
		}
	}
	entries := fs.store.List()
	for off := in.Offset; off < uint64(len(entries))+2; off++ {
		var de fuse.DirEntry
		switch off {
		case 0:
			de = fuse.DirEntry{Name: ".", Ino: rootIno, Mode: syscall.S_IFDIR}
		case 1:
			de = fuse.DirEntry{Name: "..", Ino: rootIno, Mode: syscall.S_IFDIR}
		default:
			e := entries[off-2]
			de = fuse.DirEntry{Name: e.Name, Ino: e.Attr.Ino, Mode: syscall.S_IFREG}
		}
		de.Off = off + 1
		if !plus {
			if !out.AddDirEntry(de) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(de)
		if eo == nil {
			break
		}
		if off >= 2 {
			fs.entryOut(entries[off-2].Attr, eo)
		}
	}
	return fuse.OK
}

func (fs *FS) ReleaseDir(in *fuse.ReleaseIn) {}

// StatFs reports the store's limits: names up to MaxNameLen, files up to
// MaxFiles.
func (fs *FS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	if !fs.allowed(&h.Caller) {
		return fuse.EACCES
	}
	l := fs.store.Limits()
	n := uint64(fs.store.Len())
	*out = fuse.StatfsOut{
		Bsize:   4096,
		Frsize:  4096,
		NameLen: uint32(l.MaxNameLen),
		Files:   uint64(l.MaxFiles),
		Ffree:   uint64(l.MaxFiles) - min(n, uint64(l.MaxFiles)),
		Blocks:  uint64(l.MaxFiles) * uint64(l.MaxFileSize) / 4096,
	}
	out.Bfree = out.Blocks
	out.Bavail = out.Blocks
	return fuse.OK
}

// Access answers access(2): the owner may read and write, nobody executes.
func (fs *FS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	if !fs.allowed(&in.Caller) {
		return fuse.EACCES
	}
	if in.Mask&1 != 0 && in.NodeId != rootIno { // X_OK on a file
		return fuse.EACCES
	}
	return fuse.OK
}
