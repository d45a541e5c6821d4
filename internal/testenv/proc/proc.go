// Package proc runs the child processes of the end-to-end tests and of the
// benchmark: as a local user with a clean environment, with their output
// captured, their exit seen by any number of waiters, and stopped with
// SIGTERM, then SIGKILL after a bounded wait.
//
// It does not import testing: the benchmark (internal/bench) is an
// ordinary program. Functions return errors; the tests' helpers turn them
// into failures.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// User is a local account.
type User struct {
	Name     string
	UID, GID int
	Home     string
}

// LookupUser returns the local account name.
func LookupUser(name string) (User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return User{}, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return User{Name: u.Username, UID: uid, GID: gid, Home: u.HomeDir}, nil
}

// Command returns a command that runs as u (root: as this process) with a
// clean environment, in a process group of its own. Callers add to Env.
func Command(u User, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID), Groups: []uint32{uint32(u.GID)}},
		Setpgid:    true,
	}
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + u.Home,
		"USER=" + u.Name,
		"LOGNAME=" + u.Name,
		// Race-enabled binaries otherwise sleep a second at exit.
		"GORACE=atexit_sleep_ms=0",
	}
	if u.UID == 0 {
		cmd.SysProcAttr.Credential = nil
	}
	return cmd
}

// Proc is a started process. Its exit is watched from the start, so any
// number of callers may wait for it, and none has to.
type Proc struct {
	Cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	err  error         // Cmd.Wait's result, once done is closed
}

// Start starts cmd. When out is not nil, the process's stdout and stderr
// both go to it.
func Start(cmd *exec.Cmd, out io.Writer) (*Proc, error) {
	if out != nil {
		cmd.Stdout, cmd.Stderr = out, out
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err waits for the process to exit and returns how it did: nil for exit
// 0, else an *exec.ExitError (see ExitCode).
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Exited reports whether the process has exited, without waiting.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits at most timeout for the process to exit on its own and
// reports whether it did.
func (p *Proc) Wait(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// Kill sends SIGKILL and waits for the exit.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	<-p.done
}

// ErrKilled is in the error of a Stop that had to kill the process.
var ErrKilled = errors.New("killed")

// Stop sends SIGTERM and waits at most timeout for the exit; a process
// still running then is killed, and the error wraps ErrKilled. Otherwise
// it returns how the process exited (nil for exit 0).
func (p *Proc) Stop(timeout time.Duration) error {
	p.Cmd.Process.Signal(syscall.SIGTERM)
	if !p.Wait(timeout) {
		p.Kill()
		return fmt.Errorf("no exit within %v of SIGTERM: %w", timeout, ErrKilled)
	}
	return p.err
}

// ExitCode returns the exit code err stands for: 0 for nil, the code of an
// *exec.ExitError (-1 for a process ended by a signal). Any other error
// (the command could not run) is returned.
func ExitCode(err error) (int, error) {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		return ee.ExitCode(), nil
	default:
		return -1, err
	}
}

// Result is what a command printed and its exit code.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Run runs cmd to its end with stdin as its input. The error is for a
// command that could not run; a command that ran and failed has a Code.
func Run(cmd *exec.Cmd, stdin string) (Result, error) {
	var out, errb bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errb
	code, err := ExitCode(cmd.Run())
	return Result{Stdout: out.String(), Stderr: errb.String(), Code: code}, err
}
