// Command peek tries to read another process's memory and environment the
// ways any other process of the same user could, and prints the errno of
// each attempt as JSON ("" when it worked). Tests run it as the agent's
// user against the agent (which must refuse every one) and against an
// ordinary process of that user (which must not: the control).
//
//	peek PID
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/internal/testenv/simwire"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: peek PID")
		os.Exit(2)
	}
	pid, err := strconv.Atoi(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	proc := "/proc/" + os.Args[1]
	res := simwire.Access{}
	try := func(op string, f func() error) { res[op] = simwire.Errno(f()) }

	addr, mapsErr := readableAddr(proc + "/maps")
	res["maps"] = simwire.Errno(mapsErr)
	try("mem", func() error {
		f, err := os.Open(proc + "/mem")
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.ReadAt(make([]byte, 16), int64(addr))
		return err
	})
	try("environ", func() error {
		_, err := os.ReadFile(proc + "/environ")
		return err
	})
	try("process_vm_readv", func() error {
		buf := make([]byte, 16)
		_, err := unix.ProcessVMReadv(pid,
			[]unix.Iovec{{Base: &buf[0], Len: uint64(len(buf))}},
			[]unix.RemoteIovec{{Base: addr, Len: len(buf)}}, 0)
		return err
	})
	try("ptrace", func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := unix.PtraceAttach(pid); err != nil {
			return err
		}
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, unix.WALL, nil)
		return unix.PtraceDetach(pid)
	})
	json.NewEncoder(os.Stdout).Encode(res)
}

// readableAddr returns the start of the first readable mapping, or a
// plausible address when the maps cannot be read (the attempts that use
// it are refused before the address matters).
func readableAddr(path string) (uintptr, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0x400000, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || !strings.HasPrefix(fields[1], "r") {
			continue
		}
		start, _, _ := strings.Cut(fields[0], "-")
		a, err := strconv.ParseUint(start, 16, 64)
		if err == nil {
			return uintptr(a), nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0x400000, err
	}
	return 0x400000, errors.New("no readable mapping")
}
