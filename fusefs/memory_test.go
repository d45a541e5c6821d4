package fusefs

import (
	"bytes"
	"os"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tokend/tokend/store"
)

func asOwner(ino uint64) fuse.InHeader {
	return fuse.InHeader{NodeId: ino, Caller: fuse.Caller{Owner: fuse.Owner{Uid: 0, Gid: 0}}}
}

// WRITE data, which lives in go-fuse's request buffer, is zeroed once it is
// in the draft, and also when the write is refused.
func TestWriteClearsRequestData(t *testing.T) {
	f := mount(t, store.Limits{})
	old := append(newToken(t, "a@example.org"), '\n')
	f.put(t, "t", old)
	a, _ := f.store.Lookup("t")
	next := append(newToken(t, "b@example.org"), '\n') // same length: overwrites all of it
	data := bytes.Clone(next)
	n, st := f.fs.Write(nil, &fuse.WriteIn{InHeader: asOwner(a.Ino)}, data)
	if st != fuse.OK || int(n) != len(next) {
		t.Fatalf("Write = %d, %v", n, st)
	}
	if got, _ := f.content("t"); got != string(next) {
		t.Fatalf("content %q, want the written token", got)
	}
	if !bytes.Equal(data, make([]byte, len(data))) {
		t.Error("the written data was not zeroed")
	}
	bad := append([]byte("not a token\n"), next...)
	data = bytes.Clone(bad)
	if _, st := f.fs.Write(nil, &fuse.WriteIn{InHeader: asOwner(a.Ino)}, data); st != fuse.EINVAL {
		t.Fatalf("bad write: %v, want EINVAL", st)
	}
	if !bytes.Equal(data, make([]byte, len(data))) {
		t.Error("the refused data was not zeroed")
	}
}

// A read reply is zeroed by Done, which go-fuse calls once it has written
// the reply; the reply goes out through writev from the buffer itself.
func TestReadReplyClearedByDone(t *testing.T) {
	f := mount(t, store.Limits{})
	content := append(newToken(t, "a@example.org"), '\n')
	f.put(t, "t", content)
	a, _ := f.store.Lookup("t")
	buf := make([]byte, 4096)
	rr, st := f.fs.Read(nil, &fuse.ReadIn{InHeader: asOwner(a.Ino), Size: 4096}, buf)
	if st != fuse.OK || rr.Size() != len(content) {
		t.Fatalf("Read = %v, size %d", st, rr.Size())
	}
	got, _ := rr.Bytes(nil)
	if !bytes.Equal(got, content) {
		t.Fatalf("read %q", got)
	}
	if _, ok := rr.(interface {
		Slices() ([][]byte, fuse.Status)
	}); !ok {
		t.Error("the reply has no Slices: go-fuse would call Done before writing it when splicing is off")
	}
	rr.Done()
	if !bytes.Equal(buf, make([]byte, len(buf))) {
		t.Error("Done did not zero the reply buffer")
	}
	// Through the mount, the kernel gets the content, not zeros.
	if b, err := os.ReadFile(f.path("t")); err != nil || !bytes.Equal(b, content) {
		t.Errorf("read through the mount: %q, %v", b, err)
	}
}

// DropDrafts zeroes every draft, committed or pending.
func TestDropDrafts(t *testing.T) {
	f := mount(t, store.Limits{})
	f.put(t, "t", append(newToken(t, "a@example.org"), '\n'))
	a, _ := f.store.Lookup("t")
	half := newToken(t, "b@example.org")[:20]
	if _, st := f.fs.Write(nil, &fuse.WriteIn{InHeader: asOwner(a.Ino)}, bytes.Clone(half)); st != fuse.OK {
		t.Fatalf("Write: %v", st)
	}
	f.fs.mu.Lock()
	d := f.fs.drafts[a.Ino]
	f.fs.mu.Unlock()
	if d == nil {
		t.Fatal("no draft after a write")
	}
	f.fs.DropDrafts()
	f.fs.mu.Lock()
	left := len(f.fs.drafts)
	f.fs.mu.Unlock()
	if left != 0 || d.buf.Len() != 0 {
		t.Errorf("%d drafts left; the dropped one holds %d bytes", left, d.buf.Len())
	}
}
