package main

// The end-to-end harness: the built tokend binary runs as an ordinary test
// user, with a real mount and a real socket; the tests act on it as that
// user (the CLI, condorsim), as another user, and as root.

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
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
	"github.com/tokend/tokend/mounttab"
	"github.com/tokend/tokend/token"
)

// env is one user's tokend setup: a work directory owned by the user with a
// pool key, a config, and (once started) an agent.
type env struct {
	t           *testing.T
	u           testenv.User
	bin, simBin string
	work        string
	keys        string
	dir, sock   string
	config      string
	agentEnv    []string          // more environment for the agent
	settings    map[string]string // the config, as dotted TOML keys to TOML values
	agent       *exec.Cmd
	// memlock: the agent runs under an RLIMIT_MEMLOCK of agentMemlock,
	// and must keep every secret locked within it.
	memlock bool
	done    chan error
	log     *syncbuf.Buffer
	secrets [][]byte // every token seen, to be searched for in logs
}

// newEnv prepares a setup for the test user. config overrides settings
// (dotted TOML keys to TOML values).
func newEnv(t *testing.T, config map[string]string) *env {
	t.Helper()
	return newEnvAs(t, testenv.Lookup(t, testenv.UserName), config)
}

// newEnvAs is newEnv for another user.
func newEnvAs(t *testing.T, u testenv.User, config map[string]string) *env {
	t.Helper()
	testenv.RequireFUSE(t)
	e := &env{t: t, u: u, bin: testenv.Build(t, "./cmd/tokend"), simBin: testenv.Build(t, "./internal/testenv/condorsim")}
	e.work = testenv.Dir(t, u)
	e.keys = filepath.Join(e.work, "keys")
	e.dir = filepath.Join(e.work, "tokens.d")
	e.sock = filepath.Join(e.work, "run", "agent.sock")
	e.mkdir(e.keys)
	e.writeKey("POOL")
	e.config = filepath.Join(e.work, "config.toml")
	settings := map[string]string{
		"dir":                 strconv.Quote(e.dir),
		"socket":              strconv.Quote(e.sock),
		"fetch.method":        `"local"`,
		"fetch.lifetime":      `"1h"`,
		"fetch.local.key_dir": strconv.Quote(e.keys),
		"fetch.local.issuer":  `"test.example"`,
		"validate.verifyd":    `""`,
		"validate.key_dir":    strconv.Quote(e.keys),
	}
	maps.Copy(settings, config)
	e.settings = settings
	e.writeConfig()
	t.Cleanup(e.cleanup)
	return e
}

// set changes settings of the config (dotted TOML keys to TOML values; ""
// removes a key) and writes it again. The agent reads it when it starts.
func (e *env) set(settings map[string]string) {
	e.t.Helper()
	for k, v := range settings {
		if v == "" {
			delete(e.settings, k)
		} else {
			e.settings[k] = v
		}
	}
	e.writeConfig()
}

func (e *env) writeConfig() {
	e.t.Helper()
	var cfg strings.Builder
	for _, k := range slices.Sorted(maps.Keys(e.settings)) {
		fmt.Fprintf(&cfg, "%s = %s\n", k, e.settings[k])
	}
	e.writeFile(e.config, cfg.String(), 0o600)
}

func (e *env) mkdir(p string) {
	e.t.Helper()
	if err := os.MkdirAll(p, 0o700); err != nil {
		e.t.Fatal(err)
	}
	os.Chown(p, e.u.UID, e.u.GID)
}

// writeFile writes a file owned by the user.
func (e *env) writeFile(p, data string, mode os.FileMode) {
	e.t.Helper()
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Chown(p, e.u.UID, e.u.GID); err != nil {
		e.t.Fatal(err)
	}
}

// writeKey writes a new random key file named name (replacing it by rename,
// as a site would roll out a new POOL).
func (e *env) writeKey(name string) { e.writeKeyIn(e.keys, name) }

// writeKeyIn writes a new random key file named name in dir, by rename.
func (e *env) writeKeyIn(dir, name string) {
	e.t.Helper()
	key := make([]byte, 64)
	rand.Read(key)
	tmp := filepath.Join(dir, "."+name+".new")
	e.writeFile(tmp, string(token.Scramble(key)), 0o600)
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		e.t.Fatal(err)
	}
}

