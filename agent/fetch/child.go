package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/tokend/tokend/internal/logsafe"
	"github.com/tokend/tokend/secmem"
	"github.com/tokend/tokend/token"
)

// errTimeout is the cause of a fetch's own deadline, told apart from the
// caller's cancellation.
var errTimeout = errors.New("fetch timed out")

// start runs argv with stdout going to the given file (the child's end of a
// pipe or terminal, closed here once the child has it), stdin /dev/null,
// stderr captured, tokenDir as its token directory, in a new process group
// that is killed when ctx is done.
func start(ctx context.Context, argv []string, stdout *os.File, tokenDir string) (*exec.Cmd, *tail, error) {
	defer stdout.Close()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), tokenDirEnv+"="+tokenDir)
	stderr := new(tail)
	cmd.Stdout = stdout // an *os.File: handed to the child, no copying goroutine
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = waitDelay
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	return cmd, stderr, nil
}

// killGroup sends SIGKILL to the process group led by pid.
func killGroup(pid int) error {
	err := syscall.Kill(-pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

// finish is called once cmd.Wait returned: it lets the reader of out take
// what is left for at most waitDelay (a grandchild may hold the child's
// stdout open), then kills the group if something was left behind. The
// group cannot have been reused while a member still holds the output open,
// so killing it then is safe.
func finish(cmd *exec.Cmd, waitErr error, out *os.File, read <-chan output) output {
	if errors.Is(waitErr, exec.ErrWaitDelay) {
		// stderr was held open past waitDelay: no need to wait again.
		_ = killGroup(cmd.Process.Pid)
	}
	_ = out.SetReadDeadline(time.Now().Add(waitDelay))
	res := <-read
	if res.heldOpen {
		_ = killGroup(cmd.Process.Pid)
	}
	return res
}

// output is what was read from a child's stdout.
type output struct {
	buf      []byte // the first maxOutput bytes; the caller zeroes it
	overflow bool   // there was more
	heldOpen bool   // still open when the read deadline passed
}

// readAll reads r until EOF or an error (a terminal's EIO when the child
// exits, the read deadline), keeping the first maxOutput bytes and
// discarding (and zeroing) the rest so the child never blocks on a full
// pipe. Each complete line is passed to line, if set, as it arrives; line
// must not keep it.
func readAll(r *os.File, line func([]byte)) output {
	var res output
	buf := make([]byte, maxOutput)
	var scratch [512]byte
	n, scanned := 0, 0
	for {
		if n < len(buf) {
			m, err := r.Read(buf[n:])
			n += m
			for line != nil {
				i := bytes.IndexByte(buf[scanned:n], '\n')
				if i < 0 {
					break
				}
				line(buf[scanned : scanned+i])
				scanned += i + 1
			}
			if err != nil {
				res.heldOpen = errors.Is(err, os.ErrDeadlineExceeded)
				break
			}
		} else {
			m, err := r.Read(scratch[:])
			clear(scratch[:m])
			res.overflow = res.overflow || m > 0
			if err != nil {
				res.heldOpen = errors.Is(err, os.ErrDeadlineExceeded)
				break
			}
		}
	}
	res.buf = buf[:n]
	return res
}

// lines splits output the way HTCondor reads a token file: on '\n', each
// line trimmed (so CRLF and a terminal's "\r\n" are fine), blank lines and
// '#' lines skipped.
func lines(out []byte) [][]byte {
	var ls [][]byte
	for l := range bytes.SplitSeq(out, []byte{'\n'}) {
		l = bytes.TrimSpace(l)
		if len(l) > 0 && l[0] != '#' {
			ls = append(ls, l)
		}
	}
	return ls
}

// exactlyOne returns the token when out holds exactly one line and it is a
// token (condor_token_fetch's contract). Errors never quote out.
func exactlyOne(out []byte) (*secmem.Buffer, error) {
	ls := lines(out)
	switch len(ls) {
	case 0:
		return nil, errors.New("printed no token")
	case 1:
		if _, err := token.Parse(ls[0]); err != nil {
			return nil, fmt.Errorf("printed 1 line that is not a token (%v)", err)
		}
		return store(ls[0])
	}
	tokens := 0
	for _, l := range ls {
		if _, err := token.Parse(l); err == nil {
			tokens++
		}
	}
	if tokens == len(ls) {
		return nil, fmt.Errorf("printed %d tokens, want exactly one", tokens)
	}
	if bad := len(ls) - tokens; bad > 1 {
		return nil, fmt.Errorf("printed %d lines that are not a token, want one token line", bad)
	}
	return nil, errors.New("printed 1 line that is not a token, want one token line")
}

// tail keeps the last maxStderr bytes written to it.
type tail struct {
	mu  sync.Mutex
	buf []byte
	cut bool // the start was dropped: the first line may be a fragment
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(p) >= maxStderr {
		clear(t.buf)
		t.buf = append(t.buf[:0], p[len(p)-maxStderr:]...)
		t.cut = true
		return len(p), nil
	}
	if len(t.buf)+len(p) > maxStderr {
		t.cut = true
		drop := len(t.buf) + len(p) - maxStderr
		copy(t.buf, t.buf[drop:])
		clear(t.buf[len(t.buf)-drop:])
		t.buf = t.buf[:len(t.buf)-drop]
	}
	t.buf = append(t.buf, p...)
	return len(p), nil
}

// message returns the captured stderr fit for an Error and zeroes the
// buffer: tokens redacted, trimmed, at most maxMessage bytes (the end, where
// the reason usually is), then escaped onto one line (logsafe.Text).
func (t *tail) message() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if t.cut {
		// A token cut at the start would be too short to recognise:
		// drop the fragment of a line.
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		} else {
			b = nil
		}
	}
	s := redact(b)
	clear(t.buf)
	t.buf = nil
	return logsafe.Text(shorten(s))
}

