package main

import (
	"context"
	"fmt"
	"io"
)

func runDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "tokend doctor: not yet")
	return exitFailure
}
