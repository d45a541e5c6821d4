package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrWiping refuses a session open while the agent wipes after the last
// logout; the client waits for this agent to end and starts a fresh one.
// The control API answers it with api.CodeBusy.
var ErrWiping = errors.New("the agent is wiping after the last logout; try again in a moment")

// sessionCounter counts login sessions opened through PAM (`tokend session
// open|close`). Each session is tied to a process of the session (the PAM
// caller, watched through a pidfd); a session whose process is gone counts
// as closed, so a lost close (a killed sshd) cannot keep tokens alive. When
// the count falls to zero the agent ends, after the configured grace.
// Agents started by systemd never see an open and are stopped by systemd
// instead.
type sessionCounter struct {
	ended func() // the last session closed
	grace time.Duration
	kick  chan struct{} // capacity 1: a session was opened

	mu       sync.Mutex // guards the fields below
	open     map[int]*procSession
	seen     bool        // at least one session was opened
	timer    *time.Timer // pending end after the grace
	wiping   bool
	lastGone int // pid of the last session dropped because its process exited
}

type procSession struct {
	pidfd int // watches the process
	count int // sessions on that process
}

func newSessionCounter(ended func()) *sessionCounter {
	return &sessionCounter{ended: ended, open: make(map[int]*procSession), kick: make(chan struct{}, 1)}
}

// Open counts a session tied to pid and returns the sessions now open.
func (c *sessionCounter) Open(pid int) (int, error) {
	if pid <= 0 {
		return 0, errors.New("session open needs the pid of a process of the session")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.wiping {
		return 0, ErrWiping
	}
	s := c.open[pid]
	if s == nil {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return 0, fmt.Errorf("cannot watch process %d of the session: %w", pid, err)
		}
		if exited(fd) {
			unix.Close(fd)
			return 0, fmt.Errorf("process %d of the session has already exited", pid)
		}
		s = &procSession{pidfd: fd}
		c.open[pid] = s
	}
	if c.timer != nil {
		c.timer.Stop() // a login during the grace keeps the tokens
		c.timer = nil
	}
	s.count++
	c.seen = true
	poke(c.kick)
	return c.countLocked(), nil
}

// Close uncounts one session of pid. A pid that opened no session (or whose
// sessions were already dropped) changes nothing: guessing which session
// to drop could end another login's tokens. It reports the sessions left and
// whether the agent is ending.
func (c *sessionCounter) Close(pid int) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.open[pid]; s != nil {
		c.lastGone = 0
		s.count--
		if s.count == 0 {
			c.dropLocked(pid)
		}
	}
	return c.countLocked(), c.maybeEndLocked()
}

func (c *sessionCounter) dropLocked(pid int) {
	unix.Close(c.open[pid].pidfd)
	delete(c.open, pid)
}

func (c *sessionCounter) countLocked() int {
	n := 0
	for _, s := range c.open {
		n += s.count
	}
	return n
}

// maybeEndLocked ends the agent (after the grace) once no session is left.
func (c *sessionCounter) maybeEndLocked() bool {
	if !c.seen || len(c.open) > 0 || c.wiping {
		return c.wiping
	}
	if c.grace <= 0 {
		c.wiping = true
		go c.ended()
		return true
	}
	if c.timer == nil {
		var t *time.Timer
		t = time.AfterFunc(c.grace, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if len(c.open) == 0 && c.timer == t {
				c.wiping = true
				go c.ended()
			}
		})
		c.timer = t
	}
	return false
}

// Count returns the open sessions.
func (c *sessionCounter) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.countLocked()
}

// watch drops sessions whose process has exited, checking once a second
// while there are sessions (an idle agent without sessions never wakes).
func (c *sessionCounter) watch(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		tick := t.C
		if c.Count() == 0 {
			tick = nil
		}
		select {
		case <-ctx.Done():
			c.mu.Lock()
			for pid := range c.open {
				c.dropLocked(pid)
			}
			c.mu.Unlock()
			return
		case <-c.kick:
			continue
		case <-tick:
		}
		c.mu.Lock()
		for pid, s := range c.open {
			if exited(s.pidfd) {
				c.dropLocked(pid)
				c.lastGone = pid
			}
		}
		c.maybeEndLocked()
		c.mu.Unlock()
	}
}

// exited reports whether the process behind a pidfd has exited: the pidfd
// is readable from then on, also while the process is an unreaped zombie
// (which a signal-0 probe would take for alive).
func exited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// endSessions is called when the last session ended.
func (a *Agent) endSessions() {
	a.sessions.mu.Lock()
	gone := a.sessions.lastGone
	a.sessions.mu.Unlock()
	if gone != 0 && a.sessions.Count() == 0 {
		a.log.Info("the last login session ended", "why", "its process exited without a close", "pid", gone)
	} else {
		a.log.Info("the last login session ended")
	}
	a.Logout()
}