// sign makes a token with the pool key, as the schedd would.
func (e *env) sign(sub string, life time.Duration, authz ...string) []byte {
	e.t.Helper()
	key, err := token.KeyDir{Dir: e.keys, WantUID: -1}.Key(token.PoolKeyName)
	if err != nil {
		e.t.Fatal(err)
	}
	defer key.Wipe()
	tok, err := token.Sign(token.Claims{Issuer: "test.example", Subject: sub, Lifetime: life, Authz: authz, IssuedAt: time.Now()}, token.PoolKeyName, key.Bytes())
	if err != nil {
		e.t.Fatal(err)
	}
	e.secrets = append(e.secrets, tok)
	return tok
}

// start runs the agent as the user and waits until it is mounted and
// answers with a valid session token.
func (e *env) start() {
	e.t.Helper()
	e.launch()
	e.waitReady()
}

// agentMemlock is the RLIMIT_MEMLOCK the agent runs under: EL 8 and 9 give
// user sessions 64 KiB. Everything the agent holds must fit, locked.
const agentMemlock = "65536"

// launch starts the agent as the user, under an RLIMIT_MEMLOCK of
// agentMemlock, without waiting for it.
func (e *env) launch() {
	e.t.Helper()
	e.log = &syncbuf.Buffer{}
	e.agent = testenv.Command(e.u, "prlimit", "--memlock="+agentMemlock+":"+agentMemlock, "--", e.bin, "agent", "--config", e.config)
	e.memlock = true
	e.agent.Env = append(e.agent.Env, e.agentEnv...)
	e.agent.Stdout, e.agent.Stderr = e.log, e.log
	if err := e.agent.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(e.agent, e.done)
}

func (e *env) waitReady() {
	e.t.Helper()
	testenv.Eventually(e.t, 20*time.Second, "the agent to mount and hold a session token", func() bool {
		select {
		case err := <-e.done:
			e.agent = nil
			e.t.Fatalf("the agent exited early (%v):\n%s", err, e.log)
		default:
		}
		st, err := e.status()
		return err == nil && st.Mounted && st.Session.State == api.SessionValid
	})
}

// status asks the agent as root would not be allowed to: run the CLI as the user.
func (e *env) status() (api.Status, error) {
	out, _, code := e.cli("status", "--json")
	if code != 0 {
		return api.Status{}, fmt.Errorf("status exit %d", code)
	}
	var st api.Status
	return st, json.Unmarshal([]byte(out), &st)
}

// cli runs tokend as the user against the agent's socket.
func (e *env) cli(args ...string) (stdout, stderr string, code int) {
	e.t.Helper()
	return e.runAs(e.u, "", e.bin, args...)
}

func (e *env) runAs(u testenv.User, stdin, bin string, args ...string) (string, string, int) {
	e.t.Helper()
	return e.runAsEnv(u, []string{"TOKEND_SOCKET=" + e.sock}, stdin, bin, args...)
}

