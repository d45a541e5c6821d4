// Package verifydproc runs `tokend verifyd` as root for the end-to-end tests
// and the benchmark: over a password directory of its own (root-owned 0600
// key files, as on an access point), with its socket in a directory every
// user can reach, and an empty configuration file so that
// /etc/tokend/verifyd.toml is not read. It does not import testing.
package verifydproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv/poll"
	"github.com/tokend/tokend/internal/testenv/proc"
	"github.com/tokend/tokend/verifyapi"
)

// Proc is one verifyd, started and stopped as often as a caller likes.
type Proc struct {
	Bin    string          // the tokend binary
	Keys   string          // the password directory (SEC_PASSWORD_DIRECTORY)
	Sock   string          // its socket
	Config string          // its (empty) configuration file
	Log    *syncbuf.Buffer // every run's output, appended
	// TrustDomain, when set, is passed as --trust-domain; Env is added to
	// verifyd's environment (this process's).
	TrustDomain string
	Env         []string
	p           *proc.Proc // the running process; nil when stopped
	starts      int
}

// New prepares a verifyd of the tokend binary bin under the directory root
// (made if missing), with an empty password directory; it does not start
// it. Others may traverse root to reach the socket, not list it.
func New(bin, root string) (*Proc, error) {
	v := &Proc{
		Bin:    bin,
		Keys:   filepath.Join(root, "passwords.d"),
		Sock:   filepath.Join(root, "run", "verify.sock"),
		Config: filepath.Join(root, "verifyd.toml"),
		Log:    &syncbuf.Buffer{},
	}
	if err := os.MkdirAll(v.Keys, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(root, 0o711); err != nil {
		return nil, err
	}
	if err := os.WriteFile(v.Config, nil, 0o600); err != nil {
		return nil, err
	}
	return v, nil
}

// Start runs verifyd and waits at most timeout until it answers on its
// socket.
func (v *Proc) Start(timeout time.Duration) error {
	if v.p != nil {
		return errors.New("verifyd is already running")
	}
	v.starts++
	v.Log.Write([]byte("--- verifyd start " + strconv.Itoa(v.starts) + " ---\n"))
	args := []string{"verifyd", "--config", v.Config, "--socket", v.Sock, "--password-dir", v.Keys}
	if v.TrustDomain != "" {
		args = append(args, "--trust-domain", v.TrustDomain)
	}
	cmd := exec.Command(v.Bin, args...)
	cmd.Env = append(os.Environ(), v.Env...)
	p, err := proc.Start(cmd, v.Log)
	if err != nil {
		return err
	}
	v.p = p
	var genErr error
	poll.Until(timeout, func() bool {
		_, genErr = v.Generation()
		return genErr == nil || p.Exited()
	})
	if genErr == nil {
		return nil
	}
	if p.Exited() {
		v.p = nil
		return fmt.Errorf("verifyd exited early (%v):\n%s", p.Err(), v.Log)
	}
	return fmt.Errorf("verifyd does not answer on its socket within %v: %v\n%s", timeout, genErr, v.Log)
}

// Generation asks verifyd for its key generation.
func (v *Proc) Generation() (uint64, error) {
	c := verifyapi.NewClient(v.Sock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return c.Generation(ctx)
}

// Pid is the process id of the verifyd started last; ok is false when
// none was started or it was stopped.
func (v *Proc) Pid() (pid int, ok bool) {
	if v.p == nil {
		return 0, false
	}
	return v.p.Pid(), true
}

// Running reports whether verifyd was started and has not exited.
func (v *Proc) Running() bool { return v.p != nil && !v.p.Exited() }

// Kill SIGKILLs verifyd: no goodbye to the agents, a stale socket left.
func (v *Proc) Kill() {
	if v.p != nil {
		v.p.Kill()
		v.p = nil
	}
}

// Stop sends SIGTERM and waits at most timeout for verifyd to exit, then
// kills it (the error wraps proc.ErrKilled). It returns how verifyd
// exited; nil when it was not running.
func (v *Proc) Stop(timeout time.Duration) error {
	if v.p == nil {
		return nil
	}
	err := v.p.Stop(timeout)
	v.p = nil
	return err
}
