package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/doctor"
)

// doctor sees a working setup as working, names the token the tools would
// use, and says what to fix when the agent is gone.
func TestDoctor(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	out, stderr, code := e.runAs(e.u, "", e.bin, "doctor", "--json", "--config", e.config)
	if code != 0 {
		t.Fatalf("doctor with a running agent: exit %d: %s %s", code, out, stderr)
	}
	var checks []doctor.Check
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		t.Fatal(err)
	}
	status := map[string]doctor.Check{}
	for _, c := range checks {
		status[c.Name] = c
	}
	for _, name := range []string{"fuse3", "/dev/fuse", "config", "agent", "mount", "what the tools see"} {
		if status[name].Status != doctor.OK {
			t.Errorf("%s: %+v", name, status[name])
		}
	}
	if !strings.Contains(status["what the tools see"].Detail, "tokend-session") {
		t.Errorf("doctor does not name the token the tools use: %+v", status["what the tools see"])
	}
	// The open mode the agent reports, in status and in doctor.
	st, err := e.status()
	if err != nil {
		t.Fatal(err)
	}
	if st.OpenMode != api.OpenModeKernel && st.OpenMode != api.OpenModeHandles {
		t.Errorf("status open_mode %q", st.OpenMode)
	}
	if c := status["open mode"]; c.Status != doctor.OK || !strings.HasPrefix(c.Detail, st.OpenMode+":") {
		t.Errorf("doctor's open mode %+v, the agent's %q", c, st.OpenMode)
	}
	if out, _, _ := e.cli("status"); !strings.Contains(out, "("+st.OpenMode+")") {
		t.Errorf("tokend status does not show the open mode %s:\n%s", st.OpenMode, out)
	}
	// No SELinux here, so no SELinux check (doctor/selinux_test.go stubs it).
	if _, err := exec.LookPath("getenforce"); err != nil {
		if c, ok := status["SELinux"]; ok {
			t.Errorf("an SELinux check on a machine without SELinux: %+v", c)
		}
	}
	e.stop()
	out, _, code = e.runAs(e.u, "", e.bin, "doctor", "--config", e.config)
	if code != exitDoctor || !strings.Contains(out, "FAIL  agent") || !strings.Contains(out, "systemctl --user start tokend") {
		t.Fatalf("doctor without an agent: exit %d:\n%s", code, out)
	}
}
