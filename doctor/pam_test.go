package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func pamDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Debian's layout: pam-auth-update puts the line in common-session, which
// sshd includes after its own pam_env line with user_readenv=1.
func TestPAMHookUserReadenvThroughInclude(t *testing.T) {
	dir := pamDir(t, map[string]string{
		"common-session": "session [default=1] pam_permit.so\nsession\toptional\tpam_exec.so quiet stdout /usr/bin/tokend-pam # tokend\n",
		"sshd":           "@include common-auth\nsession    required     pam_env.so user_readenv=1 envfile=/etc/default/locale\n@include common-session\n",
		"login":          "session required pam_env.so readenv=1\n@include common-session\n",
		"cron":           "session required pam_env.so user_readenv=1\nsession required pam_unix.so\n",
	})
	c, ok := pamHook(dir)
	if !ok || c.Status != Warn || !strings.HasPrefix(c.Detail, "sshd run tokend and let users") || !strings.Contains(c.Fix, "user_readenv=1") {
		t.Fatalf("%v %+v", ok, c)
	}
}

func TestPAMHook(t *testing.T) {
	for _, tc := range []struct {
		name   string
		files  map[string]string
		status string
		detail string
	}{
		{"none", map[string]string{"sshd": "session required pam_unix.so\n"}, "", ""},
		{"launcher", map[string]string{"sshd": "session optional pam_exec.so quiet stdout /usr/local/bin/tokend-pam --config /etc/x.toml\n"}, OK, "sshd run tokend-pam"},
		{"tokend itself", map[string]string{"sshd": "session optional pam_exec.so log=/var/log/t.log /usr/bin/tokend session\n"}, Fail, "sshd run tokend itself"},
		{"substack", map[string]string{
			"sshd":  "session substack tk\nauth required pam_env.so \\\n  user_readenv=1\n",
			"tk":    "-session [success=ok default=ignore] pam_exec.so stdout /usr/bin/tokend-pam\n",
			"other": "session include tk\n",
		}, Warn, "sshd run tokend"},
		{"commented out", map[string]string{"sshd": "# session optional pam_exec.so /usr/bin/tokend session\nsession required pam_env.so user_readenv=0\n"}, "", ""},
		{"an include loop", map[string]string{"a": "@include b\nsession optional pam_exec.so /usr/bin/tokend-pam\n", "b": "@include a\n"}, OK, "a, b run"},
	} {
		c, ok := pamHook(pamDir(t, tc.files))
		if ok != (tc.status != "") || c.Status != tc.status || !strings.Contains(c.Detail, tc.detail) {
			t.Errorf("%s: %v %+v", tc.name, ok, c)
		}
	}
}
