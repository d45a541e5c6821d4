package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokend/tokend/internal/testenv/poll"
	"github.com/tokend/tokend/internal/testenv/proc"
	"github.com/tokend/tokend/mounttab"
)

// sessions times `tokend session open` (the PAM hook, run as root as
// pam_exec runs it) to a token usable by the user, and the last `tokend
// session close` to the mount being gone. The agent it starts reads the
// user's own config (~/.config/tokend/config.toml) and uses the default
// token directory (~/.condor/tokens.d) and socket ($XDG_RUNTIME_DIR).
func (b *bench) sessions() error {
	const section = secSession
	users, err := b.users(1)
	if err != nil {
		return err
	}
	u := users[0]
	hs, err := b.homes("session", users)
	if err != nil {
		return err
	}
	h := hs[0]
	// The session's agent uses the defaults: the user's config file, token
	// directory and runtime directory.
	h.tokens = filepath.Join(u.Home, ".condor", "tokens.d")
	h.sock = ""
	runtime := filepath.Join("/run/user", strconv.Itoa(u.UID))
	undo, err := b.sessionFiles(h, runtime)
	b.atExit(func() { b.endSessionAgents(u); undo() }) // also when interrupted
	defer undo()
	if err != nil {
		return err
	}

	var opens, fetches, closes []time.Duration
	for i := range sessionRuns {
		open, fetch, closed, err := b.sessionRun(u, h.tokens, runtime)
		b.endSessionAgents(u)
		if errors.Is(err, errNoSession) && i == 0 {
			b.skip(section, "session open → usable token", err.Error())
			b.skip(section, "last session close → mount gone", err.Error())
			return nil
		}
		if err != nil {
			return err
		}
		b.logf("session %d: open → token %s (fetch %s), close → unmounted %s", i+1, dur(open), dur(fetch), dur(closed))
		opens, fetches, closes = append(opens, open), append(fetches, fetch), append(closes, closed)
	}
	open, fetch, closed := medianDur(opens), medianDur(fetches), medianDur(closes)
	r := row{section: section, figure: "session open → usable token", value: dur(open),
		goal: "< 20 ms + fetch", verdict: verdict(float64(open-fetch), float64(20*time.Millisecond))}
	if b.startUsable > 0 {
		r.baseline, r.ratio = dur(b.startUsable)+" agent start → token", ratio(float64(open)/float64(b.startUsable))
	}
	b.add(r)
	r = row{section: section, figure: "last session close → mount gone", value: dur(closed),
		goal: "< 100 ms", verdict: verdict(float64(closed), float64(100*time.Millisecond))}
	if b.stopTime > 0 {
		r.baseline, r.ratio = dur(b.stopTime)+" SIGTERM → exited", ratio(float64(closed)/float64(b.stopTime))
	}
	b.add(r)
	b.note("sessions: medians of %d runs of `tokend session open` then `close` run as root as pam_exec runs them; "+
		"the fetch (the embedded issuer plus a verifyd check) took %s by the agent's log, subtracted for the goal", sessionRuns, dur(fetch))
	return nil
}

// sessionRuns is how many sessions are opened and closed.
const sessionRuns = 5

// errNoSession means `tokend session` is not usable.
var errNoSession = errors.New("tokend session not available")

// sessionRun opens a session for u and times it until the user's read
// sequence finds a token in dir, then closes it and times it until dir is
// no longer mounted. fetch is the fetch's own time, from the agent's log.
func (b *bench) sessionRun(u proc.User, dir, runtime string) (open, fetch, closed time.Duration, err error) {
	w, err := b.startWatch(u, dir, "appear", 20*time.Second)
	if err != nil {
		return 0, 0, 0, err
	}
	t0 := monotonic()
	if out, err := b.sessionHook(u, runtime, "open"); err != nil {
		w.kill()
		return 0, 0, 0, fmt.Errorf("%w (%s)", errNoSession, firstLine(out))
	}
	seen, err := w.wait()
	if err != nil {
		return 0, 0, 0, err
	}
	open = seen - t0
	if log, err := os.ReadFile(filepath.Join(runtime, "tokend", "agent.log")); err == nil {
		fetch = logDuration(string(log), "token fetched", "took")
	}

	t1 := monotonic()
	if out, err := b.sessionHook(u, runtime, "close"); err != nil {
		return 0, 0, 0, fmt.Errorf("tokend session close: %v: %s", err, out)
	}
	for deadline := time.Now().Add(10 * time.Second); mounttab.Mounted(dir); time.Sleep(200 * time.Microsecond) {
		if time.Now().After(deadline) {
			return 0, 0, 0, fmt.Errorf("the mount at %s is still there 10 s after the last session closed", dir)
		}
	}
	return open, fetch, monotonic() - t1, nil
}

