// Command condorsim does to a token directory what the HTCondor tools do,
// as whichever user runs it, and prints the outcome as JSON. Tests run it as
// the test users (the mount admits only its owner, so the checks must run in
// another process).
//
//	condorsim read DIR             the tools' read sequence
//	condorsim write DIR NAME       write_out_token (23.9+), token on stdin
//	condorsim append DIR NAME      the pre-23.9 O_APPEND writer, token on stdin
//	condorsim access DIR NAME      try every operation, print each errno
//	condorsim watch DIR SECONDS    read again and again; count reads that found no token
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/internal/testenv/simwire"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: condorsim read|write|append|access DIR [NAME]")
		os.Exit(2)
	}
	dir := os.Args[2]
	var out any
	var err error
	switch os.Args[1] {
	case "read":
		out, err = simwire.ReadDir(dir)
	case "write", "append":
		tok, _ := io.ReadAll(os.Stdin)
		path := filepath.Join(dir, os.Args[3])
		if os.Args[1] == "write" {
			err = condor.Write(path, bytes.TrimSpace(tok))
		} else {
			err = condor.Append(path, bytes.TrimSpace(tok))
		}
		out = simwire.Write{Errno: simwire.Errno(err)}
		err = nil
	case "access":
		out = access(dir, os.Args[3])
	case "watch":
		out, err = watch(dir, os.Args[3])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

// maxSeen bounds simwire.Watch.Seen.
const maxSeen = 1000

func watch(dir, seconds string) (simwire.Watch, error) {
	d, err := time.ParseDuration(seconds + "s")
	if err != nil {
		return simwire.Watch{}, err
	}
	w := simwire.Watch{Failures: []string{}, Seen: []string{}}
	seen := map[string]bool{}
	read := map[string]bool{}
	for end := time.Now().Add(d); time.Now().Before(end); {
		files, err := condor.Read(dir, os.Getuid())
		if err != nil {
			return w, err
		}
		w.Reads++
		for _, f := range files {
			if f.Err != nil && len(w.Failures) < 20 {
				w.Failures = append(w.Failures, f.Err.Error())
			}
			for _, t := range f.Tokens {
				if !read[string(t)] && len(w.Seen) < maxSeen {
					read[string(t)] = true
					w.Seen = append(w.Seen, string(t))
				}
			}
		}
		_, tok, ok := condor.Pick(files)
		if !ok {
			w.NoToken++
			continue
		}
		seen[string(tok)] = true
	}
	w.Distinct = len(seen)
	return w, nil
}

// access tries every kind of operation on dir and dir/name.
func access(dir, name string) simwire.Access {
	p := filepath.Join(dir, name)
	res := simwire.Access{}
	try := func(op string, f func() error) { res[op] = simwire.Errno(f()) }
	try("readdir", func() error { _, err := os.ReadDir(dir); return err })
	try("stat-dir", func() error { _, err := os.Stat(dir); return err })
	try("stat", func() error { _, err := os.Stat(p); return err })
	try("lstat", func() error { _, err := os.Lstat(p); return err })
	try("open-read", func() error {
		f, err := os.Open(p)
		if err == nil {
			_, err = f.Read(make([]byte, 1))
			f.Close()
		}
		return err
	})
	try("open-write", func() error {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err == nil {
			f.Close()
		}
		return err
	})
	try("create", func() error {
		f, err := os.OpenFile(filepath.Join(dir, "intruder"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			f.Close()
		}
		return err
	})
	try("chmod", func() error { return os.Chmod(p, 0o644) })
	try("rename", func() error { return os.Rename(p, p+".moved") })
	try("unlink", func() error { return os.Remove(p) })
	try("access", func() error { return unix.Access(p, unix.R_OK) })
	try("statfs", func() error { var s unix.Statfs_t; return unix.Statfs(dir, &s) })
	// Everything else a process can ask of a file or the directory.
	try("truncate", func() error { return os.Truncate(p, 0) })
	try("utimes", func() error { return os.Chtimes(p, time.Now(), time.Now()) })
	try("chown", func() error { return os.Chown(p, os.Getuid(), os.Getgid()) })
	try("mkdir", func() error { return os.Mkdir(filepath.Join(dir, "intruder-dir"), 0o700) })
	try("rmdir", func() error { return unix.Rmdir(p) })
	try("symlink", func() error { return os.Symlink(name, filepath.Join(dir, "intruder-link")) })
	try("link", func() error { return os.Link(p, filepath.Join(dir, "intruder-link")) })
	try("mknod", func() error { return unix.Mknod(filepath.Join(dir, "intruder-fifo"), unix.S_IFIFO|0o600, 0) })
	try("readlink", func() error { _, err := os.Readlink(p); return err })
	try("getxattr", func() error { _, err := unix.Getxattr(p, "user.x", make([]byte, 64)); return err })
	try("setxattr", func() error { return unix.Setxattr(p, "user.x", []byte("1"), 0) })
	try("listxattr", func() error { _, err := unix.Listxattr(p, make([]byte, 256)); return err })
	try("getxattr-dir", func() error { _, err := unix.Getxattr(dir, "user.x", make([]byte, 64)); return err })
	return res
}
