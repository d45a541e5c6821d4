// Package safepath decides whether a path may name a signing key, by
// HTCondor's safe-path rule (safe_is_path_trusted, in HTCondor's
// src/safefile): the path is walked from / one entry at a time, following
// symlinks as they come, and every entry must be one that only trusted
// users (root, the condor user) can change.
//
//   - A directory or file is trusted when its owner is trusted, it is not
//     writable by others, and it is not writable by its group unless that
//     group is trusted.
//   - A symlink is trusted whatever its owner and mode (a symlink cannot be
//     changed, only replaced, and replacing it takes a write to its
//     directory, which must be trusted); its target is walked in turn.
//   - A sticky directory (mode 1777, like /tmp) with a trusted owner is
//     trusted for the directories in it, and for the symlinks in it that a
//     trusted user owns: the sticky bit lets nobody else remove or rename
//     them (Kubernetes secret volumes are laid out so: a 1777 top directory
//     of root's symlinks into a root-owned subdirectory). Nothing else in
//     it is trusted: anyone can make a symlink or a hard link there. This
//     one case is where tokend trusts more than HTCondor, which refuses
//     every symlink in a sticky directory.
//   - The key file at the end must be a regular file with no group or
//     other permission bits.
//
// A path that passes always names the same file, and only trusted users can
// change it, so opening the resolved path afterwards is not a race.
package safepath

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Trust names the users and groups, besides root, that may own (and, for
// groups, write) what a key path crosses.
type Trust struct {
	UIDs []int
	GIDs []int
}

// Condor returns the trust verifyd gives a key path: root, the key owner
// it was configured with (when not -1), this process's user, and the
// condor account (its uid and primary group) when there is one.
func Condor(owner int) Trust {
	t := condorAccount()
	t.UIDs = append(slices.Clone(t.UIDs), os.Geteuid())
	if owner >= 0 {
		t.UIDs = append(t.UIDs, owner)
	}
	return t
}

var condorAccount = sync.OnceValue(func() Trust {
	var t Trust
	u, err := user.Lookup("condor")
	if err != nil {
		return t
	}
	if uid, err := strconv.Atoi(u.Uid); err == nil {
		t.UIDs = append(t.UIDs, uid)
	}
	if gid, err := strconv.Atoi(u.Gid); err == nil {
		t.GIDs = append(t.GIDs, gid)
	}
	return t
})

// maxLinks bounds the symlinks followed for one path, as the kernel does.
const maxLinks = 40

// level is how far an entry is trusted (HTCondor's SAFE_PATH_*).
type level int

const (
	untrusted level = iota
	sticky          // a sticky directory: its directories may be trusted, nothing else in it
	trusted
)

// File returns path with every symlink resolved when it names a key file
// by the rule above. Otherwise the error names the entry that fails the
// rule and why; when an entry does not exist, it wraps fs.ErrNotExist.
func File(path string, t Trust) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("key file %s: not an absolute path", path)
	}
	fail := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("key file %s is not safe to use: %s; a key file and every directory on the way to it (symlinks followed) must be owned by root or the condor user and writable by nobody else",
			path, fmt.Sprintf(format, args...))
	}
	root, err := os.Lstat("/")
	if err != nil {
		return "", err
	}
	lv, why := judge("/", root, trusted, t)
	if lv == untrusted {
		return fail("/ %s", why)
	}
	cur := "/"            // the directory reached, symlinks resolved
	levels := []level{lv} // the trust of cur and of each directory above it
	pending := components(path)
	links := 0
	for len(pending) > 0 {
		name := pending[0]
		pending = pending[1:]
		if name == ".." {
			if cur != "/" {
				cur = filepath.Dir(cur)
				levels = levels[:len(levels)-1]
			}
			continue
		}
		p := filepath.Join(cur, name)
		fi, err := os.Lstat(p)
		if err != nil {
			return "", fmt.Errorf("key file %s: %w", path, err)
		}
		last := len(pending) == 0 && fi.Mode()&os.ModeSymlink == 0
		lv, why := judge(p, fi, levels[len(levels)-1], t)
		if lv == untrusted && !(last && levels[len(levels)-1] != sticky) {
			return fail("%s %s", p, why)
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			if links++; links > maxLinks {
				return "", fmt.Errorf("key file %s: more than %d symlinks on the way (a loop?)", path, maxLinks)
			}
			target, err := os.Readlink(p)
			if err != nil {
				return "", fmt.Errorf("key file %s: %w", path, err)
			}
			if filepath.IsAbs(target) {
				cur, levels = "/", levels[:1]
			}
			pending = append(components(target), pending...)
		case len(pending) > 0:
			if !fi.IsDir() {
				return "", fmt.Errorf("key file %s: %s is not a directory", path, p)
			}
			cur, levels = p, append(levels, lv)
		default:
			return p, checkKey(p, fi, t)
		}
	}
	// The path ended in a directory (or /).
	return "", fmt.Errorf("key file %s is not a regular file", path)
}

// checkKey is the rule for the key file itself, which is stricter than
// judge's: a regular file, a trusted owner, no group or other bits.
func checkKey(p string, fi os.FileInfo, t Trust) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("key file %s is not a regular file", p)
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != 0 && !slices.Contains(t.UIDs, int(uid)) {
		return fmt.Errorf("key file %s is owned by uid %d, not by root or the condor user: chown 0 %s", p, uid, p)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("key file %s must not be readable by group or others (mode %04o): chmod 600 %s", p, perm, p)
	}
	return nil
}

// judge is HTCondor's is_mode_trusted and is_component_in_dir_trusted: the
// trust of the entry p, whose directory has trust parent, and why not when
// it is untrusted.
func judge(p string, fi os.FileInfo, parent level, t Trust) (level, string) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return untrusted, "cannot be examined"
	}
	mode := fi.Mode()
	ownerOK := st.Uid == 0 || slices.Contains(t.UIDs, int(st.Uid))
	if parent == sticky && !mode.IsDir() {
		// One link only: with fs.protected_hardlinks off, anyone could
		// hard-link root's symlink from elsewhere into the directory.
		if mode&os.ModeSymlink != 0 && ownerOK && st.Nlink == 1 {
			return trusted, ""
		}
		return untrusted, fmt.Sprintf("is in the sticky directory %s, where anyone can make a link, and is not a symlink of root's or the condor user's with a single link", filepath.Dir(p))
	}
	groupOK := st.Gid == 0 || slices.Contains(t.GIDs, int(st.Gid))
	groupWrite := st.Mode&0o020 != 0 && !groupOK
	otherWrite := st.Mode&0o002 != 0
	switch {
	case ownerOK && !groupWrite && !otherWrite:
		return trusted, ""
	case mode&os.ModeSymlink != 0:
		return trusted, ""
	case mode.IsDir() && mode&os.ModeSticky != 0 && ownerOK:
		return sticky, ""
	}
	var why []string
	if !ownerOK {
		why = append(why, fmt.Sprintf("is owned by uid %d", st.Uid))
	}
	if otherWrite {
		why = append(why, fmt.Sprintf("is writable by others (mode %04o)", st.Mode&0o7777))
	}
	if groupWrite {
		why = append(why, fmt.Sprintf("is writable by group %d (mode %04o)", st.Gid, st.Mode&0o7777))
	}
	if len(why) == 0 {
		return untrusted, "is not trusted"
	}
	return untrusted, strings.Join(why, " and ")
}

// components splits a path into its names, without empty ones and ".".
func components(p string) []string {
	var out []string
	for c := range strings.SplitSeq(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}
