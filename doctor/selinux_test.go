package doctor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
)

// stubSELinux puts getenforce and getsebool stubs first on PATH (this
// machine has no SELinux) and the process context in a file. getenforce
// prints mode (or fails when mode is ""); getsebool prints the boolean's
// line (or fails when boolean is "") and records its arguments.
func stubSELinux(t *testing.T, mode, boolean, context string) (calls func() string) {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "getsebool.calls")
	write := func(name, script string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if mode == "" {
		write("getenforce", "echo 'getenforce: broken' >&2; exit 1\n")
	} else {
		write("getenforce", "echo "+mode+"\n")
	}
	if boolean == "" {
		write("getsebool", "echo \"$*\" >>'"+log+"'\necho 'Error getting active value for use_fusefs_home_dirs' >&2; exit 1\n")
	} else {
		write("getsebool", "echo \"$*\" >>'"+log+"'\necho \"use_fusefs_home_dirs --> "+boolean+"\"\n")
	}
	t.Setenv("PATH", dir)
	ctxFile := filepath.Join(dir, "context")
	if err := os.WriteFile(ctxFile, []byte(context+"\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := selinuxContextFile
	selinuxContextFile = ctxFile
	t.Cleanup(func() { selinuxContextFile = old })
	return func() string {
		data, _ := os.ReadFile(log)
		return strings.TrimSpace(string(data))
	}
}

const (
	unconfined = "unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023"
	confined   = "user_u:user_r:user_t:s0"
)

func TestSELinux(t *testing.T) {
	cases := []struct {
		name                   string
		mode, boolean, context string
		allowRoot              bool
		status                 string
		detail                 []string // substrings of the detail
		asksBoolean            bool
	}{
		{"disabled", "Disabled", "off", unconfined, true, OK, []string{"disabled"}, false},
		{"permissive", "Permissive", "off", confined, true, OK, []string{"permissive"}, false},
		{"enforcing, on, allow_root", "Enforcing", "on", unconfined, true, OK, []string{"enforcing", "use_fusefs_home_dirs is on"}, true},
		{"enforcing, on, confined", "Enforcing", "on", confined, false, OK, []string{"use_fusefs_home_dirs is on"}, true},
		{"enforcing, off, allow_root", "Enforcing", "off", unconfined, true, Warn, []string{"is off", "HTCondor's schedd"}, true},
		{"enforcing, off, confined user", "Enforcing", "off", confined, false, Warn, []string{"is off", "confined, as user_t"}, true},
		{"enforcing, off, unconfined", "Enforcing", "off", unconfined, false, OK, []string{"is off", "only confined programs need", "unconfined_t"}, true},
		{"enforcing, no such boolean, allow_root", "Enforcing", "", unconfined, true, Warn, []string{"could not read use_fusefs_home_dirs", "Error getting active value"}, true},
		{"enforcing, no such boolean, unconfined", "Enforcing", "", unconfined, false, OK, []string{"could not read"}, true},
		{"getenforce fails, allow_root", "", "off", unconfined, true, Warn, []string{"getenforce failed", "getenforce: broken", "is off"}, true},
		{"getenforce fails, unconfined", "", "off", unconfined, false, OK, []string{"getenforce failed"}, true},
		{"no SELinux context (AppArmor)", "Enforcing", "off", "unconfined", false, OK, []string{"unknown context"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			calls := stubSELinux(t, c.mode, c.boolean, c.context)
			cfg := config.Default()
			cfg.AllowRoot = c.allowRoot
			got, ok := selinux(context.Background(), cfg)
			if !ok {
				t.Fatal("no SELinux check although getenforce is on PATH")
			}
			if got.Status != c.status {
				t.Errorf("status %s, want %s: %+v", got.Status, c.status, got)
			}
			for _, want := range c.detail {
				if !strings.Contains(got.Detail, want) {
					t.Errorf("detail lacks %q: %s", want, got.Detail)
				}
			}
			if wantFix := c.status == Warn; wantFix != strings.Contains(got.Fix, "setsebool -P use_fusefs_home_dirs on") {
				t.Errorf("fix %q (status %s)", got.Fix, got.Status)
			}
			asked := calls()
			if c.asksBoolean && asked != "use_fusefs_home_dirs" {
				t.Errorf("getsebool was called with %q, want use_fusefs_home_dirs: %+v", asked, got)
			}
			if !c.asksBoolean && asked != "" {
				t.Errorf("getsebool was called (%q) although SELinux denies nothing", asked)
			}
		})
	}
}

// Without SELinux (no getenforce), there is no SELinux check at all.
func TestNoSELinux(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	cfg := config.Default()
	cfg.AllowRoot = true
	if c, ok := selinux(context.Background(), cfg); ok {
		t.Fatalf("an SELinux check without SELinux: %+v", c)
	}
}

func TestOpenMode(t *testing.T) {
	for _, c := range []struct {
		mode, status, detail string
	}{
		{api.OpenModeKernel, OK, "the kernel opens token files itself"},
		{api.OpenModeHandles, OK, "lacks FUSE no_open/no_opendir support"},
		{"", Warn, "restart it"},
	} {
		got := openMode(&api.Status{OpenMode: c.mode, Mounted: true})
		if got.Status != c.status || !strings.Contains(got.Detail+got.Fix, c.detail) || (c.mode != "" && !strings.HasPrefix(got.Detail, c.mode)) {
			t.Errorf("open mode %q: %+v", c.mode, got)
		}
	}
}
