package agent

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"syscall"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/condor"
)

// TokenDir is where the HTCondor tools look for tokens: the config's dir,
// else SEC_TOKEN_DIRECTORY (from the environment or condor_config_val),
// else <pw_dir>/.condor/tokens.d, pw_dir from the password database as
// HTCondor does (not $HOME).
func TokenDir(cfg config.Config) (string, error) {
	if cfg.Dir != "" {
		return cfg.Dir, nil
	}
	if d := condor.PathSetting("SEC_TOKEN_DIRECTORY"); d != "" {
		return d, nil
	}
	u, err := user.LookupId(fmt.Sprint(os.Getuid()))
	if err != nil {
		return "", fmt.Errorf("could not find uid %d's home directory: %w; set dir in the config", os.Getuid(), err)
	}
	return filepath.Join(u.HomeDir, ".condor", "tokens.d"), nil
}

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

// EnsurePrivateDir makes dir (and missing parents) exist, a directory
// owned by the user, mode 0700: where the agent's socket lives.
func EnsurePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("could not create %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory: remove it", dir)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; int(uid) != os.Getuid() {
		return fmt.Errorf("the socket directory %s belongs to uid %d: another user took it; remove it or set socket = \"...\" in the config", dir, uid)
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
	}
	return nil
}

func socketDir(socket string) string { return filepath.Dir(socket) }
