package fusefs

import (
	"maps"
	"slices"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// draft is one inode's content as its writer sees it. It outlives each
// commit: the writer's next write lands at offsets in its own view, not in
// the committed content (the quick check may have cut a token out of it).
// It is dropped after DraftTimeout without writes, at a write that makes it
// bad, when its inode is gone (unlinked, renamed over, replaced or removed
// by the agent), and at unmount.
type draft struct {
	buf       *secmem.Buffer // capacity; the draft is buf.Bytes()[:n]
	n         int
	timer     *time.Timer // drops the draft when writes stop
	committed bool        // the file holds what the draft holds
}

func (d *draft) bytes() []byte { return d.buf.Bytes()[:d.n] }

func (d *draft) drop() {
	d.timer.Stop()
	d.buf.Wipe()
}

// resize makes the draft n bytes long, zero-filling growth.
func (d *draft) resize(n int) error {
	if n > d.buf.Len() {
		nb, err := secmem.New(max(n, 2*d.buf.Len()))
		if err != nil {
			return err
		}
		copy(nb.Bytes(), d.bytes())
		d.buf.Wipe()
		d.buf = nb
	}
	if n < d.n {
		clear(d.buf.Bytes()[n:d.n])
	}
	d.n = n
	return nil
}

// draftLocked returns the inode's draft, starting one from the file's
// committed content if there is none. fs.mu must be held.
func (fs *FS) draftLocked(ino uint64, name string) (*draft, fuse.Status) {
	if d := fs.drafts[ino]; d != nil {
		return d, fuse.OK
	}
	content, err := fs.store.Content(ino)
	if err != nil {
		return nil, errno(err)
	}
	d := &draft{buf: content, n: content.Len()}
	d.timer = time.AfterFunc(fs.opt.DraftTimeout, func() { fs.expire(ino, name, d) })
	fs.drafts[ino] = d
	return d, fuse.OK
}

// expire drops a draft once writes stopped.
func (fs *FS) expire(ino uint64, name string, d *draft) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.drafts[ino] != d {
		return
	}
	fs.endDraftLocked(ino, name)
}

// endDraftLocked drops the draft of a writer that is done, saying so if its
// last state never became the file's content. A file made by CREATE that
// never got a complete token goes with it.
func (fs *FS) endDraftLocked(ino uint64, name string) {
	d := fs.drafts[ino]
	if d == nil {
		return
	}
	switch {
	case d.committed:
	case fs.store.Abandon(ino):
		fs.log.Warn("dropped an incomplete write to a new file: no complete token arrived; nothing is left", "name", name)
	default:
		fs.log.Warn("dropped an incomplete write: no complete token arrived; the file keeps its previous content", "name", name)
	}
	fs.dropDraftLocked(ino)
}

// abandonLocked drops a file made by CREATE that has never been committed,
// with its draft: a refused write leaves nothing behind. A file that has
// content keeps it, and its draft.
func (fs *FS) abandonLocked(ino uint64, name string) {
	if fs.store.Abandon(ino) {
		fs.dropDraftLocked(ino)
		fs.log.Warn("dropped a new file: its first write was refused; nothing is left", "name", name)
	}
}

func (fs *FS) dropDraftLocked(ino uint64) {
	if d := fs.drafts[ino]; d != nil {
		d.drop()
		delete(fs.drafts, ino)
	}
	// The kernel cached what the writer wrote; make it ask again.
	fs.notes.invalidate(ino)
}

// settleLocked checks the draft after a change: commit it, refuse it, or
// keep waiting.
func (fs *FS) settleLocked(ino uint64, name string, d *draft) fuse.Status {
	state, err := token.CheckDraft(d.bytes())
	if state == token.DraftBad {
		if fs.store.Abandon(ino) {
			fs.dropDraftLocked(ino)
			fs.log.Warn("refused a write to a new file: not a token file; nothing is left", "name", name, "reason", err.Error())
			return fuse.EINVAL
		}
		// The writer's bytes went through the page cache that readers
		// share; a new mtime lets a reader that took them in notice.
		fs.store.Touch(ino)
		fs.dropDraftLocked(ino)
		fs.log.Warn("refused a write: not a token file; the file keeps its previous content", "name", name, "reason", err.Error())
		return fuse.EINVAL
	}
	d.timer.Reset(fs.opt.DraftTimeout)
	if state == token.DraftPending {
		d.committed = false
		fs.store.Touch(ino)
		fs.notes.invalidate(ino)
		return fuse.OK
	}
	if _, err = fs.store.Replace(ino, d.bytes(), fs.opt.Check); err != nil {
		fs.dropDraftLocked(ino)
		if fs.store.Abandon(ino) {
			fs.log.Warn("refused a write to a new file; nothing is left", "name", name, "reason", err.Error())
		} else {
			fs.log.Warn("refused a write", "name", name, "reason", err.Error())
		}
		return errno(err)
	}
	d.committed = true
	return fuse.OK
}

