package mounttab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestMountedIn(t *testing.T) {
	const table = `22 27 0:21 / /proc rw,relatime - proc proc rw
90 27 0:55 / /home/a/.condor/tokens.d rw,nosuid,nodev,relatime shared:40 - fuse.tokend tokend rw,user_id=1000,group_id=1000
91 27 0:56 / /home/my\040files/tokens.d rw,nosuid,nodev,relatime shared:41 master:3 - fuse tokend rw,user_id=1000,group_id=1000
92 27 0:57 / /home/b/tokens.d rw,nosuid,nodev,relatime - fuse.sshfs host:/x rw,user_id=1001,group_id=1001
93 27 0:58 / /home/c/tokens.d rw,relatime - tmpfs tokend rw
`
	for _, c := range []struct {
		dir  string
		want bool
	}{
		{"/home/a/.condor/tokens.d", true},
		{"/home/my files/tokens.d", true}, // octal escape, two optional fields
		{"/home/b/tokens.d", false},       // FUSE, not tokend
		{"/home/c/tokens.d", false},       // named tokend, not FUSE
		{"/home/a/.condor", false},        // the parent of a mount
		{"/proc", false},
		{"/nowhere", false},
	} {
		if got := mountedIn(table, c.dir); got != c.want {
			t.Errorf("mountedIn(%q) = %v, want %v", c.dir, got, c.want)
		}
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:        "plain",
		`a\040b`:       "a b",
		`tab\011`:      "tab\t",
		`back\134sl`:   `back\sl`,
		`not\09x`:      `not\09x`, // not octal: kept
		`short\04`:     `short\04`,
		`\040\040end`:  "  end",
		`nl\012inside`: "nl\ninside",
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCanonical(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "home")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	// The last element is never resolved, even when it is a symlink.
	last := filepath.Join(real, "last")
	if err := os.Symlink(t.TempDir(), last); err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		link + "/tokens.d":          real + "/tokens.d",
		link + "/tokens.d/":         real + "/tokens.d",
		link + "/./x/../tokens.d":   real + "/tokens.d",
		real + "/tokens.d":          real + "/tokens.d",
		link + "/last":              last,
		"/no/such/parent/tokens.d/": "/no/such/parent/tokens.d",
	} {
		if got := Canonical(in); got != want {
			t.Errorf("Canonical(%q) = %q, want %q", in, got, want)
		}
	}
}

// liveMount mounts a FUSE filesystem named as tokend's at dir, served by
// go-fuse's default (every request answered ENOSYS).
func liveMount(t *testing.T, dir string) {
	t.Helper()
	srv, err := fuse.NewServer(fuse.NewDefaultRawFileSystem(), dir, &fuse.MountOptions{FsName: "tokend", Name: "tokend", DirectMount: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// deadMount mounts a tokend FUSE filesystem at dir and closes its
// connection at once, as the kernel sees a killed agent's mount: every
// access fails with ENOTCONN.
func deadMount(t *testing.T, dir string) {
	t.Helper()
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/fuse: %v", err)
	}
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", fd)
	err = unix.Mount("tokend", dir, "fuse.tokend", unix.MS_NOSUID|unix.MS_NODEV, data)
	unix.Close(fd)
	if err != nil {
		t.Fatalf("mount %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if Mounted(dir) {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	if _, err := os.Stat(dir); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("stat of a mount whose connection is closed: %v, want ENOTCONN", err)
	}
}

// A mount reached through a symlinked parent (a symlinked /home) is found.
func TestMountedThroughSymlink(t *testing.T) {
	testenv.RequireRoot(t, "it mounts with DirectMount")
	dir := filepath.Join(t.TempDir(), "tokens.d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	liveMount(t, dir)
	link := filepath.Join(t.TempDir(), "home")
	if err := os.Symlink(filepath.Dir(dir), link); err != nil {
		t.Fatal(err)
	}
	through := filepath.Join(link, filepath.Base(dir))
	for _, p := range []string{dir, dir + "/", through, through + "/"} {
		if !Mounted(p) {
			t.Errorf("Mounted(%q) = false", p)
		}
	}
	if Mounted(filepath.Dir(dir)) {
		t.Error("the parent of the mount counts as mounted")
	}
}

// A dead mount is detached; a live one and a plain directory are left alone.
func TestRecoverStale(t *testing.T) {
	testenv.RequireRoot(t, "it mounts with DirectMount")
	plain, live, dead := t.TempDir(), t.TempDir(), t.TempDir()
	liveMount(t, live)
	deadMount(t, dead)

	for _, c := range []struct {
		what, dir string
		stale     bool
	}{{"a plain directory", plain, false}, {"a live mount", live, false}, {"a dead mount", dead, true}} {
		stale, err := RecoverStale(c.dir)
		if stale != c.stale || err != nil {
			t.Errorf("RecoverStale on %s = %v, %v; want %v, nil", c.what, stale, err, c.stale)
		}
	}
	if !Mounted(live) {
		t.Error("RecoverStale detached a live mount")
	}
	if Mounted(dead) {
		t.Error("the dead mount is still in the mount table")
	}
	if _, err := os.Stat(dead); err != nil {
		t.Errorf("after recovery the mount point gives %v, want a plain directory", err)
	}
	// Once recovered there is nothing left to recover.
	if stale, err := RecoverStale(dead); stale || err != nil {
		t.Errorf("RecoverStale a second time = %v, %v; want false, nil", stale, err)
	}
}

// Detach ends a live mount (lazily) and accepts a directory that is not one.
func TestDetach(t *testing.T) {
	testenv.RequireRoot(t, "it opens /dev/fuse and mounts directly")
	dir := t.TempDir()
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/fuse: %v", err)
	}
	defer unix.Close(fd)
	if err := unix.Mount("tokend", dir, "fuse.tokend", 0, fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", fd)); err != nil {
		t.Fatalf("mount %s: %v", dir, err)
	}
	if !Mounted(dir) {
		t.Fatal("a fresh mount is not in the mount table")
	}
	if err := Detach(dir); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if Mounted(dir) {
		t.Fatal("still mounted after Detach")
	}
	if err := Detach(dir); err != nil {
		t.Fatalf("Detach of a directory that is no mount: %v", err)
	}
}
