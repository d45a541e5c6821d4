package verifyd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"

	"github.com/tokend/tokend/config"
)

// Listen returns the listener verifyd serves on. Under systemd socket
// activation it is the (first Unix stream) socket systemd passed, and socket
// is ignored. Otherwise it creates socket ("" means config.DefaultVerifyd): a
// missing parent directory is made with mode 0755, the socket gets mode
// 0666 (any local user may ask: answers hold no secrets, requests are rate
// limited per uid). An existing socket file is removed only when nothing
// answers on it (a stale one left by a crash); a live one is an error, and
// so is anything else at that path.
func Listen(socket string) (net.Listener, error) {
	passed, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("verifyd: socket activation: %w", err)
	}
	var l net.Listener
	for _, pl := range passed {
		switch {
		case pl == nil:
		case l == nil && pl.Addr().Network() == "unix":
			l = pl
		default:
			pl.Close()
		}
	}
	if l != nil {
		return l, nil
	}
	if len(passed) > 0 {
		return nil, fmt.Errorf("verifyd: systemd passed %d sockets but none is a Unix stream socket: check ListenStream= in tokend-verifyd.socket", len(passed))
	}

	if socket == "" {
		socket = config.DefaultVerifyd
	}
	dir := filepath.Dir(socket)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("verifyd: cannot create the socket directory: %w", err)
		}
		if err := os.Chmod(dir, 0o755); err != nil { // past the umask
			return nil, fmt.Errorf("verifyd: %w", err)
		}
	}
	if fi, err := os.Lstat(socket); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("verifyd: %s exists and is not a socket; refusing to remove it: move it away or choose another --socket", socket)
		}
		c, err := net.DialTimeout("unix", socket, 2*time.Second)
		switch {
		case err == nil:
			c.Close()
			return nil, fmt.Errorf("verifyd: another process is already listening on %s (is verifyd already running? systemctl status tokend-verifyd); not replacing it", socket)
		case errors.Is(err, syscall.ECONNREFUSED):
			// Stale: left by a process that is gone.
			if err := os.Remove(socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("verifyd: cannot remove the stale socket: %w", err)
			}
		default:
			return nil, fmt.Errorf("verifyd: cannot tell whether %s is in use: %w", socket, err)
		}
	}
	l, err = net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("verifyd: %w", err)
	}
	if err := os.Chmod(socket, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("verifyd: %w", err)
	}
	return l, nil
}
