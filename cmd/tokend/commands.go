package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/tokend/tokend/demo"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: tokend demo")
		return exitUsage
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
