// Package mounttab answers questions about the kernel's mount table for a
// token directory: is a tokend filesystem mounted there, what path the
// kernel knows it by, and how to detach one (a dead mount a killed agent
// left behind, or a live one at the end). It reads /proc/self/mountinfo and
// calls umount2 or fusermount3; it never serves a filesystem, so the
// session hook, doctor, demo and benchmark use it without linking FUSE.
package mounttab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Detach lazily unmounts dir: directly as root, else with fusermount3. A
// busy mount is detached at once and ends when its last user leaves.
func Detach(dir string) error {
	if os.Geteuid() == 0 {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("could not unmount %s: %w", dir, err)
		}
		return nil
	}
	out, err := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("could not unmount %s: fusermount3 -u -z: %s: %w", dir, strings.TrimSpace(string(out)), err)
	}
	return nil
}

// RecoverStale detaches a dead FUSE mount at dir: a killed agent leaves its
// mount behind, and every access then fails with ENOTCONN. It reports whether
// there was one. A live mount is left alone.
func RecoverStale(dir string) (bool, error) {
	_, err := os.Stat(dir)
	if !errors.Is(err, unix.ENOTCONN) {
		return false, nil
	}
	if err := Detach(dir); err != nil {
		return true, fmt.Errorf("%s holds a dead mount (transport endpoint is not connected): %w", dir, err)
	}
	return true, nil
}

// Mounted reports whether dir is a mount point of a tokend filesystem, live
// or dead.
func Mounted(dir string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	return mountedIn(string(data), Canonical(dir))
}

// mountedIn reports whether the mountinfo text lists a tokend filesystem
// mounted at dir (a canonical path).
func mountedIn(mountinfo, dir string) bool {
	for line := range strings.SplitSeq(mountinfo, "\n") {
		f := strings.Fields(line)
		// 4: mount point; then optional fields up to "-"; after it the
		// filesystem type and the source.
		if len(f) < 10 || unescape(f[4]) != dir {
			continue
		}
		for i, x := range f[6:] {
			if x == "-" && 6+i+2 < len(f) {
				return strings.HasPrefix(f[6+i+1], "fuse") && f[6+i+2] == "tokend"
			}
		}
	}
	return false
}

// Canonical is dir as the kernel names the mount point: cleaned, with its
// parents' symlinks resolved (a symlinked /home is common on clusters). The
// last element is not resolved: it may be the mount itself, which only its
// owner may look at, or a dead one.
func Canonical(dir string) string {
	dir = filepath.Clean(dir)
	if parent, err := filepath.EvalSymlinks(filepath.Dir(dir)); err == nil {
		return filepath.Join(parent, filepath.Base(dir))
	}
	return dir
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
