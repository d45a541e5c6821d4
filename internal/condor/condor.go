// Package condor does what HTCondor's tools do with a token directory,
// system call for system call: findTokens and read_secure_file
// (condor_io/condor_auth_passwd.cpp, condor_utils/secure_file.cpp) to read,
// and write_out_token to write. Tests run it against the mount, `tokend
// doctor` uses it to show which token the tools would pick, and the benchmark
// times it.
package condor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// excluded is LOCAL_CONFIG_DIR_EXCLUDE_REGEXP's default: these names are
// never read as tokens.
var excluded = regexp.MustCompile(`^((\..*)|(.*\.pl)|(.*\.py)|(.*\.sh)|(.*~)|(#.*)|(.*\.rpmsave)|(.*\.rpmnew)|(.*\.dpkg-old)|(.*\.dpkg-dist)|(.*\.cfsaved))$`)

// File is what a tool read from one token file.
type File struct {
	Path   string
	Tokens [][]byte // every token line, in order
	Err    error    // why the file was rejected (owner, mode, short read, ...)
}

// Read lists dir and reads every candidate file as uid would, in the order a
// tool tries them. A file that fails read_secure_file's checks is returned
// with Err set, as the tool would log and skip it.
func Read(dir string, uid int) ([]File, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, name := range names {
		if excluded.MatchString(name) {
			continue
		}
		p := filepath.Join(dir, name)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue
		}
		// Symlinks to files count: stat follows them.
		if err := unix.Stat(p, &st); err != nil || st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue
		}
		paths = append(paths, p)
	}
	slices.Sort(paths)
	// <SUBSYS>_auto_generated_token goes first; tools are subsystem TOOL.
	if i := slices.IndexFunc(paths, func(p string) bool {
		return strings.EqualFold(filepath.Base(p), "TOOL_auto_generated_token")
	}); i > 0 {
		p := paths[i]
		paths = append([]string{p}, slices.Delete(paths, i, i+1)...)
	}
	files := make([]File, 0, len(paths))
	for _, p := range paths {
		content, err := ReadSecureFile(p, uid)
		f := File{Path: p, Err: err}
		if err == nil {
			f.Tokens = Lines(content)
		}
		files = append(files, f)
	}
	return files, nil
}

// ErrShortRead and ErrModified are read_secure_file's own failures.
var (
	ErrShortRead = errors.New("short read")
	ErrModified  = errors.New("file modified during reading")
)

// ReadSecureFile is read_secure_file: open, fstat, owner and mode checks, one
// fread of st_size bytes, fstat again, mtime check.
func ReadSecureFile(path string, uid int) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fstat %s: %w", path, err)
	}
	if int(st.Uid) != uid {
		return nil, fmt.Errorf("file must be owned by uid %d, was uid %d", uid, st.Uid)
	}
	if st.Mode&0o077 != 0 {
		return nil, fmt.Errorf("file must not be readable by others, had perms %o", st.Mode&0o777)
	}
	buf := make([]byte, st.Size)
	// fread: read until st_size bytes or end of file.
	n := 0
	for n < len(buf) {
		k, err := unix.Read(fd, buf[n:])
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if k == 0 {
			break
		}
		n += k
	}
	if n != len(buf) {
		return nil, fmt.Errorf("%s: %w: %d of %d bytes", path, ErrShortRead, n, len(buf))
	}
	var st2 unix.Stat_t
	if err := unix.Fstat(fd, &st2); err != nil {
		return nil, fmt.Errorf("fstat %s: %w", path, err)
	}
	// HTCondor compares st_mtime: whole seconds.
	if st2.Mtim.Sec != st.Mtim.Sec {
		return nil, fmt.Errorf("%s: %w", path, ErrModified)
	}
	return buf, nil
}

// Lines splits content as the tools do: on '\n', trimmed, stopping at the
// first NUL, skipping blank and '#' lines.
func Lines(content []byte) [][]byte {
	if i := bytes.IndexByte(content, 0); i >= 0 {
		content = content[:i]
	}
	var out [][]byte
	for line := range bytes.SplitSeq(content, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		out = append(out, line)
	}
	return out
}

// Pick returns the token a tool would present: the first token line of the
// first readable file. (Tools also skip tokens whose kid or issuer the server
// does not advertise; with no server that filter is empty.)
func Pick(files []File) (path string, tok []byte, ok bool) {
	for _, f := range files {
		if f.Err == nil && len(f.Tokens) > 0 {
			return f.Path, f.Tokens[0], true
		}
	}
	return "", nil, false
}

// Write is write_out_token (HTCondor 23.9 and later): open O_WRONLY; if that
// fails with ENOENT create with O_CREAT|O_EXCL 0600; otherwise refuse a
// symlink and truncate a non-empty file; write the token, then "\n".
func Write(path string, tok []byte) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		fd, err = unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("create %s: %w", path, err)
		}
	case err != nil:
		return fmt.Errorf("open %s: %w", path, err)
	default:
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			unix.Close(fd)
			return fmt.Errorf("lstat %s: %w", path, err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			unix.Close(fd)
			return fmt.Errorf("%s is a symlink", path)
		}
		if st.Size > 0 {
			if err := unix.Ftruncate(fd, 0); err != nil {
				unix.Close(fd)
				return fmt.Errorf("ftruncate %s: %w", path, err)
			}
		}
	}
	return writeClose(fd, path, tok)
}

// Append is the writer of HTCondor before 23.9: O_APPEND, created 0600.
func Append(path string, tok []byte) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_APPEND|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	return writeClose(fd, path, tok)
}

func writeClose(fd int, path string, tok []byte) error {
	for _, b := range [][]byte{tok, []byte("\n")} {
		if _, err := unix.Write(fd, b); err != nil {
			unix.Close(fd)
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}
