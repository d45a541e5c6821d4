package agent

import (
	"fmt"
	"os"
	"syscall"
)

// ensureDir creates the token directory and missing parents, private to the
// user (HTCondor creates ~/.condor/tokens.d 0700 too).
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("could not create the token directory: %w", err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; int(uid) != os.Getuid() {
		return fmt.Errorf("%s belongs to uid %d, not to you (uid %d): HTCondor would refuse its tokens too", dir, uid, os.Getuid())
	}
	return nil
}
