package main

// The verifyd side of the end-to-end harness: a real `tokend verifyd`
// process run as root over a root-owned password directory, and helpers
// that rotate its keys in every shape a site may use while an agent (the
// env of harness_test.go) follows it.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// verifydProc is one `tokend verifyd` process run as root. Its password
// directory holds root-owned 0600 key files, as on an access point; its
// socket is in a directory every user can reach.
type verifydProc struct {
	t      *testing.T
	bin    string
	keys   string // the password directory (SEC_PASSWORD_DIRECTORY)
	sock   string
	config string // an empty config file, so /etc/tokend/verifyd.toml is not read
	// trustDomain, when set, is passed as --trust-domain; env is added to
	// verifyd's environment (_CONDOR_SEC_TOKEN_MAX_AGE=...).
	trustDomain string
	env         []string
	cmd         *exec.Cmd
	done        chan error
	log         *syncbuf.Buffer // every run's output, appended
	starts      int
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
	// Others may traverse it to reach the socket, not list it.
	if err := os.Chmod(root, 0o711); err != nil {
		t.Fatal(err)
	}
	v := &verifydProc{
		t:      t,
		bin:    testenv.Build(t, "./cmd/tokend"),
		keys:   filepath.Join(root, "passwords.d"),
		sock:   filepath.Join(root, "run", "verify.sock"),
		config: filepath.Join(root, "verifyd.toml"),
		log:    &syncbuf.Buffer{},
	}
	if err := os.Mkdir(v.keys, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.config, nil, 0o600); err != nil {
		t.Fatal(err)
	}
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
	if v.cmd != nil {
		v.t.Fatal("verifyd is already running")
	}
	v.starts++
	v.log.Write([]byte("--- verifyd start " + strconv.Itoa(v.starts) + " ---\n"))
	args := []string{"verifyd", "--config", v.config, "--socket", v.sock, "--password-dir", v.keys}
	if v.trustDomain != "" {
		args = append(args, "--trust-domain", v.trustDomain)
	}
	v.cmd = exec.Command(v.bin, args...)
	v.cmd.Env = append(os.Environ(), v.env...)
	v.cmd.Stdout, v.cmd.Stderr = v.log, v.log
	if err := v.cmd.Start(); err != nil {
		v.t.Fatal(err)
	}
	v.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(v.cmd, v.done)
	testenv.Eventually(v.t, 10*time.Second, "verifyd to answer on its socket", func() bool {
		select {
		case err := <-v.done:
			v.cmd = nil
			v.t.Fatalf("verifyd exited early (%v):\n%s", err, v.log)
		default:
		}
		_, err := v.generation()
		return err == nil
	})
}

// generation asks verifyd for its key generation, as root.
func (v *verifydProc) generation() (uint64, error) {
	c := verifyapi.NewClient(v.sock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return c.Generation(ctx)
}

// kill SIGKILLs verifyd: no goodbye to the agents, a stale socket left.
func (v *verifydProc) kill() {
	v.t.Helper()
	syscall.Kill(v.cmd.Process.Pid, syscall.SIGKILL)
	<-v.done
	v.cmd = nil
}

// stop sends SIGTERM and waits for a clean exit.
func (v *verifydProc) stop() {
	v.t.Helper()
	if v.cmd == nil {
		return
	}
	v.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-v.done:
		if err != nil {
			v.t.Errorf("verifyd exit after SIGTERM: %v\n%s", err, v.log)
		}
	case <-time.After(10 * time.Second):
		v.t.Errorf("verifyd did not exit within 10 s of SIGTERM")
		v.cmd.Process.Kill()
		<-v.done
	}
	v.cmd = nil
}

// newKeyFile returns the content of a new random key file, scrambled as
// condor_store_cred writes it.
func newKeyFile() []byte {
	key := make([]byte, 64)
	rand.Read(key)
	return token.Scramble(key)
}

// writeRootKey writes a key file owned by root, mode 0600, in place (the
// file keeps its inode when it exists).
func writeRootKey(t *testing.T, path string, file []byte) {
	t.Helper()
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
}

// renameRootKey installs a key file by writing a temporary file beside it
// and renaming it over path, as a careful site rolls out a new key.
func renameRootKey(t *testing.T, path string, file []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".new")
	writeRootKey(t, tmp, file)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// setUserKey gives the user's copy of a key new content (by rename, owned
// by the user): the embedded issuer, standing in for the schedd, signs the
// session token with it.
func (e *env) setUserKey(name string, file []byte) {
	e.t.Helper()
	tmp := filepath.Join(e.keys, "."+name+".new")
	e.writeFile(tmp, string(file), 0o600)
	if err := os.Rename(tmp, filepath.Join(e.keys, name)); err != nil {
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
	key, err := token.KeyDir{Dir: dir, WantUID: -1}.Key(kid)
	if err != nil {
		e.t.Fatal(err)
	}
	defer key.Wipe()
	tok, err := token.Sign(token.Claims{Issuer: "test.example", Subject: sub, Lifetime: time.Hour, IssuedAt: time.Now()}, kid, key.Bytes())
	if err != nil {
		e.t.Fatal(err)
	}
	e.secrets = append(e.secrets, tok)
	return tok
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
	select {
	case err := <-e.done:
		e.agent = nil
		e.t.Fatalf("the agent exited (%v):\n%s", err, e.log)
	default:
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
