// Command tokend-pam is the program on tokend's PAM line:
//
//	session optional pam_exec.so quiet stdout /usr/bin/tokend-pam
//
// pam_exec runs it as root with the PAM environment, which a user may partly
// set (pam_env with user_readenv=1). It is statically linked (built with
// CGO_ENABLED=0), so no dynamic loader reads that environment: it reads
// PAM_USER, PAM_TYPE and PAM_SERVICE from the raw environment block,
// refuses a block that names one of them twice, and runs `tokend session`
// (the tokend binary beside it, with its own arguments) with an environment
// it builds itself. tokend stays dynamically linked, for user lookups
// through NSS (SSSD, LDAP).
//
// A refusal goes to standard error (pam_exec's log= file, or the user's
// terminal with its stdout option) and to syslog (authpriv, tag tokend), as
// the hook's messages do, and the exit status is 1: with "optional", the
// login goes on without tokend.
//
// It imports neither net (log/syslog) nor os/user, so it is static even
// where built with cgo, and it never reads the time zone (TZ is the
// user's).
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/tokend/tokend/session/pamenv"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	block, err := os.ReadFile("/proc/self/environ")
	if err != nil {
		return refuse(stderr, fmt.Sprintf("cannot read the environment: %v; nothing done", err))
	}
	env, err := pamenv.Launch(pamenv.Split(block))
	if err != nil {
		return refuse(stderr, err.Error())
	}
	tokend, err := sibling("tokend")
	if err != nil {
		return refuse(stderr, err.Error())
	}
	argv := append([]string{tokend, "session"}, args...)
	err = syscall.Exec(tokend, argv, env)
	return refuse(stderr, fmt.Sprintf("cannot run %s: %v; nothing done", tokend, err))
}

// sibling returns the path of the program name installed beside this one.
func sibling(name string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("cannot find where tokend-pam is installed: %v; nothing done", err)
	}
	return filepath.Join(filepath.Dir(self), name), nil
}

// refuse logs why nothing was done and returns the exit status.
func refuse(stderr io.Writer, msg string) int {
	msg = "tokend-pam: " + msg
	fmt.Fprintln(stderr, msg)
	toSyslog(msg)
	return 1
}

// toSyslog sends msg to the local syslog socket, facility authpriv,
// severity warning, tag tokend, without a timestamp (syslog adds it).
func toSyslog(msg string) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer syscall.Close(fd)
	if syscall.Connect(fd, &syscall.SockaddrUnix{Name: "/dev/log"}) != nil {
		return
	}
	const authprivWarning = 10<<3 | 4
	syscall.Write(fd, []byte("<"+strconv.Itoa(authprivWarning)+">tokend["+strconv.Itoa(os.Getpid())+"]: "+msg))
}
