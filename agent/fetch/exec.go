package fetch

import (
	"context"
	"fmt"
	"os"

	"github.com/tokend/tokend/secmem"
)

// execFetcher runs condor_token_fetch, or any program with its contract:
// the token and a newline on stdout, or a message on stderr and a non-zero
// exit status.
type execFetcher struct{ o Options }

func (f *execFetcher) Fetch(ctx context.Context, req Request, _ func(Progress)) (*secmem.Buffer, error) {
	argv, tokenDir, ctx, end, err := f.o.prepare(ctx, req)
	if err != nil {
		return nil, err
	}
	defer end()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, f.o.fail(fmt.Errorf("cannot make a pipe: %w", err))
	}
	defer r.Close()
	cmd, stderr, err := start(ctx, argv, w, tokenDir)
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
	return f.o.outcome(ctx, waitErr, out, e, exactlyOne)
}
