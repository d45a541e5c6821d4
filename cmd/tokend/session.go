package main

import (
	"context"
	"fmt"
	"io"
)

func runSession(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "tokend session: not yet")
	return exitFailure
}
