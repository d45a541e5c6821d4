package safepath

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tokend/tokend/internal/testenv"
)

const stranger = 54329 // a uid and gid nobody trusts

// tree makes, under a fresh directory, what the cases below point into.
func tree(t *testing.T) (base string, trust Trust) {
	t.Helper()
	base = t.TempDir()
	mk := func(rel string, mode os.FileMode) string {
		p := filepath.Join(base, rel)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	key := func(rel string) {
		if err := os.WriteFile(filepath.Join(base, rel), []byte("key"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	link := func(rel, target string) {
		if err := os.Symlink(target, filepath.Join(base, rel)); err != nil {
			t.Fatal(err)
		}
	}
	mk("keys", 0o700)
	key("keys/POOL")
	mk("store", 0o755)
	key("store/AP")
	mk("world", 0o777)
	key("world/AP")
	mk("sticky", os.ModeSticky|0o777)
	key("sticky/AP")
	mk("sticky/sub", 0o700)
	key("sticky/sub/AP")
	link("keys/ABS", filepath.Join(base, "store/AP"))
	link("keys/REL", "../store/./AP")
	link("keys/CHAIN", "REL")
	link("keys/DIRLINK", "../store")
	link("keys/WORLD", "../world/AP")
	link("keys/STICKY", "../sticky/AP")
	link("keys/STICKYSUB", "../sticky/sub/AP")
	link("keys/LOOP1", "LOOP2")
	link("keys/LOOP2", "LOOP1")
	link("keys/DANGLING", "../store/nope")
	link("sticky/LINK", "../store/AP")
	link("keys/INSTICKY", "../sticky/LINK")
	if err := syscall.Mkfifo(filepath.Join(base, "keys/FIFO"), 0o600); err != nil {
		t.Fatal(err)
	}
	return base, Trust{UIDs: []int{os.Geteuid()}}
}

func TestFile(t *testing.T) {
	base, trust := tree(t)
	keys := filepath.Join(base, "keys")
	for _, tc := range []struct {
		name, path, resolved string
	}{
		{"plain", keys + "/POOL", keys + "/POOL"},
		{"absolute link into a trusted directory", keys + "/ABS", base + "/store/AP"},
		{"relative link with ..", keys + "/REL", base + "/store/AP"},
		{"a link to a link", keys + "/CHAIN", base + "/store/AP"},
		{"a link to a directory", keys + "/DIRLINK/AP", base + "/store/AP"},
		{"a directory in a sticky directory", keys + "/STICKYSUB", base + "/sticky/sub/AP"},
		{"a trusted user's symlink in a sticky directory", keys + "/INSTICKY", base + "/store/AP"},
		{"dots in the path", keys + "/../keys/./POOL", keys + "/POOL"},
	} {
		got, err := File(tc.path, trust)
		if err != nil || got != tc.resolved {
			t.Errorf("%s: File(%s) = %q, %v; want %q", tc.name, tc.path, got, err, tc.resolved)
		}
	}
}

func TestFileRefused(t *testing.T) {
	base, trust := tree(t)
	keys := filepath.Join(base, "keys")
	for _, tc := range []struct {
		name, path string
		want       []string
	}{
		{"a link into a world-writable directory", keys + "/WORLD", []string{base + "/world is writable by others (mode 0777)", "owned by root or the condor user"}},
		{"a file in a sticky directory", keys + "/STICKY", []string{base + "/sticky/AP is in the sticky directory " + base + "/sticky"}},
		{"a loop", keys + "/LOOP1", []string{"more than 40 symlinks"}},
		{"a FIFO", keys + "/FIFO", []string{"is not a regular file"}},
		{"a directory", keys, []string{"is not a regular file"}},
		{"a relative path", "keys/POOL", []string{"not an absolute path"}},
		{"a file on the way", keys + "/POOL/x", []string{keys + "/POOL is not a directory"}},
	} {
		got, err := File(tc.path, trust)
		if err == nil {
			t.Errorf("%s: File(%s) = %q, want an error", tc.name, tc.path, got)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v\nwant it to say %q", tc.name, err, w)
			}
		}
	}
	for _, p := range []string{keys + "/NOPE", keys + "/DANGLING"} {
		if _, err := File(p, trust); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("File(%s): %v, want fs.ErrNotExist", p, err)
		}
	}
	if err := os.Chmod(keys+"/POOL", 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := File(keys+"/POOL", trust); err == nil || !strings.Contains(err.Error(), "chmod 600 "+keys+"/POOL") {
		t.Errorf("a key readable by its group: %v", err)
	}
}

// What only root can set up: owners and groups nobody trusts.
func TestFileOwners(t *testing.T) {
	testenv.RequireRoot(t, "it gives files and directories to another uid")
	base, trust := tree(t)
	keys := filepath.Join(base, "keys")
	chown := func(rel string, uid, gid int) {
		t.Helper()
		if err := os.Lchown(filepath.Join(base, rel), uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	// A key file of another user.
	chown("keys/POOL", stranger, -1)
	if _, err := File(keys+"/POOL", trust); err == nil || !strings.Contains(err.Error(), "owned by uid 54329") || !strings.Contains(err.Error(), "chown 0 "+keys+"/POOL") {
		t.Errorf("a key owned by a stranger: %v", err)
	}
	chown("keys/POOL", 0, -1)

	// A symlink owned by someone else in a trusted directory is followed:
	// only root could have put it there.
	chown("keys/ABS", stranger, stranger)
	if _, err := File(keys+"/ABS", trust); err != nil {
		t.Errorf("a stranger's symlink in a trusted directory: %v", err)
	}

	// A symlink directly in a sticky directory (a Kubernetes secret volume's
	// layout) is followed while a trusted user owns it; a stranger's is not.
	if got, err := File(keys+"/INSTICKY", trust); err != nil || got != base+"/store/AP" {
		t.Errorf("root's symlink in a sticky directory: %q, %v", got, err)
	}
	// The same symlink with a second link (fs.protected_hardlinks off lets
	// anyone make one) is not trusted: it may have been put there by anyone.
	if err := os.Link(filepath.Join(base, "sticky/LINK"), filepath.Join(base, "sticky/LINK2")); err != nil {
		t.Fatal(err)
	}
	if _, err := File(keys+"/INSTICKY", trust); err == nil || !strings.Contains(err.Error(), base+"/sticky/LINK is in the sticky directory") {
		t.Errorf("root's symlink with two links in a sticky directory: %v", err)
	}
	os.Remove(filepath.Join(base, "sticky/LINK2"))
	chown("sticky/LINK", stranger, stranger)
	if _, err := File(keys+"/INSTICKY", trust); err == nil || !strings.Contains(err.Error(), base+"/sticky/LINK is in the sticky directory") {
		t.Errorf("a stranger's symlink in a sticky directory: %v", err)
	}
	chown("sticky/LINK", 0, 0)

	// A directory on the way owned by someone else.
	chown("store", stranger, -1)
	if _, err := File(keys+"/ABS", trust); err == nil || !strings.Contains(err.Error(), base+"/store is owned by uid 54329") {
		t.Errorf("a stranger's directory on the way: %v", err)
	}
	chown("store", 0, -1)

	// A directory writable by its group: trusted only for a trusted group.
	chown("store", 0, stranger)
	os.Chmod(filepath.Join(base, "store"), 0o775)
	if _, err := File(keys+"/ABS", trust); err == nil || !strings.Contains(err.Error(), "writable by group 54329 (mode 0775)") {
		t.Errorf("a directory writable by a stranger's group: %v", err)
	}
	if _, err := File(keys+"/ABS", Trust{GIDs: []int{stranger}}); err != nil {
		t.Errorf("a directory writable by a trusted group: %v", err)
	}
}
