package verifyd

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/token"
)

func TestListenCreatesSocket(t *testing.T) {
	old := syscall.Umask(0o077) // Listen must not depend on the umask
	defer syscall.Umask(old)
	sock := filepath.Join(sockDir(t), "run", "tokend", "verify.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket mode %v, want a socket with 0666", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(sock))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o755 {
		t.Fatalf("socket directory mode %v, want 0755", di.Mode().Perm())
	}
}

func TestListenStaleAndLive(t *testing.T) {
	sock := filepath.Join(sockDir(t), "verify.sock")
	// A stale socket: its listener is gone, the file stays.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("the stale socket file is missing: %v", err)
	}
	l, err := Listen(sock)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A live one is not clobbered.
	_, err = Listen(sock)
	if err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Fatalf("second Listen: %v; want an error saying the socket is in use", err)
	}
	if c, err := net.Dial("unix", sock); err != nil {
		t.Fatalf("the first listener lost its socket: %v", err)
	} else {
		c.Close()
	}
	// Not a socket: left alone.
	file := filepath.Join(sockDir(t), "file")
	if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Fatal("Listen changed a regular file")
	}
}

func TestRun(t *testing.T) {
	f := newRotation(t)
	dir := sockDir(t)
	sock := filepath.Join(dir, "verify.sock")
	cfg := filepath.Join(t.TempDir(), "verifyd.toml")
	// The file names another socket and directory; the flags win.
	conf := "socket = \"" + filepath.Join(dir, "other.sock") + "\"\npassword_dir = \"/nonexistent\"\nrate = 1000.0\nburst = 1000\nlog_level = \"debug\"\n"
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncbuf.Buffer
	code := make(chan int, 1)
	go func() {
		code <- Run(ctx, []string{"--config", cfg, "--socket", sock, "--password-dir", f.dir}, &stdout, &stderr)
	}()
	c := NewClient(sock)
	defer c.Close()
	testenv.Eventually(t, 10*time.Second, "Run to answer on its socket", func() bool {
		_, err := c.Generation(ctx)
		return err == nil
	})
	r, err := c.Verify(ctx, f.tOldPool)
	if err != nil || r.Reason != token.Valid || r.Generation != 1 {
		t.Fatalf("Verify through Run: %+v, %v", r, err)
	}
	cancel()
	select {
	case n := <-code:
		if n != 0 {
			t.Fatalf("Run exited %d:\n%s", n, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop with its context")
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Fatal("Run left its socket behind")
	}
	if !strings.Contains(stderr.String(), "level=DEBUG") {
		t.Fatalf("log_level from the file was not used:\n%s", stderr.String())
	}
}

func TestRunErrors(t *testing.T) {
	f := newRotation(t)
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		n := Run(context.Background(), args, &stdout, &stderr)
		return n, stdout.String(), stderr.String()
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("sockett = \"x\"\n"), 0o644)
	if n, _, e := run("--config", bad, "--password-dir", f.dir); n != 2 || !strings.Contains(e, "sockett") {
		t.Fatalf("unknown config key: exit %d, %s", n, e)
	}
	if n, _, e := run("--config", filepath.Join(t.TempDir(), "missing.toml")); n != 2 || !strings.Contains(e, "no such file") {
		t.Fatalf("missing config file: exit %d, %s", n, e)
	}
	if n, _, _ := run("--bogus"); n != 2 {
		t.Fatalf("bad flag: exit %d", n)
	}
	if n, _, _ := run("extra"); n != 2 {
		t.Fatalf("extra argument: exit %d", n)
	}
	if n, out, _ := run("--help"); n != 0 || !strings.Contains(out, "usage: tokend verifyd") {
		t.Fatalf("--help: exit %d, %q", n, out)
	}
	if n, _, e := run("--password-dir", filepath.Join(t.TempDir(), "none"), "--socket", filepath.Join(sockDir(t), "s")); n != 1 || !strings.Contains(e, "does not exist") {
		t.Fatalf("missing password dir: exit %d, %s", n, e)
	}
	if n, _, e := run("--password-dir", f.dir, "--log-level", "loud"); n != 2 || !strings.Contains(e, "log level") {
		t.Fatalf("bad log level: exit %d, %s", n, e)
	}
}
