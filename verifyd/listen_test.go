package verifyd

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
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
