package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/tokend/tokend/demo"
	"github.com/tokend/tokend/secmem"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: tokend demo")
		return exitUsage
	}
	// The demo reads tokens, as the agent does: no core dump or debugger
	// of this process may copy them.
	if err := secmem.Harden(); err != nil {
		fmt.Fprintf(stderr, "tokend demo: warning: %v\n", err)
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "tokend demo: %v\n", err)
		return exitFailure
	}
	if err := demo.Run(ctx, exe, stdout); err != nil {
		fmt.Fprintf(stderr, "tokend demo: %v\n", err)
		return exitFailure
	}
	return exitOK
}
