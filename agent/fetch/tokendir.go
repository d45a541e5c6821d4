package fetch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/tokend/tokend/secmem"
)

// TokenFile is one file of a fetch command's private token directory.
type TokenFile struct {
	Name    string
	Content *secmem.Buffer // wiped by the fetch once written
}

// tokenDirEnv is where HTCondor's tools look for tokens.
const tokenDirEnv = "_CONDOR_SEC_TOKEN_DIRECTORY"

// local reports whether the command talks to this host's schedd (no -pool,
// no -name), which knows the user by FS authentication and needs no token.
func (o *Options) local() bool { return o.Pool == "" && o.Name == "" }

// tokenDir makes the fetch command's own token directory, passed as
// _CONDOR_SEC_TOKEN_DIRECTORY, so that it never reads the mount, where a
// tool's first look after a key change waits for this very fetch: empty for
// a local schedd, else holding what o.Tokens returns (the pool's shown
// tokens, which may be what the remote schedd needs to know the user). It
// is made under $XDG_RUNTIME_DIR (memory, 0700); done zeroes and removes it.
func (o *Options) tokenDir() (dir string, done func(), err error) {
	var files []TokenFile
	if !o.local() && o.Tokens != nil {
		files = o.Tokens()
	}
	defer func() {
		for _, f := range files {
			f.Content.Wipe()
		}
	}()
	parent := o.TokenDir
	if parent == "" {
		parent = runtimeDir()
	}
	if parent == "" {
		if len(files) > 0 {
			return "", nil, errors.New("no $XDG_RUNTIME_DIR to hold the pool's tokens for the fetch command in memory: run the agent in a login session (systemd's user manager or the PAM hook set it)")
		}
		parent = os.TempDir() // it stays empty
	}
	dir, err = os.MkdirTemp(parent, "tokend-fetch-")
	if err != nil {
		return "", nil, fmt.Errorf("cannot make the fetch command's token directory: %w", err)
	}
	done = func() { wipeDir(dir) }
	for _, f := range files {
		if err := writeToken(dir, f); err != nil {
			done()
			return "", nil, err
		}
	}
	return dir, done, nil
}

// runUser holds the users' runtime directories (a variable for tests).
var runUser = "/run/user"

// runtimeDir is $XDG_RUNTIME_DIR, else /run/user/UID when it exists.
func runtimeDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return d
	}
	d := filepath.Join(runUser, strconv.Itoa(os.Getuid()))
	if st, err := os.Stat(d); err == nil && st.IsDir() {
		return d
	}
	return ""
}

func writeToken(dir string, f TokenFile) error {
	if f.Name == "" || f.Name == "." || f.Name == ".." || filepath.Base(f.Name) != f.Name {
		return fmt.Errorf("cannot give the fetch command a token file named %q", f.Name)
	}
	file, err := os.OpenFile(filepath.Join(dir, f.Name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("cannot give the fetch command its tokens: %w", err)
	}
	// Written from locked memory, with no copy on the heap.
	_, err = file.Write(f.Content.Bytes())
	if cerr := file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cannot give the fetch command its tokens: %w", err)
	}
	return nil
}

// wipeDir overwrites every regular file in dir with zeros (tmpfs frees its
// pages unzeroed), whoever wrote it, then removes dir.
func wipeDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		info, err := e.Info()
		if err != nil {
			continue
		}
		if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NOFOLLOW, 0); err == nil {
			f.Write(make([]byte, info.Size()))
			f.Close()
		}
	}
	os.RemoveAll(dir)
}

// prepare gives a fetch what both command fetchers need before the
// command starts: its command line, its deadline (Timeout) and its private
// token directory. end releases the last two. A failure is the fetch's
// *Error.
func (o *Options) prepare(ctx context.Context, req Request) (argv []string, tokenDir string, _ context.Context, end func(), err error) {
	if argv, err = o.argv(req); err != nil {
		return nil, "", nil, nil, o.fail(err)
	}
	tokenDir, done, err := o.tokenDir()
	if err != nil {
		return nil, "", nil, nil, o.fail(err)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, o.Timeout, errTimeout)
	return argv, tokenDir, ctx, func() { cancel(); done() }, nil
}