// Anything that looks like a JWT or a piece of one: three base64url
// segments, or a base64url run that starts like a JSON object ("{\"" is
// "eyJ"), or a long base64url run.
var tokenish = regexp.MustCompile(`[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|eyJ[A-Za-z0-9_=-]{8,}(\.[A-Za-z0-9_=.-]*)?|[A-Za-z0-9_-]{40,}`)

// redact returns b as a string with token-like parts replaced.
func redact(b []byte) string {
	return string(tokenish.ReplaceAll(b, []byte("[redacted]")))
}

// shorten trims s and keeps at most maxMessage bytes of its end.
func shorten(s string) string {
	s = strings.TrimSpace(s)
	if len(s) <= maxMessage {
		return s
	}
	s = s[len(s)-maxMessage:]
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return "…" + strings.TrimSpace(s)
}

// outcome turns how a fetch command ended into its token, or into e (which
// the caller filled with what it knows: the stderr message, a request id).
// pick takes the token out of what the command printed.
func (o *Options) outcome(ctx context.Context, waitErr error, out output, e *Error, pick func([]byte) (*secmem.Buffer, error)) (*secmem.Buffer, error) {
	exited0 := waitErr == nil || errors.Is(waitErr, exec.ErrWaitDelay)
	switch {
	case !exited0 && errors.Is(context.Cause(ctx), errTimeout):
		e.Timeout, e.Limit, e.Err = true, o.Timeout, context.DeadlineExceeded
		return nil, e
	case !exited0 && ctx.Err() != nil:
		e.Err = context.Cause(ctx)
		return nil, e
	case !exited0:
		return nil, e
	case out.overflow:
		e.Err = fmt.Errorf("printed more than %d KiB, want one token", maxOutput>>10)
		return nil, e
	}
	tok, err := pick(out.buf)
	if err != nil {
		e.Err = err
		return nil, e
	}
	return tok, nil
}
