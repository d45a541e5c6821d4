// Package simwire is the JSON the test tools print (condorsim, peek) and
// their callers read (the end-to-end tests), and the read sequence's
// outcome in that form, which the benchmark's worker uses too.
package simwire

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/condor"
)

// File is one file as the tools read it.
type File struct {
	Path   string   `json:"path"`
	Tokens []string `json:"tokens"`
	Err    string   `json:"err,omitempty"`
}

// Read is the outcome of the tools' read sequence on a directory
// (`condorsim read`): every file, and the token the tools would pick.
type Read struct {
	Files []File `json:"files"`
	Pick  string `json:"pick"`
}

// Write is the outcome of a token writer (`condorsim write` and `append`).
type Write struct {
	Errno string `json:"errno"` // "" for success
}

// Watch is the outcome of reading a directory again and again
// (`condorsim watch`).
type Watch struct {
	Reads    int      `json:"reads"`
	NoToken  int      `json:"no_token"` // reads where the tools would have had no token
	Failures []string `json:"failures"` // read_secure_file failures (short read, modified, ...)
	Distinct int      `json:"distinct"` // different tokens picked
	Seen     []string `json:"seen"`     // every different token read, in any file (at most condorsim's maxSeen)
}

// Access maps each operation `condorsim access` tries (and each way `peek`
// tries to read a process) to its errno name, "" when it worked.
type Access map[string]string

// ReadDir runs the tools' read sequence on dir as this process's user.
func ReadDir(dir string) (Read, error) {
	files, err := condor.Read(dir, os.Getuid())
	if err != nil {
		return Read{}, err
	}
	var r Read
	for _, f := range files {
		jf := File{Path: f.Path, Tokens: []string{}}
		for _, t := range f.Tokens {
			jf.Tokens = append(jf.Tokens, string(t))
		}
		if f.Err != nil {
			jf.Err = f.Err.Error()
		}
		r.Files = append(r.Files, jf)
	}
	if _, tok, ok := condor.Pick(files); ok {
		r.Pick = string(tok)
	}
	return r, nil
}

// Errno is "" for success, else the errno's name (EACCES, ...), or the
// error's text when it holds no errno.
func Errno(err error) string {
	if err == nil {
		return ""
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return err.Error()
}
