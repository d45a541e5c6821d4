package doctor

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
)

// selinuxContextFile holds the calling process's SELinux context (a test
// points it elsewhere).
var selinuxContextFile = "/proc/self/attr/current"

// fusefsBoolean lets confined domains use FUSE mounts under home
// directories, such as ~/.condor/tokens.d.
const fusefsBoolean = "use_fusefs_home_dirs"

// selinux checks, where SELinux is present (getenforce on PATH), whether it
// lets the programs that read the token directory in. Unconfined users
// (unconfined_t, EL's default) read the mount whatever the boolean says;
// confined domains need use_fusefs_home_dirs: HTCondor's schedd, which reads
// the mount through allow_root, and confined users (user_t, staff_t, ...).
// So it warns only where one of those reads it.
func selinux(ctx context.Context, cfg config.Config) (Check, bool) {
	getenforce, err := exec.LookPath("getenforce")
	if err != nil {
		return Check{}, false
	}
	var who []string
	if cfg.AllowRoot {
		who = append(who, "HTCondor's schedd (allow_root is set; condor_schedd_t is confined)")
	}
	domain := selinuxDomain()
	if domain != "" && domain != "unconfined_t" {
		who = append(who, "your own programs (you run confined, as "+domain+")")
	}
	c := Check{Name: "SELinux"}

	mode, err := run(ctx, getenforce)
	switch {
	case err != nil:
		c.Detail = "getenforce failed: " + err.Error()
	case mode == "Disabled":
		c.Status, c.Detail = OK, "disabled"
		return c, true
	case mode == "Permissive":
		c.Status, c.Detail = OK, "permissive: nothing is denied (if it becomes enforcing, run tokend doctor again)"
		return c, true
	case mode == "Enforcing":
		c.Detail = "enforcing"
	default:
		c.Detail = fmt.Sprintf("getenforce says %q", mode)
	}

	out, err := run(ctx, "getsebool", fusefsBoolean)
	value := ""
	if _, v, ok := strings.Cut(out, "-->"); ok && err == nil {
		value = strings.TrimSpace(v)
	}
	switch value {
	case "on":
		c.Status, c.Detail = OK, c.Detail+"; "+fusefsBoolean+" is on"
		return c, true
	case "off":
		c.Detail += "; " + fusefsBoolean + " is off"
	default:
		if err == nil {
			err = fmt.Errorf("unexpected output %q", out)
		}
		c.Detail += fmt.Sprintf("; could not read %s (getsebool: %v)", fusefsBoolean, err)
	}
	if len(who) == 0 {
		c.Status = OK
		c.Detail += ", which only confined programs need: you run " + cmp.Or(domain, "in an unknown context") + " and allow_root is off"
		return c, true
	}
	c.Status = Warn
	c.Detail += ": " + strings.Join(who, " and ") + " may be denied the token directory, and then offer no IDTOKENS"
	c.Fix = "setsebool -P " + fusefsBoolean + " on (as root)"
	return c, true
}

// selinuxDomain is the type of the calling process's SELinux context
// ("unconfined_t"), or "" when it cannot be told.
func selinuxDomain() string {
	data, err := os.ReadFile(selinuxContextFile)
	if err != nil {
		return ""
	}
	parts := strings.Split(strings.TrimRight(string(data), "\x00\n "), ":")
	if len(parts) < 3 {
		return "" // not an SELinux context (AppArmor writes "unconfined")
	}
	return parts[2]
}

// run runs a short query command and returns its trimmed output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil && s != "" {
		err = fmt.Errorf("%w: %s", err, s)
	}
	return s, err
}

// openMode says how the agent's mount opens token files (api.Status.OpenMode).
func openMode(st *api.Status) Check {
	switch st.OpenMode {
	case api.OpenModeKernel:
		return Check{"open mode", OK, st.OpenMode + ": the kernel opens token files itself; the tools' reads cost no round trip", ""}
	case api.OpenModeHandles:
		return Check{"open mode", OK, st.OpenMode + ": this kernel lacks FUSE no_open/no_opendir support (EL 8's 4.18 without the backport), so the agent answers every open; tokens work, each open costs a round trip", ""}
	}
	return Check{"open mode", Warn, fmt.Sprintf("the agent reports open mode %q", st.OpenMode), "an agent older than this tokend: restart it"}
}
