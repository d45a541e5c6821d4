package fetch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// requestFetcher runs condor_token_request, which enqueues a request, prints
// its id, and polls until an administrator approves it; then it prints the
// token.
type requestFetcher struct{ o Options }

// requestID finds the id in "Token request enqueued.  Ask an administrator
// to please approve request 42."
var requestID = regexp.MustCompile(`approve request (\d+)`)

func (f *requestFetcher) Fetch(ctx context.Context, req Request, progress func(Progress)) (*secmem.Buffer, error) {
	started := time.Now()
	argv, tokenDir, ctx, end, err := f.o.prepare(ctx, req)
	if err != nil {
		return nil, err
	}
	defer end()
	// HTCondor buffers stdout when it is a pipe, so the request id would
	// only appear when the tool exits: give it a terminal.
	master, tty, err := openPTY()
	if err != nil {
		return nil, f.o.fail(err)
	}
	defer master.Close()
	cmd, stderr, err := start(ctx, argv, tty, tokenDir)
	if err != nil {
		return nil, f.o.fail(err)
	}
	ids := make(chan string, 1)
	read := make(chan output, 1)
	go func() {
		read <- readAll(master, func(line []byte) {
			if m := requestID.FindSubmatch(line); m != nil {
				select {
				case ids <- string(m[1]):
				default:
				}
			}
		})
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	id := ""
	report := func() {
		if progress != nil {
			progress(Progress{RequestID: id, Started: started, Message: waitingFor(id, time.Since(started))})
		}
	}
	report()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var waitErr error
wait:
	for {
		select {
		case id = <-ids:
			report()
		case <-tick.C:
			report()
		case waitErr = <-waited:
			break wait
		}
	}
	out := finish(cmd, waitErr, master, read)
	defer clear(out.buf)
	select {
	case id = <-ids: // printed just before the tool exited
	default:
	}

	e := f.o.fail(waitErr)
	e.RequestID = id
	e.Message = stderr.message()
	return f.o.outcome(ctx, waitErr, out, e, oneToken)
}

// waitingFor is the Progress message.
func waitingFor(id string, elapsed time.Duration) string {
	elapsed = elapsed.Round(time.Second)
	if id == "" {
		return fmt.Sprintf("waiting for condor_token_request to enqueue a request (%s)", elapsed)
	}
	return fmt.Sprintf("waiting for an administrator to approve request %s (condor_token_request_approve -reqid %s), %s elapsed", id, id, elapsed)
}

// oneToken returns the one line of out that is a token; other lines are
// condor_token_request's messages.
func oneToken(out []byte) (*secmem.Buffer, error) {
	var tok []byte
	n := 0
	for _, l := range lines(out) {
		if _, err := token.Parse(l); err == nil {
			tok = l
			n++
		}
	}
	switch n {
	case 0:
		return nil, errors.New("exited without printing a token")
	case 1:
		return store(tok)
	}
	return nil, fmt.Errorf("printed %d tokens, want exactly one", n)
}

// openPTY returns a pseudo-terminal: master for reading (pollable, so a read
// deadline works) and tty for the child's stdout, with echo off, output
// passed through as written, and mode 0600 (devpts makes it writable by
// group tty, so that anyone's write(1) could reach it).
func openPTY() (master, tty *os.File, err error) {
	p, t, err := pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("cannot open a pseudo-terminal: %w", err)
	}
	fail := func(err error) (*os.File, *os.File, error) {
		p.Close()
		t.Close()
		return nil, nil, fmt.Errorf("cannot set up a pseudo-terminal: %w", err)
	}
	fd := int(t.Fd())
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return fail(err)
	}
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fail(err)
	}
	tio.Lflag &^= unix.ECHO | unix.ECHONL
	tio.Oflag &^= unix.OPOST // no "\n" to "\r\n"
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, tio); err != nil {
		return fail(err)
	}
	// pty.Open leaves the master in blocking mode (it calls Fd), where
	// neither a deadline nor Close ends a pending Read. Use a non-blocking
	// duplicate, which os.NewFile puts in the runtime poller.
	mfd, err := unix.FcntlInt(p.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fail(err)
	}
	p.Close()
	if err := unix.SetNonblock(mfd, true); err != nil {
		unix.Close(mfd)
		t.Close()
		return nil, nil, fmt.Errorf("cannot set up a pseudo-terminal: %w", err)
	}
	return os.NewFile(uintptr(mfd), "/dev/ptmx"), t, nil
}
