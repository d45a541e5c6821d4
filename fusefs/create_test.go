package fusefs

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/store"
	"github.com/tokend/tokend/token"
)

// sh runs a shell command line as the mount's owner, in the mount, and
// returns its output and whether it succeeded. The shell changes into the
// mount itself: a child that did so between fork and exec (cmd.Dir) would
// wait for this process's FUSE server while holding it still (vfork), and
// a garbage collection would then stop the server for good.
func (f *fixture) sh(t *testing.T, script string, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.Command("sh", append([]string{"-c", `cd "$MOUNT" && ` + script, "sh"}, args...)...)
	cmd.Env = append(os.Environ(), "MOUNT="+f.dir)
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// leftNothing fails unless no trace of name is left: not listed (ls and
// readdir), not found by path, nothing in the store, no draft.
func (f *fixture) leftNothing(t *testing.T, name string) {
	t.Helper()
	if out, ok := f.sh(t, "ls -A"); !ok || out != "" {
		t.Fatalf("ls shows %q (ok %v), want nothing", out, ok)
	}
	if names := listDir(t, f.dir); len(names) != 0 {
		t.Fatalf("the directory lists %v", names)
	}
	var st unix.Stat_t
	if err := unix.Stat(f.path(name), &st); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("stat %s: %v, want ENOENT", name, err)
	}
	if f.store.Has(name) || len(f.store.Infos()) != 0 || f.store.Len() != 0 {
		t.Fatalf("the store kept %s: %+v", name, f.store.Infos())
	}
	if n := f.drafts(); n != 0 {
		t.Fatalf("%d drafts left", n)
	}
}

// A write refused, never completed or failing after CREATE leaves no file.
func TestRefusedCreateLeavesNothing(t *testing.T) {
	tok := newToken(t, "a@x")
	t.Run("echo garbage", func(t *testing.T) {
		f := mount(t, store.Limits{})
		if out, ok := f.sh(t, "echo garbage > new"); ok {
			t.Fatalf("echo garbage > new succeeded: %s", out)
		}
		f.leftNothing(t, "new")
		if !strings.Contains(f.log.String(), "nothing is left") {
			t.Errorf("not logged:\n%s", f.log)
		}
	})
	t.Run("a broken token", func(t *testing.T) {
		f := mount(t, store.Limits{})
		if err := condor.Write(f.path("new"), []byte("eyJ.eyJ.sig")); !errors.Is(err, unix.EINVAL) {
			t.Fatalf("condor write of a broken token: %v, want EINVAL", err)
		}
		f.leftNothing(t, "new")
	})
	t.Run("too big", func(t *testing.T) {
		f := mount(t, store.Limits{MaxFileSize: len(tok) - 1})
		if err := condor.Write(f.path("new"), tok); !errors.Is(err, unix.EFBIG) {
			t.Fatalf("condor write of a token over the size limit: %v, want EFBIG", err)
		}
		f.leftNothing(t, "new")
	})
	t.Run("half a token, abandoned", func(t *testing.T) {
		f := mount(t, store.Limits{}, func(o *Options) { o.DraftTimeout = 50 * time.Millisecond })
		if out, ok := f.sh(t, `printf '%s' "$1" > new`, string(tok[:len(tok)/2])); !ok {
			t.Fatalf("a half token is refused: %s", out)
		}
		testenv.Eventually(t, 5*time.Second, "the abandoned new file was not dropped", func() bool {
			return f.drafts() == 0
		})
		f.leftNothing(t, "new")
		if !strings.Contains(f.log.String(), "nothing is left") {
			t.Errorf("not logged:\n%s", f.log)
		}
	})
	t.Run("touch", func(t *testing.T) {
		f := mount(t, store.Limits{}, func(o *Options) { o.DraftTimeout = 50 * time.Millisecond })
		if out, ok := f.sh(t, "touch new"); !ok {
			t.Fatalf("touch: %s", out)
		}
		testenv.Eventually(t, 5*time.Second, "the empty new file was not dropped", func() bool {
			return f.drafts() == 0
		})
		f.leftNothing(t, "new")
	})
}

// gone waits until the kernel no longer finds name: the notifier has told
// it of a hide. (A stat may fail before: its GETATTR reaches the store,
// while an open still finds the cached entry.)
func (f *fixture) gone(t *testing.T, name string) {
	t.Helper()
	testenv.Eventually(t, 5*time.Second, name+" is still found after a hide", func() bool {
		fd, err := unix.Open(f.path(name), unix.O_WRONLY, 0)
		if err == nil {
			unix.Close(fd)
		}
		return errors.Is(err, unix.ENOENT)
	})
}

func (f *fixture) drafts() int {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return len(f.fs.drafts)
}

