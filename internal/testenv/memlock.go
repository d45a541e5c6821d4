package testenv

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// memlockChild marks the copy of a test binary that RunUnderMemlock starts.
const memlockChild = "TOKEND_MEMLOCK_CHILD"

// MemlockChild reports whether this process is the child of RunUnderMemlock:
// the test that called it does its real work and exits non-zero on failure.
func MemlockChild() bool { return os.Getenv(memlockChild) != "" }

// RunUnderMemlock runs test (a test function of this binary) again in a
// child under an RLIMIT_MEMLOCK of limit bytes, as the test user when run
// as root (root ignores the limit), and returns its output. It fails the
// test if the child fails.
func RunUnderMemlock(t *testing.T, test string, limit int) string {
	t.Helper()
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Fatal("prlimit is missing: apt-get install -y util-linux")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A copy the test user can run: the go tool's build directory is
	// private to root.
	dir, err := os.MkdirTemp("", "memlock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, filepath.Base(self))
	if err := copyExecutable(self, bin); err != nil {
		t.Fatal(err)
	}
	l := strconv.Itoa(limit)
	args := []string{"--memlock=" + l + ":" + l, "--", bin, "-test.run=^" + test + "$", "-test.v"}
	cmd := exec.Command("prlimit", args...)
	if os.Geteuid() == 0 {
		cmd = Command(Lookup(t, UserName), "prlimit", args...)
	}
	cmd.Env = append(cmd.Environ(), memlockChild+"=1", "GORACE=atexit_sleep_ms=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s under an RLIMIT_MEMLOCK of %d bytes: %v\n%s", test, limit, err, out)
	}
	return string(out)
}

func copyExecutable(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}
