package condor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Setting reads an HTCondor setting as it is: $_CONDOR_<name>, else what
// `condor_config_val <name>` prints when HTCondor is installed, with
// surrounding white space trimmed. It is "" when the setting is unset, and
// when the value is not a single line.
func Setting(name string) string {
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
		v = string(out)
	}
	v = strings.TrimSpace(v)
	if strings.ContainsAny(v, "\n\x00") {
		return ""
	}
	return v
}

// PathSetting reads an HTCondor setting that names a file or directory
// (SEC_TOKEN_DIRECTORY, SEC_PASSWORD_DIRECTORY, ...) as [Setting] does. It
// is "" when the setting is unset, or not an absolute path.
func PathSetting(name string) string {
	v := Setting(name)
	if !filepath.IsAbs(v) {
		return ""
	}
	return filepath.Clean(v)
}

// TrustDomain is the pool's TRUST_DOMAIN as the iss of the tokens its
// servers sign: the setting up to its first comma, space or tab, as
// HTCondor cuts it. "" when unset.
func TrustDomain() string {
	v := Setting("TRUST_DOMAIN")
	if i := strings.IndexAny(v, ", \t"); i >= 0 {
		v = v[:i]
	}
	return v
}

// TokenMaxAge is the pool's SEC_TOKEN_MAX_AGE: the servers refuse a token
// whose iat is older. 0 when unset, and when it is 0 or negative (HTCondor
// checks no age then). A value that is not a whole number of seconds is
// an error (and 0).
func TokenMaxAge() (time.Duration, error) {
	v := Setting("SEC_TOKEN_MAX_AGE")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n > int64(100*365*24*time.Hour/time.Second) {
		return 0, fmt.Errorf("SEC_TOKEN_MAX_AGE %q is not a number of seconds", v)
	}
	if n <= 0 {
		return 0, nil
	}
	return time.Duration(n) * time.Second, nil
}
