// Package doctor checks what tokend needs on a machine and for a user, and
// says how to fix each problem: `tokend doctor`.
package doctor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/mounttab"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// Status of one check.
const (
	OK   = "ok"
	Warn = "warn" // works, but not as well as it could
	Fail = "fail" // tokens will not reach the tools
)

// Check is one finding.
type Check struct {
	Name   string `json:"check"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Options says what to check.
type Options struct {
	ConfigFile string // "" = the usual files
	Socket     string // "" = $TOKEND_SOCKET, else the config's socket (config.SocketOverride)
}

// Run runs every check, in the order a person would fix things.
func Run(ctx context.Context, o Options) []Check {
	var out []Check
	add := func(c Check) { out = append(out, c) }

	add(fusermount())
	add(devFuse())
	cfg, cfgCheck := loadConfig(o.ConfigFile)
	add(cfgCheck)
	if cfg.AllowRoot {
		add(userAllowOther())
	}
	dir, err := cfg.TokenDir()
	if err != nil {
		add(Check{"token directory", Fail, err.Error(), "set dir in the config"})
	}
	socket := config.SocketOverride(o.Socket)
	if socket == "" {
		socket = cfg.AgentSocket()
	}
	st, agentCheck := agentStatus(ctx, socket)
	add(agentCheck)
	if dir != "" {
		add(mount(dir, st))
		if st != nil && st.Mounted {
			add(openMode(st))
		}
		add(condorView(dir))
	}
	if c, ok := selinux(ctx, cfg); ok {
		add(c)
	}
	pools := cfg.PoolList()
	for _, c := range poolChecks(pools, st) {
		add(c)
	}
	add(fetchWait(pools))
	for _, pc := range pools {
		add(condorTools(pc))
	}
	add(condorDir(dir))
	for _, pc := range pools {
		if pc.Name == config.DefaultPool || pc.Validate.Verifyd != "" {
			add(verifydCheck(ctx, pc, poolStatus(st, pc.Name)))
		}
	}
	add(memlock(st))
	if os.Geteuid() == 0 {
		if c, ok := pamHook(PAMDir); ok {
			add(c)
		}
	}
	return out
}

// Failed reports whether any check failed.
func Failed(checks []Check) bool {
	for _, c := range checks {
		if c.Status == Fail {
			return true
		}
	}
	return false
}

func fusermount() Check {
	p, err := exec.LookPath("fusermount3")
	if err != nil {
		if os.Geteuid() == 0 {
			return Check{"fuse3", Warn, "fusermount3 is not installed; root mounts without it, users cannot", "apt-get install fuse3 (or dnf install fuse3)"}
		}
		return Check{"fuse3", Fail, "fusermount3 is not installed: ordinary users cannot mount the token directory", "ask an administrator to install fuse3 (apt-get install fuse3)"}
	}
	st, err := os.Stat(p)
	if err == nil && st.Mode()&os.ModeSetuid == 0 && os.Geteuid() != 0 {
		return Check{"fuse3", Fail, p + " is not setuid root", "chmod u+s " + p + " (the fuse3 package installs it so)"}
	}
	return Check{"fuse3", OK, p, ""}
}

func devFuse() Check {
	if err := unix.Access("/dev/fuse", unix.R_OK|unix.W_OK); err != nil {
		return Check{"/dev/fuse", Fail, fmt.Sprintf("/dev/fuse is not usable: %v", err), "modprobe fuse; chmod 666 /dev/fuse (the fuse3 package's udev rule does this)"}
	}
	return Check{"/dev/fuse", OK, "readable and writable", ""}
}

func userAllowOther() Check {
	f, err := os.Open("/etc/fuse.conf")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "user_allow_other" {
				return Check{"allow_root", OK, "user_allow_other is set in /etc/fuse.conf", ""}
			}
		}
	}
	return Check{"allow_root", Fail, "allow_root is configured but /etc/fuse.conf lacks user_allow_other: the mount will fail", "echo user_allow_other >> /etc/fuse.conf, or set allow_root = false"}
}

func loadConfig(file string) (config.Config, Check) {
	cfg, err := config.Load(file)
	if err != nil {
		return config.Default(), Check{"config", Fail, err.Error(), "fix the file named in the message (`tokend help` lists the keys)"}
	}
	return cfg, Check{"config", OK, "loaded", ""}
}

func agentStatus(ctx context.Context, socket string) (*api.Status, Check) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := api.NewClient(socket).Status(ctx)
	var noAgent *api.NoAgentError
	if errors.As(err, &noAgent) {
		return nil, Check{"agent", Fail, fmt.Sprintf("no agent answers on %s (%v)", socket, noAgent.Err), "start it: systemctl --user start tokend (or log in again where PAM starts it); its log: journalctl --user -u tokend"}
	}
	if err != nil {
		return nil, Check{"agent", Fail, err.Error(), "see the agent's log: journalctl --user -u tokend"}
	}
	// Each pool's session token has its own check (poolChecks).
	return &st, Check{"agent", OK, fmt.Sprintf("pid %d on %s (%s)", st.PID, socket, st.Version), ""}
}

func mount(dir string, st *api.Status) Check {
	if _, err := os.Stat(dir); errors.Is(err, unix.ENOTCONN) {
		return Check{"mount", Fail, dir + " holds a dead mount (an agent was killed)", "restart the agent (it recovers the mount), or fusermount3 -u -z " + dir}
	}
	if mounttab.Mounted(dir) {
		return Check{"mount", OK, dir + " is served by tokend", ""}
	}
	if st != nil && mounttab.Canonical(st.Dir) != mounttab.Canonical(dir) {
		return Check{"mount", Fail, fmt.Sprintf("the agent serves %s but the tools read %s", st.Dir, dir), "make dir in the config agree with SEC_TOKEN_DIRECTORY"}
	}
	c := Check{"mount", Fail, dir + " is not mounted: the tools read plain files on disk", "start the agent"}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		c.Detail += fmt.Sprintf(" (%d file(s) there)", len(entries))
	}
	return c
}

// condorView reads the directory as the tools do and names the token they
// would present.
func condorView(dir string) Check {
	files, err := condor.Read(dir, os.Getuid())
	if errors.Is(err, os.ErrNotExist) {
		return Check{"what the tools see", Warn, dir + " does not exist: the tools offer no IDTOKENS", "start the agent (it creates the directory)"}
	}
	if err != nil {
		return Check{"what the tools see", Fail, err.Error(), ""}
	}
	for _, f := range files {
		if f.Err != nil {
			return Check{"what the tools see", Fail, fmt.Sprintf("%s is refused: %v", f.Path, f.Err), "HTCondor skips this file; remove it or fix its owner and mode"}
		}
	}
	path, raw, ok := condor.Pick(files)
	if !ok {
		return Check{"what the tools see", Warn, "no token: IDTOKENS will not be offered", "tokend fetch"}
	}
	t, err := token.Parse(raw)
	if err != nil {
		return Check{"what the tools see", Fail, fmt.Sprintf("%s starts with a malformed token", filepath.Base(path)), "tokend rm " + filepath.Base(path)}
	}
	detail := fmt.Sprintf("%s (sub %s, iss %s, kid %s)", filepath.Base(path), t.Sub, t.Iss, t.Kid)
	if t.Exp != 0 && time.Now().Unix() >= t.Exp {
		return Check{"what the tools see", Fail, detail + " is expired", "tokend fetch"}
	}
	return Check{"what the tools see", OK, detail, ""}
}

// condorTools checks the program that fetches a pool's session token.
func condorTools(pc config.PoolConfig) Check {
	name := "HTCondor tools"
	if pc.Name != config.DefaultPool {
		name += ": " + pc.Name
	}
	var need string
	switch pc.Fetch.Method {
	case config.MethodLocal:
		return Check{name, OK, "not needed: fetch.method = local", ""}
	case config.MethodRequest:
		need = config.DefaultRequestCommand
	default:
		need = config.DefaultFetchCommand
	}
	if len(pc.Fetch.Command) > 0 {
		need = pc.Fetch.Command[0]
	}
	if _, err := exec.LookPath(need); err != nil {
		return Check{name, Fail, need + " is not on PATH: the session token cannot be fetched", "install HTCondor's tools, or set " + fetchKey(pc.Name, "command")}
	}
	return Check{name, OK, need + " found", ""}
}

func condorDir(dir string) Check {
	v := condor.PathSetting("SEC_TOKEN_DIRECTORY")
	if v == "" {
		return Check{"SEC_TOKEN_DIRECTORY", OK, "not set: the tools use <home>/.condor/tokens.d", ""}
	}
	if mounttab.Canonical(v) != mounttab.Canonical(dir) {
		return Check{"SEC_TOKEN_DIRECTORY", Fail, fmt.Sprintf("HTCondor reads %s, tokend serves %s", v, dir), "remove dir from the tokend config (it follows SEC_TOKEN_DIRECTORY) or make them agree"}
	}
	return Check{"SEC_TOKEN_DIRECTORY", OK, v, ""}
}

// verifydCheck asks a pool's verifyd whether it answers. ps is the
// agent's view of the pool, nil when no agent answers.
func verifydCheck(ctx context.Context, pc config.PoolConfig, ps *api.PoolStatus) Check {
	name := "verifyd"
	if pc.Name != config.DefaultPool {
		name += ": " + pc.Name
	}
	sock := pc.Validate.Verifyd
	if sock == "" {
		return Check{name, Warn, "not configured: key rotations are seen only through " + keyAlternative(pc.Validate), "set validate.verifyd and run tokend-verifyd.socket on this host"}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	gen, err := verifyapi.NewClient(sock).Generation(ctx)
	if err != nil {
		return Check{name, Warn, fmt.Sprintf("not answering on %s: rotations are seen only through %s", sock, keyAlternative(pc.Validate)), "systemctl enable --now tokend-verifyd.socket (as root)"}
	}
	detail := fmt.Sprintf("answers on %s (key generation %d)", sock, gen)
	if ps != nil && ps.TrustFrom == api.TrustFromVerifyd {
		detail += "; it speaks for trust domain " + ps.TrustDomain
	}
	return Check{name, OK, detail, ""}
}

func keyAlternative(v config.Validate) string {
	switch {
	case v.KeyDir != "":
		return "validate.key_dir"
	case len(v.Probe) > 0:
		return "the probe command"
	}
	return "expiry (nothing checks signatures)"
}

func memlock(st *api.Status) Check {
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim)
	if st != nil && !st.MemoryLocked {
		return Check{"memory locking", Warn, "the agent could not lock token memory: tokens may be swapped to disk", "raise RLIMIT_MEMLOCK (LimitMEMLOCK=8M in the unit, or limits.conf memlock)"}
	}
	detail := fmt.Sprintf("RLIMIT_MEMLOCK %d KiB", lim.Cur/1024)
	if st != nil && st.MemoryLockedBytes > 0 {
		detail += fmt.Sprintf("; the agent holds %d KiB", (st.MemoryLockedBytes+1023)/1024)
		if st.MemoryLockLimit > 0 {
			detail += fmt.Sprintf(" of its %d KiB", st.MemoryLockLimit/1024)
		}
	}
	return Check{"memory locking", OK, detail, ""}
}
