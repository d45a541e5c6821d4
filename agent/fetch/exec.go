package fetch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/tokend/tokend/secmem"
)

// execFetcher runs condor_token_fetch, or any program with its contract:
// the token and a newline on stdout, or a message on stderr and a non-zero
// exit status.
type execFetcher struct{ o Options }

func (f *execFetcher) Fetch(ctx context.Context, req Request, _ func(Progress)) (*secmem.Buffer, error) {
	argv, err := f.o.argv(req)
	if err != nil {
		return nil, f.o.fail(err)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, f.o.Timeout, errTimeout)
	defer cancel()

	r, w, err := os.Pipe()
	if err != nil {
		return nil, f.o.fail(fmt.Errorf("cannot make a pipe: %w", err))
	}
	defer r.Close()
	cmd, stderr, err := start(ctx, argv, w)
	if err != nil {
		return nil, f.o.fail(err)
	}
	read := make(chan output, 1)
	go func() { read <- readAll(r, nil) }()
	waitErr := cmd.Wait()
	out := finish(cmd, waitErr, r, read)
	defer clear(out.buf)

	e := f.o.fail(waitErr)
	e.Message = stderr.message()
	exited0 := waitErr == nil || errors.Is(waitErr, exec.ErrWaitDelay)
	switch {
	case !exited0 && errors.Is(context.Cause(ctx), errTimeout):
		e.Timeout, e.Limit, e.Err = true, f.o.Timeout, context.DeadlineExceeded
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
	tok, err := exactlyOne(out.buf)
	if err != nil {
		e.Err = err
		return nil, e
	}
	return tok, nil
}