// runAsEnv runs bin as u with env added to the test environment.
func (e *env) runAsEnv(u testenv.User, env []string, stdin, bin string, args ...string) (string, string, int) {
	e.t.Helper()
	cmd := testenv.Command(u, bin, args...)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// sim runs condorsim as u and decodes its JSON output into out.
func (e *env) sim(u testenv.User, out any, stdin string, args ...string) {
	e.t.Helper()
	stdout, stderr, code := e.runAs(u, stdin, e.simBin, args...)
	if code != 0 {
		e.t.Fatalf("condorsim %v as %s: exit %d: %s", args, u.Name, code, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		e.t.Fatalf("condorsim %v: %v: %s", args, err, stdout)
	}
}

type simFile struct {
	Path   string   `json:"path"`
	Tokens []string `json:"tokens"`
	Err    string   `json:"err"`
}

type simRead struct {
	Files []simFile `json:"files"`
	Pick  string    `json:"pick"`
}

// read runs the HTCondor read sequence as the user.
func (e *env) read() simRead {
	e.t.Helper()
	var r simRead
	e.sim(e.u, &r, "", "read", e.dir)
	for _, f := range r.Files {
		for _, t := range f.Tokens {
			e.secrets = append(e.secrets, []byte(t))
		}
	}
	return r
}

// write runs write_out_token as the user and returns the errno name ("" for success).
func (e *env) write(how, name string, tok []byte) string {
	e.t.Helper()
	var r struct{ Errno string }
	e.sim(e.u, &r, string(tok), how, e.dir, name)
	return r.Errno
}

func (e *env) tokens(all bool) []api.Token {
	e.t.Helper()
	args := []string{"list", "--json"}
	if all {
		args = append(args, "--all")
	}
	out, stderr, code := e.cli(args...)
	if code != 0 {
		e.t.Fatalf("tokend list: exit %d: %s", code, stderr)
	}
	var ts []api.Token
	if err := json.Unmarshal([]byte(out), &ts); err != nil {
		e.t.Fatal(err)
	}
	return ts
}

// waitLog waits until the agent's log holds every one of subs: the log
// reaches the test through a pipe, a moment after the agent wrote it.
func (e *env) waitLog(subs ...string) {
	e.t.Helper()
	testenv.Eventually(e.t, 5*time.Second, fmt.Sprintf("the agent's log to say %q", subs), func() bool {
		log := e.log.String()
		for _, s := range subs {
			if !strings.Contains(log, s) {
				return false
			}
		}
		return true
	})
}

// kill SIGKILLs the agent, leaving its mount behind.
func (e *env) kill() {
	e.t.Helper()
	syscall.Kill(e.agent.Process.Pid, syscall.SIGKILL)
	<-e.done
	e.agent = nil
}

// stop sends SIGTERM and waits for a clean exit.
func (e *env) stop() {
	e.t.Helper()
	if e.agent == nil {
		return
	}
	e.agent.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-e.done:
		if err != nil {
			e.t.Errorf("agent exit after SIGTERM: %v\n%s", err, e.log)
		}
	case <-time.After(15 * time.Second):
		e.t.Errorf("agent did not exit within 15 s of SIGTERM")
		e.agent.Process.Kill()
		<-e.done
	}
	e.agent = nil
}

// cleanup checks that the agent kept every secret in locked memory, stops
// it, checks its log holds no token, and makes sure nothing stays mounted.
func (e *env) cleanup() {
	e.lockedWithin()
	e.stop()
	if e.log != nil {
		for _, s := range e.secrets {
			sig := s[bytes.LastIndexByte(s, '.')+1:]
			if strings.Contains(e.log.String(), string(sig)) {
				e.t.Errorf("the agent's log holds a token")
			}
		}
	}
	if mounttab.Mounted(e.dir) {
		exec.Command("fusermount3", "-u", "-z", e.dir).Run()
		e.t.Errorf("the mount at %s was left behind", e.dir)
	}
	if _, err := mounttab.RecoverStale(e.dir); err != nil {
		e.t.Errorf("recovering a dead mount at cleanup: %v", err)
	}
}

// lockedWithin fails the test if the agent, run by launch under an
// RLIMIT_MEMLOCK of agentMemlock, had to keep a secret in unlocked memory.
func (e *env) lockedWithin() {
	e.t.Helper()
	if e.agent == nil || !e.memlock {
		return
	}
	select {
	case err := <-e.done:
		e.done <- err // for stop
		return
	default:
	}
	st, err := e.status()
	if err != nil {
		return
	}
	if strconv.FormatInt(st.MemoryLockLimit, 10) != agentMemlock {
		e.t.Errorf("the agent ran under an RLIMIT_MEMLOCK of %d bytes, want %s", st.MemoryLockLimit, agentMemlock)
	}
	if !st.MemoryLocked || strings.Contains(e.log.String(), "not locked") {
		e.t.Errorf("the agent could not keep every secret locked within an RLIMIT_MEMLOCK of %s bytes (%d bytes locked):\n%s",
			agentMemlock, st.MemoryLockedBytes, e.log)
	}
}
