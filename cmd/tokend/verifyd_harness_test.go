package main

// The verifyd side of the end-to-end harness: a real `tokend verifyd`
// process run as root over a root-owned password directory, and helpers
// that rotate its keys in every shape a site may use while an agent (the
// env of harness_test.go) follows it.

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/internal/testenv/verifydproc"
	"github.com/tokend/tokend/token"
)

// verifydProc is one `tokend verifyd` process run as root
// (verifydproc.Proc), failing the test where that fails.
type verifydProc struct {
	t    *testing.T
	d    *verifydproc.Proc
	keys string          // the password directory (SEC_PASSWORD_DIRECTORY)
	sock string          // its socket
	log  *syncbuf.Buffer // every run's output, appended
}

// newVerifyd prepares a verifyd (not started) with an empty password
// directory. Create it before the env that uses it: cleanups run in reverse,
// so the agent stops before verifyd does.
func newVerifyd(t *testing.T) *verifydProc {
	t.Helper()
	testenv.RequireRoot(t, "verifyd reads root-owned key files")
	root, err := os.MkdirTemp("", "tokend-verifyd-")
	if err != nil {
		t.Fatal(err)
	}
	d, err := verifydproc.New(testenv.Build(t, "./cmd/tokend"), root)
	if err != nil {
		t.Fatal(err)
	}
	v := &verifydProc{t: t, d: d, keys: d.Keys, sock: d.Sock, log: d.Log}
	t.Cleanup(func() {
		v.stop()
		if err := os.RemoveAll(root); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return v
}

// settings is the agent configuration that makes verifyd the only key check.
func (v *verifydProc) settings() map[string]string {
	return map[string]string{
		"validate.verifyd": strconv.Quote(v.sock),
		"validate.key_dir": `""`,
	}
}

// start runs verifyd and waits until it answers on its socket.
func (v *verifydProc) start() {
	v.t.Helper()
	if err := v.d.Start(10 * time.Second); err != nil {
		v.t.Fatal(err)
	}
}

// generation asks verifyd for its key generation, as root.
func (v *verifydProc) generation() (uint64, error) { return v.d.Generation() }

// kill SIGKILLs verifyd: no goodbye to the agents, a stale socket left.
func (v *verifydProc) kill() { v.d.Kill() }

// pid is the running verifyd's process id.
func (v *verifydProc) pid() int {
	v.t.Helper()
	pid, ok := v.d.Pid()
	if !ok {
		v.t.Fatal("verifyd is not running")
	}
	return pid
}

// stop sends SIGTERM and waits for a clean exit.
func (v *verifydProc) stop() {
	v.t.Helper()
	if err := v.d.Stop(10 * time.Second); err != nil {
		v.t.Errorf("verifyd exit after SIGTERM: %v\n%s", err, v.log)
	}
}

// newKeyFile returns the content of a new random key file (keys.NewFile).
func newKeyFile() []byte { return keys.NewFile() }

// writeRootKey writes a key file owned by root, mode 0600, in place (the
// file keeps its inode when it exists).
func writeRootKey(t *testing.T, path string, file []byte) {
	t.Helper()
	if err := keys.Write(path, file); err != nil {
		t.Fatal(err)
	}
}

// renameRootKey installs a key file by writing a temporary file beside it
// and renaming it over path, as a careful site rolls out a new key.
func renameRootKey(t *testing.T, path string, file []byte) {
	t.Helper()
	if err := keys.Install(path, file, -1, -1); err != nil {
		t.Fatal(err)
	}
}

// setUserKey gives the user's copy of a key new content (by rename, owned
// by the user): the embedded issuer, standing in for the schedd, signs the
// session token with it.
func (e *env) setUserKey(name string, file []byte) {
	e.t.Helper()
	if err := keys.Install(filepath.Join(e.keys, name), file, e.u.UID, e.u.GID); err != nil {
		e.t.Fatal(err)
	}
}

// userKey returns the user's copy of a key file.
func (e *env) userKey(name string) []byte {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.keys, name))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// signWith makes a token with key kid of the key directory dir, as the
// schedd would; the token is remembered as a secret the logs must not hold.
func (e *env) signWith(dir, kid, sub string) []byte {
	e.t.Helper()
	return e.signClaims(dir, kid, token.Claims{Issuer: "test.example", Subject: sub, Lifetime: time.Hour, IssuedAt: time.Now()})
}

// shown returns what the tools read from the mount, as the user: file name
// to its tokens.
//
// A file hidden between the tools' readdir and their open answers ENOENT,
// as a file removed at that moment would: the read is made again then.
func (e *env) shown() map[string][]string {
	e.t.Helper()
	for try := 0; ; try++ {
		out := map[string][]string{}
		raced := false
		for _, f := range e.read().Files {
			switch {
			case f.Err != "" && strings.Contains(f.Err, "no such file or directory") && try < 10:
				raced = true
			case f.Err != "":
				e.t.Fatalf("the tools could not read %s: %s", f.Path, f.Err)
			}
			out[filepath.Base(f.Path)] = f.Tokens
		}
		if !raced {
			return out
		}
	}
}

// showsToken reports whether the tools read tok from any file of the mount.
func (e *env) showsToken(tok []byte) bool {
	e.t.Helper()
	for _, toks := range e.shown() {
		if slices.Contains(toks, string(tok)) {
			return true
		}
	}
	return false
}

// sessionToken returns the session token the tools read (nil when there is
// none).
func (e *env) sessionToken() []byte {
	e.t.Helper()
	toks := e.shown()["tokend-session"]
	if len(toks) == 0 {
		return nil
	}
	return []byte(toks[0])
}

// hiddenReasons returns why each hidden token of a file is hidden, from
// `tokend list --all --json`, oldest first.
func (e *env) hiddenReasons(name string) []string {
	e.t.Helper()
	var out []string
	for _, tok := range e.tokens(true) {
		if tok.Name == name && tok.State == api.StateHidden {
			out = append(out, tok.Reason)
		}
	}
	return out
}

// mustStatus returns the agent's status or fails the test.
func (e *env) mustStatus() api.Status {
	e.t.Helper()
	st, err := e.status()
	if err != nil {
		e.t.Fatalf("tokend status: %v", err)
	}
	return st
}

// running fails the test if the agent has exited.
func (e *env) running() {
	e.t.Helper()
	if e.agent != nil && e.agent.Exited() {
		err := e.agent.Err()
		e.agent = nil
		e.t.Fatalf("the agent exited (%v):\n%s", err, e.log)
	}
}

// noSecretsIn fails the test if a log holds any token the test has seen.
func (e *env) noSecretsIn(what, log string) {
	e.t.Helper()
	for _, s := range e.secrets {
		sig := s[bytes.LastIndexByte(s, '.')+1:]
		if bytes.Contains([]byte(log), sig) {
			e.t.Errorf("the %s log holds a token", what)
			return
		}
	}
}

// statusJSON is the agent's status for failure messages.
func (e *env) statusJSON() string {
	st, err := e.status()
	if err != nil {
		return err.Error()
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	return string(b)
}
