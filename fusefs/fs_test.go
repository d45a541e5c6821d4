package fusefs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/store"
	"github.com/tokend/tokend/token"
)

var testKey = bytes.Repeat([]byte{7}, 32)

// newToken signs a token for sub; every call gives a different token.
func newToken(t testing.TB, sub string) []byte {
	t.Helper()
	tok, err := token.Sign(token.Claims{Issuer: "example.org", Subject: sub, IssuedAt: time.Now(), Lifetime: time.Hour}, "POOL", testKey)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type fixture struct {
	dir   string
	store *store.Store
	fs    *FS
	log   *syncbuf.Buffer
}

// mount mounts a fresh store as root (the owner), in-process.
func mount(t *testing.T, limits store.Limits, tweak ...func(*Options)) *fixture {
	t.Helper()
	testenv.RequireRoot(t, "the filesystem is mounted in-process with DirectMount and read as the test users")
	return mountAt(t, t.TempDir(), limits, tweak...)
}

// mountAt mounts a fresh store at dir, owned by root unless tweak says
// otherwise.
func mountAt(t *testing.T, dir string, limits store.Limits, tweak ...func(*Options)) *fixture {
	t.Helper()
	st := store.New(limits)
	sink := &syncbuf.Buffer{}
	opt := Options{
		UID:    0,
		GID:    0,
		Logger: slog.New(slog.NewTextHandler(sink, nil)),
	}
	for _, f := range tweak {
		f(&opt)
	}
	fs, err := Mount(dir, st, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		st.Wipe()
		if err := fs.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	// Runs before the unmount: the test's opens went the mode's way.
	t.Cleanup(func() {
		n := fs.opened.Load()
		switch {
		case fs.OpenHandles() && n == 0:
			t.Error("open-handles mode: no OPEN or OPENDIR reached the filesystem")
		case !fs.OpenHandles() && !opt.Audit && n != 0:
			t.Errorf("kernel-no-open mode: %d OPEN/OPENDIR answered; the kernel should open files itself", n)
		}
	})
	return &fixture{dir: dir, store: st, fs: fs, log: sink}
}

// inBothOpenModes runs test with the kernel opening files and the directory
// itself (no_open, no_opendir: what this kernel offers) and with the
// filesystem answering OPEN and OPENDIR (what kernels without that support
// get), forced.
func inBothOpenModes(t *testing.T, test func(t *testing.T, mode func(*Options))) {
	for _, handles := range []bool{false, true} {
		name := "kernel-no-open"
		if handles {
			name = "open-handles"
		}
		t.Run(name, func(t *testing.T) {
			test(t, func(o *Options) { o.ForceOpenHandles = handles })
		})
	}
}

func (f *fixture) path(name string) string { return filepath.Join(f.dir, name) }

func (f *fixture) put(t *testing.T, name string, content []byte) {
	t.Helper()
	if _, err := f.store.Put(name, content, nil); err != nil {
		t.Fatal(err)
	}
}

// content returns what the store holds for name ("" and false if nothing).
func (f *fixture) content(name string) (string, bool) {
	a, ok := f.store.Lookup(name)
	if !ok {
		return "", false
	}
	b, err := f.store.Content(a.Ino)
	if err != nil {
		return "", false
	}
	defer b.Wipe()
	return string(b.Bytes()), true
}

func TestCondorReadSequence(t *testing.T) { inBothOpenModes(t, condorReadSequence) }

func condorReadSequence(t *testing.T, mode func(*Options)) {
	f := mount(t, store.Limits{}, mode)
	a, b := newToken(t, "alice@example.org"), newToken(t, "bob@example.org")
	f.put(t, "b-token", append(append([]byte("# fetched by hand\n"), b...), '\n'))
	f.put(t, "a-token", append(a, '\n'))
	files, err := condor.Read(f.dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("read %d files, want 2: %+v", len(files), files)
	}
	for i, want := range [][]byte{a, b} {
		if files[i].Err != nil {
			t.Fatalf("%s: %v", files[i].Path, files[i].Err)
		}
		if len(files[i].Tokens) != 1 || !bytes.Equal(files[i].Tokens[0], want) {
			t.Fatalf("%s: tokens %q, want %q", files[i].Path, files[i].Tokens, want)
		}
	}
	if p, _, _ := condor.Pick(files); filepath.Base(p) != "a-token" {
		t.Fatalf("picked %s, want a-token (bytewise first)", p)
	}
	var st1, st2 unix.Stat_t
	if err := unix.Stat(f.path("a-token"), &st1); err != nil {
		t.Fatal(err)
	}
	if st1.Mode != syscall.S_IFREG|0o600 || st1.Uid != 0 || st1.Size != int64(len(a)+1) || st1.Nlink != 1 {
		t.Fatalf("stat: mode %o uid %d size %d nlink %d", st1.Mode, st1.Uid, st1.Size, st1.Nlink)
	}
	// Stable inode and mtime while the content does not change.
	if _, err := condor.Read(f.dir, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(f.path("a-token"), &st2); err != nil {
		t.Fatal(err)
	}
	if st1.Ino != st2.Ino || st1.Mtim != st2.Mtim {
		t.Fatalf("inode or mtime changed without a change of content: %d/%v then %d/%v", st1.Ino, st1.Mtim, st2.Ino, st2.Mtim)
	}
	var dst unix.Stat_t
	if err := unix.Stat(f.dir, &dst); err != nil {
		t.Fatal(err)
	}
	if dst.Mode != syscall.S_IFDIR|0o700 || dst.Uid != 0 {
		t.Fatalf("directory mode %o uid %d", dst.Mode, dst.Uid)
	}
}

func TestCondorWriteSequence(t *testing.T) { inBothOpenModes(t, condorWriteSequence) }

func condorWriteSequence(t *testing.T, mode func(*Options)) {
	f := mount(t, store.Limits{}, mode)
	first, second, third := newToken(t, "a@x"), newToken(t, "b@x"), newToken(t, "c@x")

	// New file: open O_WRONLY fails with ENOENT, then O_CREAT|O_EXCL.
	if err := condor.Write(f.path("pool"), first); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.content("pool"); got != string(first)+"\n" {
		t.Fatalf("after create: %q", got)
	}
	// Existing file: ftruncate then write.
	if err := condor.Write(f.path("pool"), second); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.content("pool"); got != string(second)+"\n" {
		t.Fatalf("after overwrite: %q", got)
	}
	// What readers see through the mount (the kernel cache was invalidated).
	if got, err := os.ReadFile(f.path("pool")); err != nil || string(got) != string(second)+"\n" {
		t.Fatalf("read after overwrite: %q, %v", got, err)
	}
	// Writers before 23.9 append.
	if err := condor.Append(f.path("pool"), third); err != nil {
		t.Fatal(err)
	}
	want := string(second) + "\n" + string(third) + "\n"
	if got, _ := f.content("pool"); got != want {
		t.Fatalf("after append: %q", got)
	}
	if got, err := os.ReadFile(f.path("pool")); err != nil || string(got) != want {
		t.Fatalf("read after append: %q, %v", got, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(f.path("pool"), &st); err != nil || st.Size != int64(len(want)) || st.Mode&0o777 != 0o600 {
		t.Fatalf("stat after append: size %d mode %o err %v", st.Size, st.Mode, err)
	}
	// Append creating a new file.
	if err := condor.Append(f.path("appended"), first); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.content("appended"); got != string(first)+"\n" {
		t.Fatalf("append-create: %q", got)
	}
}

func TestShellWriters(t *testing.T) { inBothOpenModes(t, shellWriters) }

func shellWriters(t *testing.T, mode func(*Options)) {
	f := mount(t, store.Limits{}, mode)
	tok1, tok2 := newToken(t, "a@x"), newToken(t, "b@x")
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, append(tok1, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(script string, args ...string) {
		t.Helper()
		cmd := exec.Command("sh", append([]string{"-c", script, "sh"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", script, err, out)
		}
	}
	run(`cp "$1" "$2"`, src, f.path("copied"))
	if got, _ := f.content("copied"); got != string(tok1)+"\n" {
		t.Fatalf("cp: %q", got)
	}
	var st unix.Stat_t
	if err := unix.Stat(f.path("copied"), &st); err != nil || st.Mode&0o777 != 0o600 {
		t.Fatalf("cp of a 0644 file: mode %o, %v; want 0600", st.Mode&0o777, err)
	}
	run(`echo "$1" > "$2"`, string(tok2), f.path("copied"))
	if got, _ := f.content("copied"); got != string(tok2)+"\n" {
		t.Fatalf("echo >: %q", got)
	}
	run(`echo "$1" >> "$2"`, string(tok1), f.path("copied"))
	if got, _ := f.content("copied"); got != string(tok2)+"\n"+string(tok1)+"\n" {
		t.Fatalf("echo >>: %q", got)
	}
	run(`printf '%s' "$1" > "$2"`, string(tok1), f.path("no-newline"))
	if got, _ := f.content("no-newline"); got != string(tok1) {
		t.Fatalf("printf without newline: %q", got)
	}
	run(`mv "$1" "$2"`, f.path("no-newline"), f.path("copied"))
	if got, _ := f.content("copied"); got != string(tok1) {
		t.Fatalf("mv over: %q", got)
	}
	if _, ok := f.content("no-newline"); ok {
		t.Fatal("mv left the old name")
	}
	run(`rm "$1"`, f.path("copied"))
	if names := listDir(t, f.dir); len(names) != 0 {
		t.Fatalf("after rm: %v", names)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func TestRefusals(t *testing.T) { inBothOpenModes(t, refusals) }

func refusals(t *testing.T, mode func(*Options)) {
	f := mount(t, store.Limits{MaxFiles: 3, MaxFileSize: 1024, MaxNameLen: 32}, mode)
	good := append(newToken(t, "a@x"), '\n')
	f.put(t, "good", good)
	p := f.path("good")

	cases := []struct {
		name string
		op   func() error
		want syscall.Errno
	}{
		{"chmod 0644", func() error { return os.Chmod(p, 0o644) }, unix.EPERM},
		{"chmod 0640", func() error { return os.Chmod(p, 0o640) }, unix.EPERM},
		{"chmod 0700", func() error { return os.Chmod(p, 0o700) }, unix.EPERM},
		{"chmod 0600", func() error { return os.Chmod(p, 0o600) }, 0},
		{"chmod dir 0755", func() error { return os.Chmod(f.dir, 0o755) }, unix.EPERM},
		{"chown", func() error { return os.Chown(p, 1, 1) }, unix.EPERM},
		{"chown to owner", func() error { return os.Chown(p, 0, 0) }, 0},
		{"mkdir", func() error { return os.Mkdir(f.path("sub"), 0o700) }, unix.EPERM},
		{"mkfifo", func() error { return unix.Mkfifo(f.path("fifo"), 0o600) }, unix.EPERM},
		{"symlink", func() error { return os.Symlink("good", f.path("link")) }, unix.EPERM},
		{"hard link", func() error { return os.Link(p, f.path("hard")) }, unix.EPERM},
		{"setxattr", func() error { return unix.Setxattr(p, "user.x", []byte("1"), 0) }, unix.EOPNOTSUPP},
		{"getxattr", func() error { _, err := unix.Getxattr(p, "user.x", nil); return err }, unix.EOPNOTSUPP},
		{"rmdir file", func() error { return unix.Rmdir(p) }, unix.ENOTDIR},
		{"name too long", func() error { return os.WriteFile(f.path(strings.Repeat("n", 33)), good, 0o600) }, unix.ENAMETOOLONG},
		{"too big", func() error { return os.WriteFile(p, bytes.Repeat([]byte("#"), 1025), 0o600) }, unix.EFBIG},
		{"garbage", func() error { return os.WriteFile(p, []byte("not a token\n"), 0o600) }, unix.EINVAL},
		{"bad token", func() error { return os.WriteFile(p, []byte("eyJ.eyJ.sig\n"), 0o600) }, unix.EINVAL},
		{"NUL byte", func() error { return os.WriteFile(p, append(bytes.Clone(good), 0), 0o600) }, unix.EINVAL},
	}
	for _, c := range cases {
		err := c.op()
		var got syscall.Errno
		if err != nil && !errors.As(err, &got) {
			t.Errorf("%s: %v is not an errno", c.name, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s: errno %v, want %v", c.name, got, c.want)
		}
		// Nothing valid is lost to a refusal.
		if content, ok := f.content("good"); !ok || content != string(good) {
			t.Fatalf("after %s the good token changed: %q", c.name, content)
		}
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, good) {
			t.Fatalf("after %s a reader sees %q, %v", c.name, got, err)
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil || st.Mode&0o7777 != 0o600 || st.Size != int64(len(good)) {
			t.Fatalf("after %s: mode %o size %d err %v", c.name, st.Mode&0o7777, st.Size, err)
		}
	}
	if !strings.Contains(f.log.String(), "refused chmod") || !strings.Contains(f.log.String(), "not a token file") {
		t.Errorf("refusals were not logged:\n%s", f.log)
	}
	if strings.Contains(f.log.String(), strings.TrimSpace(string(good))) {
		t.Error("the log holds the token")
	}

	// The file limit: 3 files.
	f.put(t, "second", good)
	f.put(t, "third", good)
	err := os.WriteFile(f.path("fourth"), good, 0o600)
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("fourth file: %v, want ENOSPC", err)
	}
	// Rename with RENAME_NOREPLACE onto an existing name.
	err = unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, f.path("second"), unix.RENAME_NOREPLACE)
	if !errors.Is(err, unix.EEXIST) {
		t.Fatalf("rename noreplace: %v, want EEXIST", err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, f.path("second"), unix.RENAME_EXCHANGE)
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("rename exchange: %v, want EINVAL", err)
	}
}

// A write that leaves an incomplete token is dropped after the draft timeout;
// readers keep the previous content all along.
func TestIncompleteWriteIsDropped(t *testing.T) { inBothOpenModes(t, incompleteWriteIsDropped) }

func incompleteWriteIsDropped(t *testing.T, mode func(*Options)) {
	f := mount(t, store.Limits{}, func(o *Options) { o.DraftTimeout = 50 * time.Millisecond }, mode)
	good := append(newToken(t, "a@x"), '\n')
	f.put(t, "tok", good)
	fd, err := unix.Open(f.path("tok"), unix.O_WRONLY|unix.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	half := newToken(t, "b@x")
	half = half[:len(half)/2]
	if _, err := unix.Write(fd, half); err != nil {
		t.Fatalf("a partial token is not refused: %v", err)
	}
	unix.Close(fd)
	if got, err := os.ReadFile(f.path("tok")); err != nil || !bytes.Equal(got, good) {
		t.Fatalf("while a write is pending a reader sees %q, %v", got, err)
	}
	testenv.Eventually(t, 5*time.Second, "the incomplete draft was not dropped", func() bool {
		f.fs.mu.Lock()
		defer f.fs.mu.Unlock()
		return len(f.fs.drafts) == 0
	})
	if got, _ := f.content("tok"); got != string(good) {
		t.Fatalf("after the drop: %q", got)
	}
	if !strings.Contains(f.log.String(), "dropped an incomplete write") {
		t.Errorf("the drop was not logged:\n%s", f.log)
	}
}

// Changes made by the agent (not through the mount) reach readers at once,
// although the kernel caches entries, attributes, pages and listings.
func TestInvalidation(t *testing.T) { inBothOpenModes(t, invalidation) }

func invalidation(t *testing.T, mode func(*Options)) {
	f := mount(t, store.Limits{}, mode)
	one, two := append(newToken(t, "a@x"), '\n'), append(newToken(t, "b@x"), '\n')
	// Warm every cache: negative entry, listing, attributes, pages.
	if _, err := os.Stat(f.path("later")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat of a missing name: %v", err)
	}
	f.put(t, "tok", one)
	for range 2 {
		if got, err := os.ReadFile(f.path("tok")); err != nil || !bytes.Equal(got, one) {
			t.Fatalf("read: %q %v", got, err)
		}
		listDir(t, f.dir)
	}

	f.put(t, "tok", two) // the agent replaces it: a new inode
	testenv.Eventually(t, 2*time.Second, "new content not visible", func() bool {
		got, err := os.ReadFile(f.path("tok"))
		return err == nil && bytes.Equal(got, two)
	})
	f.put(t, "later", one) // a name the kernel had cached as missing
	testenv.Eventually(t, 2*time.Second, "new name not visible", func() bool {
		_, err := os.Stat(f.path("later"))
		return err == nil && slices.Contains(listDir(t, f.dir), "later")
	})

	// Hiding: an open descriptor stops reading the token too.
	fd, err := os.Open(f.path("tok"))
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	a, _ := f.store.Lookup("tok")
	for _, info := range f.store.Infos() {
		if info.Name == "tok" {
			f.store.Hide(info.ID, token.RotatedKey, 0)
		}
	}
	testenv.Eventually(t, 2*time.Second, "hidden token still listed or found", func() bool {
		_, err := os.Stat(f.path("tok"))
		return errors.Is(err, os.ErrNotExist) && !slices.Contains(listDir(t, f.dir), "tok")
	})
	buf := make([]byte, 4096)
	n, _ := fd.ReadAt(buf, 0)
	if bytes.Contains(buf[:n], bytes.TrimSpace(two)) {
		t.Fatalf("an open descriptor still reads the hidden token (inode %d)", a.Ino)
	}
}

// A reader that has a file open while the agent hides a token of it or
// refreshes it reads on what it opened, whole, or gets an error; never a
// page of the old content followed by one of the new (the store's package
// doc). The file spans several pages, the hidden token is on the first.
func TestOpenReaderNeverSeesAMix(t *testing.T) {
	for _, change := range []struct {
		what string
		do   func(*testing.T, *fixture)
	}{
		{"hide", func(t *testing.T, f *fixture) {
			if in := f.store.Infos(); len(in) == 0 || !f.store.Hide(in[0].ID, token.RotatedKey, 0) {
				t.Fatal("no token to hide")
			}
		}},
		{"refresh", func(t *testing.T, f *fixture) { f.put(t, "tok", append(newToken(t, "fresh@example.org"), '\n')) }},
	} {
		t.Run(change.what, func(t *testing.T) {
			f := mount(t, store.Limits{})
			var old []byte
			for i := 0; len(old) < 3*4096; i++ {
				old = append(append(old, newToken(t, fmt.Sprintf("user%d@example.org", i))...), '\n')
			}
			f.put(t, "tok", old)
			fd, err := os.Open(f.path("tok"))
			if err != nil {
				t.Fatal(err)
			}
			defer fd.Close()
			var st0 syscall.Stat_t
			if err := syscall.Fstat(int(fd.Fd()), &st0); err != nil {
				t.Fatal(err)
			}
			page := make([]byte, 4096)
			if n, err := fd.ReadAt(page, 0); err != nil || !bytes.Equal(page[:n], old[:n]) {
				t.Fatalf("first page: %d bytes, %v", n, err)
			}

			change.do(t, f)
			testenv.Eventually(t, 2*time.Second, "the name to get a new inode", func() bool {
				var st syscall.Stat_t
				return syscall.Stat(f.path("tok"), &st) == nil && st.Ino != st0.Ino
			})
			// Until the old inode's pages go (at once for a hide, a moment
			// later for a refresh), the descriptor reads the old content;
			// then it gets an error.
			buf := make([]byte, len(old)+4096)
			testenv.Eventually(t, 5*time.Second, "the old inode to stop being readable", func() bool {
				for _, off := range []int{4096, 0} {
					n, err := fd.ReadAt(buf, int64(off))
					if n > 0 && !bytes.Equal(buf[:n], old[off:off+n]) {
						t.Fatalf("after the %s the open descriptor read %d bytes at %d that are not what it opened", change.what, n, off)
					}
					if err == nil || errors.Is(err, io.EOF) {
						return false
					}
					if !errors.Is(err, syscall.ENOENT) {
						t.Fatalf("reading the old inode: %v, want ENOENT", err)
					}
				}
				return true
			})
			var st1 syscall.Stat_t
			if err := syscall.Fstat(int(fd.Fd()), &st1); err == nil && (st1.Size != st0.Size || st1.Mtim != st0.Mtim) {
				t.Fatalf("fstat of the old inode after the %s: size %d mtime %v, was %d %v", change.what, st1.Size, st1.Mtim, st0.Size, st0.Mtim)
			}
			// A new open reads the new content whole.
			want, _ := f.content("tok")
			if got, err := os.ReadFile(f.path("tok")); err != nil || string(got) != want || want == string(old) {
				t.Fatalf("after the %s: read %d bytes (%v), the store holds %d, the old file %d", change.what, len(got), err, len(want), len(old))
			}
		})
	}
}

func TestRenameAndUnlinkZero(t *testing.T) {
	f := mount(t, store.Limits{})
	one := append(newToken(t, "a@x"), '\n')
	f.put(t, "a", one)
	before, _ := f.store.Lookup("a")
	if err := os.Rename(f.path("a"), f.path("b")); err != nil {
		t.Fatal(err)
	}
	after, ok := f.store.Lookup("b")
	if !ok || after.Ino != before.Ino {
		t.Fatalf("rename: inode %d -> %d (%v)", before.Ino, after.Ino, ok)
	}
	live := secmem.Live()
	if err := os.Remove(f.path("b")); err != nil {
		t.Fatal(err)
	}
	if f.store.Len() != 0 || len(f.store.Infos()) != 0 {
		t.Fatalf("unlink left %d files, %d tokens", f.store.Len(), len(f.store.Infos()))
	}
	if secmem.Live() != live-1 {
		t.Fatalf("unlink left the token's buffer unwiped: %d live buffers, want %d", secmem.Live(), live-1)
	}
	if err := os.Remove(f.path("b")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("second unlink: %v", err)
	}
}

func TestStatfs(t *testing.T) {
	f := mount(t, store.Limits{MaxFiles: 10, MaxNameLen: 100})
	var s unix.Statfs_t
	if err := unix.Statfs(f.dir, &s); err != nil {
		t.Fatal(err)
	}
	if s.Namelen != 100 || s.Files != 10 {
		t.Fatalf("statfs: namelen %d files %d", s.Namelen, s.Files)
	}
	if fmt.Sprintf("%x", s.Type) != "65735546" { // FUSE_SUPER_MAGIC
		t.Fatalf("statfs type %x", s.Type)
	}
}

// In audit mode every open reaches the filesystem and is logged with the
// opener; reads still come from the cache.
func TestAudit(t *testing.T) {
	f := mount(t, store.Limits{}, func(o *Options) { o.Audit = true })
	f.put(t, "tok", append(newToken(t, "a@x"), '\n'))
	for range 2 {
		if out, err := exec.Command("cat", f.path("tok")).CombinedOutput(); err != nil {
			t.Fatalf("cat: %v: %s", err, out)
		}
	}
	log := f.log.String()
	if n := strings.Count(log, "token file opened"); n != 2 {
		t.Fatalf("%d opens logged, want 2:\n%s", n, log)
	}
	if !strings.Contains(log, "name=tok") || !strings.Contains(log, "exe=/usr/bin/cat") {
		t.Fatalf("the audit line does not name the file and the opener:\n%s", log)
	}
}

// The mode follows what the kernel offers; forced, every open and opendir
// reaches the filesystem, and a created file's handle ends at its close.
func TestOpenModes(t *testing.T) {
	f := mount(t, store.Limits{})
	f.put(t, "tok", append(newToken(t, "a@x"), '\n'))
	offered := f.fs.server.KernelSettings().Flags64()&noOpen == noOpen
	if f.fs.OpenHandles() == offered {
		t.Fatalf("kernel offers no_open and no_opendir: %v; the filesystem answers OPEN: %v", offered, f.fs.OpenHandles())
	}
	if !offered {
		t.Logf("this kernel lacks no_open/no_opendir support: the default is the open-handles mode")
	}
	if _, err := os.ReadFile(f.path("tok")); err != nil {
		t.Fatal(err)
	}
	listDir(t, f.dir)

	h := mount(t, store.Limits{}, func(o *Options) { o.ForceOpenHandles = true })
	if !h.fs.OpenHandles() {
		t.Fatal("ForceOpenHandles did not force the open-handles mode")
	}
	tok := append(newToken(t, "b@x"), '\n')
	h.put(t, "tok", tok)
	for i := range 3 {
		before := h.fs.opened.Load()
		if got, err := os.ReadFile(h.path("tok")); err != nil || !bytes.Equal(got, tok) {
			t.Fatalf("read %d: %q, %v", i, got, err)
		}
		if names := listDir(t, h.dir); !slices.Equal(names, []string{"tok"}) {
			t.Fatalf("listing %d: %v", i, names)
		}
		if n := h.fs.opened.Load() - before; n != 2 {
			t.Fatalf("one open and one opendir answered %d OPEN/OPENDIR, want 2", n)
		}
	}
	if err := condor.Write(h.path("new"), newToken(t, "c@x")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 2*time.Second, "a created file's handle outlived its close", func() bool {
		h.fs.mu.Lock()
		defer h.fs.mu.Unlock()
		return len(h.fs.created) == 0
	})
}