// logDuration returns the duration attribute key of the first log line
// with message msg (0 when there is none).
func logDuration(log, msg, key string) time.Duration {
	for line := range strings.SplitSeq(log, "\n") {
		if !strings.Contains(line, "msg="+strconv.Quote(msg)) {
			continue
		}
		for f := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				d, _ := time.ParseDuration(v)
				return d
			}
		}
	}
	return 0
}

// sessionFiles writes the user's config file and makes the runtime and
// token directories, and returns what undoes it.
func (b *bench) sessionFiles(h *home, runtime string) (func(), error) {
	var undo []func()
	undoAll := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	if _, err := os.Stat(runtime); os.IsNotExist(err) {
		made := runtime
		if _, err := os.Stat(filepath.Dir(runtime)); os.IsNotExist(err) {
			made = filepath.Dir(runtime) // /run/user itself (no logind here)
		}
		if err := os.MkdirAll(runtime, 0o700); err != nil {
			return undoAll, err
		}
		os.Chmod(filepath.Dir(runtime), 0o755)
		undo = append(undo, func() { os.RemoveAll(made) })
		if err := os.Chown(runtime, h.u.UID, h.u.GID); err != nil {
			return undoAll, err
		}
	}
	cfgDir := filepath.Join(h.u.Home, ".config", "tokend")
	for _, d := range []string{filepath.Join(h.u.Home, ".config"), cfgDir, filepath.Join(h.u.Home, ".condor"), h.tokens} {
		if err := os.Mkdir(d, 0o700); err != nil && !os.IsExist(err) {
			return undoAll, err
		}
		if err := os.Chown(d, h.u.UID, h.u.GID); err != nil {
			return undoAll, err
		}
	}
	undo = append(undo, func() {
		os.RemoveAll(cfgDir)
		// Only what is empty (and unmounted) goes.
		for _, d := range []string{h.tokens, filepath.Dir(h.tokens), filepath.Dir(cfgDir)} {
			os.Remove(d)
		}
	})
	h.config = filepath.Join(cfgDir, "config.toml")
	return undoAll, h.writeConfig(b.verifyd.Sock, map[string]string{"dir": `""`, "socket": `""`})
}

// sessionHook runs `tokend session ACTION` as root, as pam_exec would for
// the user: through tokend-pam, the launcher beside tokend (make build
// makes both).
func (b *bench) sessionHook(u proc.User, runtime, action string) (string, error) {
	cmd := exec.Command(filepath.Join(filepath.Dir(b.tokend), "tokend-pam"), action)
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"PAM_TYPE=" + action + "_session",
		"PAM_USER=" + u.Name,
		"PAM_SERVICE=tokend-bench",
		"XDG_RUNTIME_DIR=" + runtime,
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// endSessionAgents stops agents that `tokend session open` started for u
// (processes of u running the tokend binary), and detaches their mount.
func (b *bench) endSessionAgents(u proc.User) {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		exe, err := os.Readlink(filepath.Join(p, "exe"))
		if err != nil || exe != b.tokend {
			continue
		}
		// An agent is not dumpable, so /proc/PID belongs to root: read
		// the real uid from its status.
		status, err := os.ReadFile(filepath.Join(p, "status"))
		if err != nil || !bytes.Contains(status, []byte(fmt.Sprintf("\nUid:\t%d\t", u.UID))) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(p))
		syscall.Kill(pid, syscall.SIGTERM)
		poll.Until(10*time.Second, func() bool { return syscall.Kill(pid, 0) != nil })
		syscall.Kill(pid, syscall.SIGKILL)
	}
	mounttab.Detach(filepath.Join(u.Home, ".condor", "tokens.d"))
}
