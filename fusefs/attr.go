package fusefs

import (
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tokend/tokend/store"
)

// fileMode is the only mode a token file ever has.
const fileMode = 0o600

func (fs *FS) fileAttr(a store.Attr, out *fuse.Attr) {
	*out = fuse.Attr{
		Ino:     a.Ino,
		Size:    uint64(a.Size),
		Blocks:  (uint64(a.Size) + 511) / 512,
		Mode:    syscall.S_IFREG | fileMode,
		Nlink:   1,
		Blksize: 4096,
		Owner:   fuse.Owner{Uid: fs.opt.UID, Gid: fs.opt.GID},
	}
	setTimes(out, a.Mtime)
}

func (fs *FS) rootAttr(out *fuse.Attr) {
	mtime := time.Unix(0, fs.dirMtime.Load())
	*out = fuse.Attr{
		Ino:     rootIno,
		Mode:    syscall.S_IFDIR | 0o700,
		Nlink:   2,
		Blksize: 4096,
		Owner:   fuse.Owner{Uid: fs.opt.UID, Gid: fs.opt.GID},
	}
	setTimes(out, mtime)
}

func setTimes(out *fuse.Attr, t time.Time) {
	out.SetTimes(&t, &t, &t)
}

// entryOut describes a file to the kernel. A pending file (made by CREATE,
// not committed yet) is not cached: no name finds it, and its first commit
// or its end must not be hidden by a cached entry or size.
func (fs *FS) entryOut(a store.Attr, out *fuse.EntryOut) {
	out.NodeId = a.Ino
	out.Generation = 1
	fs.fileAttr(a, &out.Attr)
	out.SetEntryTimeout(fs.ttl(a))
	out.SetAttrTimeout(fs.ttl(a))
}

func (fs *FS) ttl(a store.Attr) time.Duration {
	if a.Pending {
		return 0
	}
	return fs.opt.CacheTTL
}

// GetAttr answers stat and fstat.
func (fs *FS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if !fs.allowed(&in.Caller) {
		return fuse.EACCES
	}
	if in.NodeId == rootIno {
		out.SetTimeout(fs.opt.CacheTTL)
		fs.rootAttr(&out.Attr)
		return fuse.OK
	}
	_, a, ok := fs.store.Stat(in.NodeId)
	if !ok {
		return fuse.ENOENT
	}
	out.SetTimeout(fs.ttl(a))
	fs.fileAttr(a, &out.Attr)
	return fuse.OK
}
