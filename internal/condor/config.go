package condor

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// PathSetting reads an HTCondor setting that names a file or directory
// (SEC_TOKEN_DIRECTORY, SEC_PASSWORD_DIRECTORY, ...): $_CONDOR_<name>, else
// what `condor_config_val <name>` prints when HTCondor is installed. It is ""
// when the setting is unset, or not an absolute path.
func PathSetting(name string) string {
	v := os.Getenv("_CONDOR_" + name)
	if v == "" {
		bin, err := exec.LookPath("condor_config_val")
		if err != nil {
			return ""
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, name).Output()
		if err != nil {
			return "" // "Not defined: NAME", exit 1
		}
		v = strings.TrimSpace(string(out))
	}
	if !filepath.IsAbs(v) || strings.ContainsAny(v, "\n\x00") {
		return ""
	}
	return filepath.Clean(v)
}
