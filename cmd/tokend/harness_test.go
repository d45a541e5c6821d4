package main

// The end-to-end harness: the built tokend binary runs as an ordinary test
// user, with a real mount and a real socket; the tests act on it as that
// user (the CLI, condorsim), as another user, and as root.

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
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
	"github.com/tokend/tokend/internal/testenv/proc"
	"github.com/tokend/tokend/internal/testenv/simwire"
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
	agent       *proc.Proc        // nil when none runs
	// memlock: the agent runs under an RLIMIT_MEMLOCK of agentMemlock,
	// and must keep every secret locked within it.
	memlock bool
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
	if err := keys.Install(filepath.Join(dir, name), keys.NewFile(), e.u.UID, e.u.GID); err != nil {
		e.t.Fatal(err)
	}
}

// sign makes a token with the pool key, as the schedd would.
func (e *env) sign(sub string, life time.Duration, authz ...string) []byte {
	e.t.Helper()
	return e.signClaims(e.keys, token.PoolKeyName, token.Claims{Issuer: "test.example", Subject: sub, Lifetime: life, Authz: authz, IssuedAt: time.Now()})
}

// signClaims makes a token with key kid of the key directory dir; the token
// is remembered as a secret the logs must not hold.
func (e *env) signClaims(dir, kid string, c token.Claims) []byte {
	e.t.Helper()
	tok, err := keys.SignFrom(dir, kid, c)
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
	cmd := e.agentCmd("prlimit", "--memlock="+agentMemlock+":"+agentMemlock, "--")
	cmd.Env = append(cmd.Env, e.agentEnv...)
	e.launchCmd(cmd)
	e.memlock = true
}

func (e *env) waitReady() {
	e.t.Helper()
	testenv.Eventually(e.t, 20*time.Second, "the agent to mount and hold a session token", func() bool {
		if e.agent != nil && e.agent.Exited() {
			err := e.agent.Err()
			e.agent = nil
			e.t.Fatalf("the agent exited early (%v):\n%s", err, e.log)
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
	r, err := proc.Run(cmd, stdin)
	if err != nil {
		e.t.Fatal(err)
	}
	return r.Stdout, r.Stderr, r.Code
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

// read runs the HTCondor read sequence as the user.
func (e *env) read() simwire.Read {
	e.t.Helper()
	var r simwire.Read
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
	var r simwire.Write
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
	e.agent.Kill()
	e.agent = nil
}

// stop sends SIGTERM and waits for a clean exit.
func (e *env) stop() {
	e.t.Helper()
	if e.agent == nil {
		return
	}
	if err := e.agent.Stop(15 * time.Second); err != nil {
		e.t.Errorf("agent exit after SIGTERM: %v\n%s", err, e.log)
	}
	e.agent = nil
}

// cleanup checks that the agent kept every secret in locked memory, stops
// it, checks its log holds no token, and makes sure nothing stays mounted.
func (e *env) cleanup() {
	e.lockedWithin()
	e.stop()
	if e.log != nil {
		e.noSecretsIn("agent's", e.log.String())
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
	if e.agent.Exited() {
		return // stop reports how it exited
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
