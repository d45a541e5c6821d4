// Package demo is `tokend demo`: the whole story on one machine without an
// HTCondor pool. An embedded issuer (the agent's local fetcher) and a
// verifyd over a key directory of the demo's stand in for the pool;
// everything else is real: the verifyd and agent processes, the FUSE mount,
// the CLI, a key rotation, and a logout that leaves nothing behind.
package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/mounttab"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// Run plays the demo, narrating to out. exe is the tokend binary (the agent
// and the CLI commands run as real processes).
func Run(ctx context.Context, exe string, out io.Writer) error {
	d := &demo{exe: exe, out: out}
	defer d.cleanup()
	return d.run(ctx)
}

type demo struct {
	exe, work            string
	keys, dir, sock, vfy string
	national             string // the second pool's key directory
	out                  io.Writer
	agent                *exec.Cmd
	agentDone            chan error
	verifyd              *exec.Cmd
	verifydDone          chan error
	seen                 [][]byte // every token read through the mount, to search the disk for at the end
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *demo) step(n int, title string) { d.say("\n%d. %s", n, title) }

func (d *demo) run(ctx context.Context) error {
	var err error
	if d.work, err = os.MkdirTemp("", "tokend-demo-"); err != nil {
		return err
	}
	d.keys = filepath.Join(d.work, "passwords.d")
	d.national = filepath.Join(d.work, "national-keys")
	d.dir = filepath.Join(d.work, "tokens.d")
	d.sock = filepath.Join(d.work, "run", "agent.sock")
	d.vfy = filepath.Join(d.work, "verifyd", "verify.sock")
	d.say("tokend demo: HTCondor IDTOKENS kept in memory, shown as %s", d.dir)
	d.say("(an embedded issuer stands in for the pool; verifyd, the agent, the mount and the CLI are real)")

	d.step(1, "The pool's signing key, and a second pool's")
	if err := d.writePoolKey(); err != nil {
		return err
	}
	d.say("   %s/POOL: 64 random bytes, scrambled as HTCondor stores them, mode 0600", d.keys)
	if err := os.MkdirAll(d.national, 0o700); err != nil {
		return err
	}
	if err := writeKey(filepath.Join(d.national, "POOL")); err != nil {
		return err
	}
	d.say("   %s/POOL: the key of a national pool this user also flocks to (trust domain %s)", d.national, nationalTD)
	if err := d.startVerifyd(ctx); err != nil {
		return err
	}
	d.say("   verifyd watches it and answers agents on %s, for the trust domain %s", d.vfy, demoTD)

	d.step(2, "Login: the agent mounts the token directory and fetches a session token per pool, in parallel")
	start := time.Now()
	if err := d.startAgent(); err != nil {
		return err
	}
	if err := d.waitFor(10*time.Second, "the agent to mount and answer", func() bool {
		return mounttab.Mounted(d.dir) && d.sessionsShown()
	}); err != nil {
		return err
	}
	d.say("   agent pid %d: mounted and holding a fresh session token of each pool %s after start", d.agent.Process.Pid, since(start))
	d.cli("status")

	d.step(3, "What the HTCondor tools see")
	d.shell("ls", "-l", d.dir)
	if err := d.showPick(); err != nil {
		return err
	}

	d.step(4, "The user adds a token, as `condor_token_fetch -authz READ -token extra` writes it")
	extra, err := d.sign("READ")
	if err != nil {
		return err
	}
	d.seen = append(d.seen, extra)
	if err := condor.Write(filepath.Join(d.dir, "extra"), extra); err != nil {
		return fmt.Errorf("writing a token the way HTCondor does: %w", err)
	}
	d.say("   written with open(O_WRONLY) -> ENOENT -> open(O_CREAT|O_EXCL, 0600), write(token), write(\"\\n\"), close")
	d.shell("sh", "-c", "chmod 644 "+filepath.Join(d.dir, "extra")+" 2>&1 || true")
	d.say("   (chmod to anything but 0600 is refused: tokens stay private)")
	d.cli("list")

	d.step(5, "The pool's key is rotated: new bytes under the same name, as when the collector recreates POOL")
	national := d.fileRead(nationalSession)
	if national == nil {
		return fmt.Errorf("the tools read no %s before the rotation", nationalSession)
	}
	var stale [][]byte // this pool's tokens
	for _, t := range d.tokensRead() {
		if !bytes.Equal(t, national) {
			stale = append(stale, t)
		}
	}
	if err := d.rotate(); err != nil {
		return err
	}
	rotated := time.Now()
	if err := d.waitFor(5*time.Second, "the stale tokens to be hidden", func() bool {
		return !d.readable(stale)
	}); err != nil {
		return err
	}
	d.say("   stale tokens hidden %s after the key changed (the tools would otherwise fail with AUTHENTICATE:1004)", since(rotated))
	if err := d.waitFor(15*time.Second, "a fresh session token", func() bool {
		fresh := d.fileRead("tokend-session")
		return d.sessionShown() && fresh != nil && !d.readableIn(fresh, stale)
	}); err != nil {
		return err
	}
	d.say("   fresh session token %s after the key changed (verifyd gives a lone agent its refetch slot at once, and paces a host's agents at its refetch_rate; meanwhile a tool's first look waits for the fresh token, up to fetch.wait)", since(rotated))
	d.shell("ls", "-l", d.dir)
	d.cli("list", "--all")
	if err := d.showPick(); err != nil {
		return err
	}
	// Only the pool's own checks judge its tokens: the national pool's
	// token is another iss, judged by its own key, and stays.
	if after := d.fileRead(nationalSession); !bytes.Equal(after, national) {
		return fmt.Errorf("the national pool's token %s changed with this pool's rotation", nationalSession)
	}
	d.say("   %s, the national pool's token, is read byte for byte as before: another pool's rotation does not touch it", nationalSession)

	d.step(6, "Logout: every token is zeroed, the directory unmounted, the agent gone")
	stop := time.Now()
	d.cli("wipe", "--logout")
	select {
	case err := <-d.agentDone:
		if err != nil {
			return fmt.Errorf("the agent exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		return errors.New("the agent did not exit within 10 s of the logout")
	}
	d.agent = nil
	d.say("   agent exited cleanly %s after the logout", since(stop))
	return d.checkNothingLeft()
}

// The demo's pools: the one verifyd speaks for, and a second one.
const (
	demoTD          = "demo.tokend.example"
	nationalTD      = "national.example"
	nationalSession = "tokend-national"
)

func since(t time.Time) string { return time.Since(t).Round(time.Millisecond).String() }

// tokensRead returns every token the HTCondor read sequence sees now.
func (d *demo) tokensRead() [][]byte {
	files, _ := condor.Read(d.dir, os.Getuid())
	var toks [][]byte
	for _, f := range files {
		toks = append(toks, f.Tokens...)
	}
	d.seen = append(d.seen, toks...)
	return toks
}

// readableIn reports whether tok is one of toks.
func (d *demo) readableIn(tok []byte, toks [][]byte) bool {
	for _, t := range toks {
		if bytes.Equal(tok, t) {
			return true
		}
	}
	return false
}

// readable reports whether the tools would still see any of toks.
func (d *demo) readable(toks [][]byte) bool {
	for _, now := range d.tokensRead() {
		for _, t := range toks {
			if bytes.Equal(now, t) {
				return true
			}
		}
	}
	return false
}

func (d *demo) client() *api.Client { return api.NewClient(d.sock) }

func (d *demo) sessionShown() bool {
	st, err := d.client().Status(context.Background())
	return err == nil && st.Session.State == api.SessionValid
}

// sessionsShown reports whether every pool holds its session token.
func (d *demo) sessionsShown() bool {
	st, err := d.client().Status(context.Background())
	if err != nil || len(st.Pools) < 2 {
		return false
	}
	for _, p := range st.Pools {
		if p.Session.State != api.SessionValid {
			return false
		}
	}
	return true
}

// fileRead returns the token the tools read from the file name, nil when
// they read none.
func (d *demo) fileRead(name string) []byte {
	files, _ := condor.Read(d.dir, os.Getuid())
	for _, f := range files {
		if filepath.Base(f.Path) == name && len(f.Tokens) == 1 {
			d.seen = append(d.seen, f.Tokens[0])
			return f.Tokens[0]
		}
	}
	return nil
}

func (d *demo) waitFor(timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %v waiting for %s (agent log: %s)", timeout, what, filepath.Join(d.work, "agent.log"))
		}
		select {
		case err := <-d.agentDone:
			return fmt.Errorf("the agent exited (%v) while waiting for %s: see %s", err, what, filepath.Join(d.work, "agent.log"))
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func (d *demo) writePoolKey() error {
	if err := os.MkdirAll(d.keys, 0o700); err != nil {
		return err
	}
	return writeKey(filepath.Join(d.keys, "POOL"))
}

// writeKey writes a new random key, replacing any old one by rename (the
// way a site copies a new POOL everywhere).
func writeKey(path string) error {
	key := make([]byte, 64)
	rand.Read(key)
	tmp := path + ".new"
	if err := os.WriteFile(tmp, token.Scramble(key), 0o600); err != nil {
		return err
	}
	clear(key)
	return os.Rename(tmp, path)
}

func (d *demo) rotate() error { return writeKey(filepath.Join(d.keys, "POOL")) }

// startVerifyd runs `tokend verifyd` over the demo's key directory and
// waits until it answers.
func (d *demo) startVerifyd(ctx context.Context) error {
	cfg := filepath.Join(d.work, "verifyd.toml") // empty: /etc/tokend/verifyd.toml is not read
	if err := os.WriteFile(cfg, nil, 0o600); err != nil {
		return err
	}
	log := filepath.Join(d.work, "verifyd.log")
	var err error
	d.verifyd, d.verifydDone, err = d.spawn(log, "verifyd", "--config", cfg, "--socket", d.vfy, "--password-dir", d.keys, "--trust-domain", demoTD)
	if err != nil {
		return err
	}
	c := verifyapi.NewClient(d.vfy)
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Generation(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("verifyd does not answer on %s: %v (log: %s)", d.vfy, err, log)
		}
		select {
		case err := <-d.verifydDone:
			d.verifyd = nil
			return fmt.Errorf("verifyd exited (%v): see %s", err, log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (d *demo) startAgent() error {
	cfg := fmt.Sprintf(`dir = %q
socket = %q
legacy = "ignore"

[fetch]
method = "local"
lifetime = "1h"

[fetch.local]
key_dir = %q
issuer = %q

[validate]
verifyd = %q

# A second pool the user flocks to: its own trust domain, its own issuer,
# its own key check.
[pools.national]
trust_domain = %q

[pools.national.fetch.local]
key_dir = %q

[pools.national.validate]
key_dir = %q
`, d.dir, d.sock, d.keys, demoTD, d.vfy, nationalTD, d.national, d.national)
	cfgFile := filepath.Join(d.work, "config.toml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return err
	}
	var err error
	d.agent, d.agentDone, err = d.spawn(filepath.Join(d.work, "agent.log"), "agent", "--config", cfgFile)
	return err
}

// spawn starts `tokend args...`, shown as typed, with its output in the
// file log. done receives its exit.
func (d *demo) spawn(log string, args ...string) (cmd *exec.Cmd, done chan error, err error) {
	f, err := os.Create(log)
	if err != nil {
		return nil, nil, err
	}
	cmd = exec.Command(d.exe, args...)
	// As for the CLI (cli): a $TOKEND_SOCKET of the caller's would win
	// over the agent's config's socket.
	cmd.Env = append(os.Environ(), "TOKEND_SOCKET="+d.sock)
	cmd.Stdout, cmd.Stderr = f, f
	d.say("   $ tokend %s", strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, nil, err
	}
	done = make(chan error, 1)
	go func() {
		done <- cmd.Wait()
		f.Close()
	}()
	return cmd, done, nil
}

// cli runs a tokend client command and shows it as a user would type it.
func (d *demo) cli(args ...string) {
	d.say("   $ tokend %s", strings.Join(args, " "))
	cmd := exec.Command(d.exe, args...)
	cmd.Env = append(os.Environ(), "TOKEND_SOCKET="+d.sock)
	d.indent(cmd)
}

func (d *demo) shell(name string, args ...string) {
	shown := strings.Join(append([]string{name}, args...), " ")
	shown = strings.ReplaceAll(shown, d.work+"/", "")
	d.say("   $ %s", strings.TrimPrefix(shown, "sh -c "))
	d.indent(exec.Command(name, args...))
}

func (d *demo) indent(cmd *exec.Cmd) {
	out, err := cmd.CombinedOutput()
	if text := strings.TrimRight(string(out), "\n"); text != "" {
		for line := range strings.SplitSeq(text, "\n") {
			d.say("     %s", line)
		}
	}
	if err != nil {
		d.say("     (%v)", err)
	}
}

// showPick reads the directory exactly as the HTCondor tools do and says
// which token they would present (its claims only).
func (d *demo) showPick() error {
	files, err := condor.Read(d.dir, os.Getuid())
	if err != nil {
		return err
	}
	path, raw, ok := condor.Pick(files)
	if !ok {
		return errors.New("the HTCondor read sequence found no token")
	}
	d.seen = append(d.seen, raw)
	t, err := token.Parse(raw)
	if err != nil {
		return err
	}
	d.say("   HTCondor's read sequence (readdir, lstat, stat, owner and mode checks, one read of st_size, fstat twice)")
	d.say("   accepts %d file(s) and presents %s: sub=%s iss=%s kid=%s", len(files), filepath.Base(path), t.Sub, t.Iss, t.Kid)
	return nil
}

func (d *demo) sign(authz ...string) ([]byte, error) {
	key, err := token.KeyDir{Dir: d.keys, WantUID: os.Getuid()}.Key(token.PoolKeyName)
	if err != nil {
		return nil, err
	}
	defer key.Wipe()
	return token.Sign(token.Claims{Issuer: demoTD, Subject: "demo@" + demoTD, Authz: authz, Lifetime: time.Hour, IssuedAt: time.Now()}, token.PoolKeyName, key.Bytes())
}

// checkNothingLeft verifies the logout: no mount, no socket, and none of the
// tokens seen during the demo in any file of the workspace.
func (d *demo) checkNothingLeft() error {
	var problems []string
	if mounttab.Mounted(d.dir) {
		problems = append(problems, "the directory is still mounted")
	}
	if _, err := os.Stat(d.sock); err == nil {
		problems = append(problems, "the socket is still there")
	}
	found := 0
	filepath.WalkDir(d.work, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, t := range d.seen {
			if bytes.Contains(data, t) || bytes.Contains(data, t[strings.LastIndexByte(string(t), '.')+1:]) {
				found++
				problems = append(problems, "token bytes found in "+p)
			}
		}
		return nil
	})
	d.say("   mount gone: %v; socket gone: %v; files under %s holding any of the %d tokens seen (agent log included): %d",
		!mounttab.Mounted(d.dir), !exists(d.sock), d.work, len(d.seen), found)
	for _, t := range d.seen {
		clear(t)
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	d.say("\nDone: nothing of the session is left behind.")
	return nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// stop interrupts a process of spawn, if it runs, and waits for it.
func stop(cmd *exec.Cmd, done chan error) {
	if cmd == nil {
		return
	}
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
	}
}

func (d *demo) cleanup() {
	stop(d.agent, d.agentDone)
	stop(d.verifyd, d.verifydDone)
	if d.work != "" {
		if _, err := mounttab.RecoverStale(d.dir); err == nil {
			os.RemoveAll(d.work)
		}
	}
}
