package condor

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeConfigVal puts a condor_config_val on PATH (and only it) that prints
// what values holds for its argument, and fails like the real one for
// anything else.
func fakeConfigVal(t *testing.T, values map[string]string) {
	t.Helper()
	dir := t.TempDir()
	script := "#!/bin/sh\ncase \"$1\" in\n"
	for name, v := range values {
		script += name + ") printf '%s\\n' '" + v + "' ;;\n"
	}
	script += "*) echo \"Not defined: $1\" >&2; exit 1 ;;\nesac\n"
	if err := os.WriteFile(filepath.Join(dir, "condor_config_val"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
}

func TestSetting(t *testing.T) {
	fakeConfigVal(t, map[string]string{
		"TRUST_DOMAIN":           "cm.example.org:9618, cm2.example.org",
		"SEC_TOKEN_MAX_AGE":      "3600",
		"SEC_PASSWORD_DIRECTORY": "/etc/condor/passwords.d/",
		"RELATIVE":               "passwords.d",
	})
	t.Setenv("_CONDOR_TRUST_DOMAIN", "")
	t.Setenv("_CONDOR_SEC_TOKEN_MAX_AGE", "")
	if got := Setting("TRUST_DOMAIN"); got != "cm.example.org:9618, cm2.example.org" {
		t.Fatalf("Setting(TRUST_DOMAIN) = %q: want the raw value", got)
	}
	if got := TrustDomain(); got != "cm.example.org:9618" {
		t.Fatalf("TrustDomain() = %q: want the value up to the first comma or space, as HTCondor cuts it", got)
	}
	if got, err := TokenMaxAge(); got != time.Hour || err != nil {
		t.Fatalf("TokenMaxAge() = %v, %v; want 1h", got, err)
	}
	if got := PathSetting("SEC_PASSWORD_DIRECTORY"); got != "/etc/condor/passwords.d" {
		t.Fatalf("PathSetting = %q", got)
	}
	if got := PathSetting("RELATIVE"); got != "" {
		t.Fatalf("a relative path: %q, want \"\"", got)
	}
	if got := Setting("UNDEFINED"); got != "" {
		t.Fatalf("an undefined setting: %q", got)
	}

	// The environment comes first.
	t.Setenv("_CONDOR_TRUST_DOMAIN", " env.example\t")
	t.Setenv("_CONDOR_SEC_TOKEN_MAX_AGE", "9")
	if got := TrustDomain(); got != "env.example" {
		t.Fatalf("TrustDomain() from the environment = %q", got)
	}
	if got, err := TokenMaxAge(); got != 9*time.Second || err != nil {
		t.Fatalf("TokenMaxAge() from the environment = %v, %v", got, err)
	}
	t.Setenv("_CONDOR_TRUST_DOMAIN", "two\nlines")
	if got := Setting("TRUST_DOMAIN"); got != "" {
		t.Fatalf("a value of two lines: %q", got)
	}
}

func TestTokenMaxAge(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no HTCondor
	for v, want := range map[string]time.Duration{"": 0, "0": 0, "-1": 0, "60": time.Minute} {
		t.Setenv("_CONDOR_SEC_TOKEN_MAX_AGE", v)
		if got, err := TokenMaxAge(); got != want || err != nil {
			t.Errorf("SEC_TOKEN_MAX_AGE=%q: %v, %v; want %v", v, got, err, want)
		}
	}
	for _, v := range []string{"1h", "ten", "1e99", "99999999999999999999"} {
		t.Setenv("_CONDOR_SEC_TOKEN_MAX_AGE", v)
		if got, err := TokenMaxAge(); got != 0 || err == nil {
			t.Errorf("SEC_TOKEN_MAX_AGE=%q: %v, %v; want an error", v, got, err)
		}
	}
	t.Setenv("_CONDOR_SEC_TOKEN_MAX_AGE", "")
	t.Setenv("_CONDOR_TRUST_DOMAIN", "")
	if TrustDomain() != "" {
		t.Fatal("no HTCondor, no environment: a trust domain")
	}
}
