// Package reaper makes the agent a child subreaper: a process that the
// agent's children leave behind (a double fork, a daemon started by a fetch
// command) is reparented to the agent rather than to init, so that it
// still counts as the agent's descendant (the gate never holds it: see
// fusefs). Such orphans become the agent's children, and the agent must
// reap them when they exit, or they stay zombies.
//
// os/exec waits for the children it started, so the reaper must never reap
// one of those. It tells them apart by what os/exec leaves them: they stay
// in the agent's session (tokend never starts a child with Setsid), either
// in the agent's process group or leading their own (Setpgid). An orphan
// that left the session (setsid, as daemons do) or sits in another's group
// is reaped; one still in the agent's group, or leading its own without a
// session of its own, is left alone (a zombie until the agent exits).
package reaper

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

var once sync.Once

// Start makes this process a child subreaper and reaps the orphans that
// exit under it, from then on, in a goroutine of its own. Later calls do
// nothing.
func Start(log *slog.Logger) error {
	var err error
	once.Do(func() {
		if err = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			err = fmt.Errorf("cannot become a child subreaper (prctl: %w): a double-forked child of a fetch command may be held at a gate", err)
			return
		}
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGCHLD)
		go func() {
			for range ch {
				for _, pid := range Orphans() {
					var ws unix.WaitStatus
					if _, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err != nil {
						log.Debug("could not reap an exited orphan", "pid", pid, "err", err)
					}
				}
			}
		}()
	})
	return err
}

// Orphans lists this process's exited children that os/exec did not start
// (the package doc says how they are told apart).
func Orphans() []int {
	self := os.Getpid()
	me, err := readStat(self)
	if err != nil {
		return nil
	}
	var out []int
	for _, pid := range children(self) {
		st, err := readStat(pid)
		if err != nil || st.state != 'Z' || st.ppid != self {
			continue
		}
		ours := st.session == me.session && (st.pgrp == me.pgrp || st.pgrp == pid)
		if !ours {
			out = append(out, pid)
		}
	}
	return out
}

// children lists the children of every thread of pid (orphans are
// reparented to one of its threads).
func children(pid int) []int {
	files, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	var out []int
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, field := range bytes.Fields(data) {
			if n, err := strconv.Atoi(string(field)); err == nil {
				out = append(out, n)
			}
		}
	}
	if len(files) > 0 {
		return out
	}
	// Without CONFIG_PROC_CHILDREN: every process, filtered by the caller.
	all, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range all {
		if n, err := strconv.Atoi(filepath.Base(d)); err == nil {
			out = append(out, n)
		}
	}
	return out
}

type stat struct {
	state               byte
	ppid, pgrp, session int
}

// readStat reads state, parent, process group and session from
// /proc/PID/stat.
func readStat(pid int) (stat, error) {
	var st stat
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return st, err
	}
	// The command name is in parentheses and may hold anything.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return st, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := bytes.Fields(data[i+1:])
	if len(f) < 4 || len(f[0]) != 1 {
		return st, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	st.state = f[0][0]
	for j, p := range []*int{&st.ppid, &st.pgrp, &st.session} {
		if *p, err = strconv.Atoi(string(f[j+1])); err != nil {
			return st, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
	}
	return st, nil
}