// A file being created is seen by its creator only, until its first token
// is complete.
func TestCreatedFileInvisibleUntilCommit(t *testing.T) {
	f := mount(t, store.Limits{})
	tok := append(newToken(t, "a@x"), '\n')
	// Warm the directory's caches: a listing and a negative entry.
	listDir(t, f.dir)
	var st unix.Stat_t
	if err := unix.Stat(f.path("new"), &st); !errors.Is(err, unix.ENOENT) {
		t.Fatal(err)
	}
	fd, err := unix.Open(f.path("new"), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil || st.Size != 0 || st.Mode&0o777 != 0o600 {
		t.Fatalf("the creator's fstat: size %d mode %o, %v", st.Size, st.Mode&0o777, err)
	}
	// CREATE's entry is not cached: others do not find it by path.
	if err := unix.Stat(f.path("new"), &st); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("stat of a file being created: %v, want ENOENT", err)
	}
	if names := listDir(t, f.dir); len(names) != 0 {
		t.Fatalf("a file being created is listed: %v", names)
	}
	half := len(tok) / 2
	if _, err := unix.Write(fd, tok[:half]); err != nil {
		t.Fatal(err)
	}
	if names := listDir(t, f.dir); len(names) != 0 {
		t.Fatalf("a file half written is listed: %v", names)
	}
	if _, err := unix.Write(fd, tok[half:]); err != nil {
		t.Fatal(err)
	}
	// Committed: found at once (no "no such file" was cached for it while
	// it was being created), read, and listed once the notifier has told
	// the kernel.
	if err := unix.Stat(f.path("new"), &st); err != nil || st.Size != int64(len(tok)) {
		t.Fatalf("stat after the commit: size %d, %v", st.Size, err)
	}
	testenv.Eventually(t, 5*time.Second, "the committed file is not listed", func() bool {
		names := listDir(t, f.dir)
		return len(names) == 1 && names[0] == "new"
	})
	if got, err := os.ReadFile(f.path("new")); err != nil || !bytes.Equal(got, tok) {
		t.Fatalf("read after the commit: %q, %v", got, err)
	}
	if err := unix.Fstat(fd, &st); err != nil || st.Size != int64(len(tok)) {
		t.Fatalf("the creator's fstat after the commit: size %d, %v", st.Size, err)
	}
}

// A refused write under a name whose tokens are hidden but remembered
// destroys nothing (a failed condor_token_fetch -token NAME); new content
// does.
func TestRefusedCreateKeepsRemembered(t *testing.T) {
	f := mount(t, store.Limits{})
	old := append(newToken(t, "old@x"), '\n')
	f.put(t, "pool", old)
	id := f.store.Infos()[0].ID
	f.store.Hide(id, token.RotatedKey, 1)
	f.gone(t, "pool")
	for _, write := range []func() error{
		func() error { return condor.Write(f.path("pool"), []byte("eyJ.eyJ.sig")) },
		func() error { return os.WriteFile(f.path("pool"), []byte("garbage\n"), 0o600) },
	} {
		if err := write(); !errors.Is(err, unix.EINVAL) {
			t.Fatalf("refused write: %v", err)
		}
		if rs := f.store.Remembered(); len(rs) != 1 || rs[0].ID != id {
			t.Fatalf("a refused write cost the remembered token: %+v", rs)
		}
	}
	if !f.store.Restore(id) {
		t.Fatal("Restore after refused writes")
	}
	if got, err := os.ReadFile(f.path("pool")); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("restored: %q, %v", got, err)
	}
	// Hidden again, then overwritten with a good token: that zeroes it.
	f.store.Hide(id, token.RotatedKey, 1)
	f.gone(t, "pool")
	fresh := newToken(t, "new@x")
	if err := condor.Write(f.path("pool"), fresh); err != nil {
		t.Fatal(err)
	}
	if f.store.Restore(id) || len(f.store.Remembered()) != 0 {
		t.Fatal("new content kept the remembered token")
	}
	if got, err := os.ReadFile(f.path("pool")); err != nil || string(got) != string(fresh)+"\n" {
		t.Fatalf("after the new write: %q, %v", got, err)
	}
}

func TestMknodRefused(t *testing.T) {
	f := mount(t, store.Limits{})
	if err := unix.Mknod(f.path("node"), unix.S_IFREG|0o600, 0); !errors.Is(err, unix.EPERM) {
		t.Fatalf("mknod of a regular file: %v, want EPERM", err)
	}
	f.leftNothing(t, "node")
}

// touch: a new name stays empty-handed (above), an existing file keeps its
// content and its mtime (times are ignored).
func TestTouchExisting(t *testing.T) {
	f := mount(t, store.Limits{})
	good := append(newToken(t, "a@x"), '\n')
	f.put(t, "tok", good)
	before, _ := f.store.Lookup("tok")
	if out, ok := f.sh(t, "touch tok"); !ok {
		t.Fatalf("touch of an existing file: %s", out)
	}
	after, _ := f.store.Lookup("tok")
	if got, _ := f.content("tok"); got != string(good) || after != before {
		t.Fatalf("touch changed the file: %q, %+v -> %+v", got, before, after)
	}
}
