package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/doctor"
	"github.com/tokend/tokend/secmem"
)

func runDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("tokend doctor", flag.ContinueOnError)
	fl.SetOutput(stderr)
	socket := fl.String("socket", "", "agent socket `path` (default $TOKEND_SOCKET, else the config's socket, else $XDG_RUNTIME_DIR/tokend/agent.sock)")
	configFile := fl.String("config", "", "config `file` (default $TOKEND_CONFIG, else /etc/tokend/config.toml and ~/.config/tokend/config.toml)")
	asJSON := fl.Bool("json", false, "print JSON for scripts")
	if err := fl.Parse(args); err != nil || fl.NArg() > 0 {
		return exitUsage
	}
	// The doctor reads the tokens the tools would use, as the agent does:
	// no core dump or debugger of this process may copy them.
	if err := secmem.Harden(); err != nil {
		fmt.Fprintf(stderr, "tokend doctor: warning: %v\n", err)
	}
	checks := doctor.Run(ctx, doctor.Options{ConfigFile: config.FileOverride(*configFile), Socket: *socket})
	if *asJSON {
		printJSON(stdout, checks)
	} else {
		marks := map[string]string{doctor.OK: "ok  ", doctor.Warn: "WARN", doctor.Fail: "FAIL"}
		for _, c := range checks {
			fmt.Fprintf(stdout, "%s  %-22s %s\n", marks[c.Status], c.Name, c.Detail)
			if c.Fix != "" {
				fmt.Fprintf(stdout, "      %-22s fix: %s\n", "", c.Fix)
			}
		}
	}
	if doctor.Failed(checks) {
		return exitDoctor
	}
	return exitOK
}