// Write changes the inode's draft.
func (fs *FS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	if !fs.allowed(&in.Caller) {
		return 0, fuse.EACCES
	}
	name, ok := fs.store.Exists(in.NodeId)
	if !ok {
		return 0, fuse.ENOENT
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	d, st := fs.draftLocked(in.NodeId, name)
	if st != fuse.OK {
		return 0, st
	}
	off := int64(in.Offset)
	if in.Flags&syscall.O_APPEND != 0 {
		// The kernel puts an append at its cached size, which a truncation
		// (answered with the committed size) may have made stale: append
		// at the end of the content the writer sees.
		off = int64(d.n)
	}
	end := off + int64(len(data))
	if end > int64(fs.store.Limits().MaxFileSize) {
		fs.log.Warn("refused a write: file too big", "name", name, "size", end)
		fs.abandonLocked(in.NodeId, name)
		return 0, fuse.Status(syscall.EFBIG)
	}
	if int(end) > d.n {
		if err := d.resize(int(end)); err != nil {
			fs.abandonLocked(in.NodeId, name)
			return 0, fuse.Status(syscall.ENOMEM)
		}
	}
	copy(d.bytes()[off:], data)
	if st := fs.settleLocked(in.NodeId, name, d); st != fuse.OK {
		return 0, st
	}
	return uint32(len(data)), fuse.OK
}

// truncate is ftruncate/O_TRUNC: it changes the draft like a write.
func (fs *FS) truncate(ino uint64, name string, size uint64) fuse.Status {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if size > uint64(fs.store.Limits().MaxFileSize) {
		fs.abandonLocked(ino, name)
		return fuse.Status(syscall.EFBIG)
	}
	d, st := fs.draftLocked(ino, name)
	if st != fuse.OK {
		return st
	}
	if err := d.resize(int(size)); err != nil {
		fs.abandonLocked(ino, name)
		return fuse.Status(syscall.ENOMEM)
	}
	return fs.settleLocked(ino, name, d)
}

// Create makes a new, empty file (mode 0600 whatever was asked) and opens
// it. The file is pending (store.Create): no one finds it by name until its
// first complete token is committed, so a write that is refused or never
// completes leaves nothing behind. Its entry and attributes are not cached
// (entryOut), and its draft starts at once, so that the draft timeout drops
// a file that is never written (touch).
func (fs *FS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	if !fs.allowed(&in.Caller) {
		return fuse.EACCES
	}
	if in.NodeId != rootIno {
		return fuse.ENOTDIR
	}
	a, err := fs.store.Create(name)
	if err != nil {
		fs.log.Warn("refused to create a token file", "name", name, "reason", err.Error())
		return errno(err)
	}
	fs.entryOut(a, &out.EntryOut)
	fs.mu.Lock()
	if _, st := fs.draftLocked(a.Ino, name); st != fuse.OK {
		fs.store.Abandon(a.Ino)
		fs.mu.Unlock()
		return st
	}
	fs.created[a.Ino] = true
	// Once the kernel has learned that OPEN is not implemented it no longer
	// sends RELEASE for created files either. Handles go with their file
	// (unlink, rename over, the agent's changes), except a file the store
	// dropped unseen (no longer shown, then evicted or replaced): when there
	// are more handles than files, forget those in one look at the store.
	if len(fs.created) > fs.store.Limits().MaxFiles {
		for _, ino := range fs.store.Missing(slices.Collect(maps.Keys(fs.created))) {
			delete(fs.created, ino)
		}
	}
	fs.mu.Unlock()
	// Inode numbers are never reused: the inode is the handle.
	out.Fh = a.Ino
	// The creator's writes skip the page cache: until they are committed
	// they are not the file's content.
	out.OpenFlags = fuse.FOPEN_DIRECT_IO
	return fuse.OK
}

// Mknod is refused: a token file appears when a token is written to it
// (Create), and a file made by mknod, with no descriptor to write it
// through, could never get one.
func (fs *FS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	if !fs.allowed(&in.Caller) {
		return fuse.EACCES
	}
	if in.Mode&syscall.S_IFMT != syscall.S_IFREG {
		fs.log.Warn("refused mknod: token files must be regular files", "name", name)
	} else {
		fs.log.Warn("refused mknod: a token file appears when a token is written to it (open with O_CREAT)", "name", name)
	}
	return fuse.EPERM
}

// Release ends a handle from Create: its writer is done. The kernel sends
// it only until OPEN first answers ENOSYS; after that a created file's
// pending draft ends at the draft timeout instead.
func (fs *FS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	ino := in.Fh
	if !fs.created[ino] {
		return // an OPEN's handle (audit mode), or a file already gone
	}
	delete(fs.created, ino)
	name, _ := fs.store.Exists(ino)
	fs.endDraftLocked(ino, name)
}

// Unlink removes a file; the store zeroes its bytes.
func (fs *FS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if !fs.allowed(&h.Caller) {
		return fuse.EACCES
	}
	a, ok := fs.store.Lookup(name)
	if !ok {
		return fuse.ENOENT
	}
	fs.mu.Lock()
	if fs.drafts[a.Ino] != nil {
		fs.dropDraftLocked(a.Ino)
	}
	delete(fs.created, a.Ino)
	fs.mu.Unlock()
	return errno(fs.store.Remove(name))
}

// Rename moves a file, replacing the target unless RENAME_NOREPLACE.
func (fs *FS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, from, to string) fuse.Status {
	if !fs.allowed(&in.Caller) {
		return fuse.EACCES
	}
	if in.NodeId != rootIno || in.Newdir != rootIno {
		return fuse.Status(syscall.EXDEV)
	}
	const renameNoReplace = 1 // RENAME_NOREPLACE
	if in.Flags&^renameNoReplace != 0 {
		return fuse.EINVAL // exchange and whiteout are not supported
	}
	if a, ok := fs.store.Lookup(to); ok {
		fs.mu.Lock()
		if fs.drafts[a.Ino] != nil {
			fs.dropDraftLocked(a.Ino)
		}
		fs.mu.Unlock()
	}
	err := fs.store.Rename(from, to, in.Flags&renameNoReplace != 0)
	if err != nil {
		fs.log.Warn("refused rename", "from", from, "to", to, "reason", err.Error())
	}
	return errno(err)
}
