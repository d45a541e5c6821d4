package main

// Installation: `make install` into a staging directory, and the Debian
// package built by `make deb`, installed, reinstalled, removed and purged on
// this machine.

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/testenv"
)

// The installed /etc/tokend/config.toml is config.Example(), kept in the
// tree so that installing needs no Go toolchain.
func TestPackagedConfigIsTheExample(t *testing.T) {
	path := filepath.Join(testenv.ModuleRoot(t), "packaging", "config.toml")
	if os.Getenv("TOKEND_UPDATE_PACKAGING") != "" {
		if err := os.WriteFile(path, []byte(config.Example()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != config.Example() {
		t.Fatal("packaging/config.toml differs from config.Example(): regenerate it with\n" +
			"  TOKEND_UPDATE_PACKAGING=1 go test -run TestPackagedConfigIsTheExample ./cmd/tokend")
	}
}

// runMake runs make in the module root.
func runMake(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-C", testenv.ModuleRoot(t), "--no-print-directory"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// make install puts every file in its place under PREFIX, rewrites the
// binary's path in the units and the PAM line, and keeps an existing
// config.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is missing: apt-get install -y make")
	}
	bin := testenv.Build(t, "./cmd/tokend")
	testenv.BuildStatic(t, "./cmd/tokend-pam") // beside it, where make install looks
	dest := t.TempDir()
	out := runMake(t, "install", "DESTDIR="+dest, "BIN="+bin)
	want := map[string]os.FileMode{
		"usr/local/bin/tokend":                                0o755,
		"usr/local/bin/tokend-pam":                            0o755,
		"usr/local/lib/systemd/system/tokend-verifyd.service": 0o644,
		"usr/local/lib/systemd/system/tokend-verifyd.socket":  0o644,
		"usr/local/lib/systemd/user/tokend.service":           0o644,
		"usr/local/share/tokend/pam-session":                  0o644,
		"usr/local/share/man/man1/tokend.1.gz":                0o644,
		"usr/local/share/bash-completion/completions/tokend":  0o644,
		"usr/local/share/doc/tokend/admin.md":                 0o644,
		"usr/local/share/doc/tokend/user.md":                  0o644,
		"usr/local/share/doc/tokend/README.md":                0o644,
		"etc/tokend/config.toml":                              0o644,
	}
	var got []string
	filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dest, p)
			got = append(got, rel)
			info, _ := d.Info()
			if mode, ok := want[rel]; !ok {
				t.Errorf("make install put an unexpected file %s", rel)
			} else if info.Mode().Perm() != mode {
				t.Errorf("%s: mode %v, want %v", rel, info.Mode().Perm(), mode)
			}
		}
		return nil
	})
	if len(got) != len(want) {
		t.Errorf("make install put %d files, want %d: %v", len(got), len(want), got)
	}
	for f, name := range map[string]string{
		"usr/local/lib/systemd/user/tokend.service":           "/usr/local/bin/tokend ",
		"usr/local/lib/systemd/system/tokend-verifyd.service": "/usr/local/bin/tokend ",
		"usr/local/share/tokend/pam-session":                  "pam_exec.so quiet stdout /usr/local/bin/tokend-pam\n",
	} {
		data, _ := os.ReadFile(filepath.Join(dest, f))
		if !strings.Contains(string(data), name) || strings.Contains(string(data), "/usr/bin/tokend") {
			t.Errorf("%s does not name %q", f, name)
		}
	}
	if !strings.Contains(out, "systemctl --global enable tokend.service") {
		t.Errorf("make install does not say what to do next:\n%s", out)
	}

	// An administrator's config survives a second install.
	cfg := filepath.Join(dest, "etc", "tokend", "config.toml")
	os.WriteFile(cfg, []byte("legacy = \"move\"\n"), 0o644)
	out = runMake(t, "install", "DESTDIR="+dest, "BIN="+bin)
	if data, _ := os.ReadFile(cfg); string(data) != "legacy = \"move\"\n" || !strings.Contains(out, "kept") {
		t.Errorf("a second make install replaced the config: %q\n%s", data, out)
	}

	// Without a built binary, it says what to do.
	cmd := exec.Command("make", "-C", testenv.ModuleRoot(t), "install", "DESTDIR="+dest, "BIN="+filepath.Join(dest, "missing"))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "run make build first") {
		t.Errorf("make install without a binary: %v\n%s", err, out)
	}
}

func dpkgStatus(t *testing.T, pkg string) string {
	out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", pkg).CombinedOutput()
	if err != nil {
		return "not-installed"
	}
	return strings.TrimSpace(string(out))
}

// mustRun runs a command and returns its output, failing the test if it fails.
func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// pamConfig is every file under /etc/pam.d, to check that the package
// leaves the PAM configuration alone.
func pamConfig(t *testing.T) map[string]string {
	t.Helper()
	files := map[string]string{}
	entries, err := os.ReadDir("/etc/pam.d")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "tokend-test-") {
			continue // a PAM test's service
		}
		data, _ := os.ReadFile(filepath.Join("/etc/pam.d", e.Name()))
		files[e.Name()] = string(data)
	}
	return files
}

// The Debian package installs, reinstalls, removes and purges cleanly on
// this machine, turns nothing on by itself, and leaves nothing behind.
func TestDebianPackage(t *testing.T) {
	testenv.RequireRoot(t)
	exclusive(t)
	for _, tool := range []string{"dpkg", "dpkg-deb", "dpkg-query", "make", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: this test needs a Debian machine (.ci/setup)", tool)
		}
	}
	if st := dpkgStatus(t, "tokend"); st != "not-installed" && !strings.Contains(st, "not-installed") {
		t.Fatalf("the tokend package is on this machine (%s); this test installs and purges it: run dpkg --purge tokend first", st)
	}
	if _, err := os.Stat("/etc/tokend"); err == nil {
		t.Fatal("/etc/tokend exists without the package; this test would mix its files with it: move it away first")
	}

	// Build: make deb, with the binary and the output in a temporary
	// directory (nfpm comes from the Go module proxy).
	work := t.TempDir()
	if out, err := exec.Command("make", "-C", testenv.ModuleRoot(t), "--no-print-directory", "deb",
		"BIN="+filepath.Join(work, "tokend"), "DISTDIR="+filepath.Join(work, "dist"), "DEB_VERSION=0.0.0~test").CombinedOutput(); err != nil {
		t.Fatalf("make deb (it runs nfpm from the Go module proxy, so it needs the network or a filled module cache): %v\n%s", err, out)
	}
	deb := filepath.Join(work, "dist", "tokend_0.0.0~test_"+runtime.GOARCH+".deb")
	info := mustRun(t, "dpkg-deb", "--info", deb)
	for _, want := range []string{"Package: tokend", "Depends: fuse3", "conffiles", "postinst", "prerm", "postrm"} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}
	if conf := mustRun(t, "dpkg-deb", "--field", deb, "Architecture"); strings.TrimSpace(conf) != runtime.GOARCH {
		t.Errorf("package architecture %q, want %s", conf, runtime.GOARCH)
	}

	pamBefore := pamConfig(t)
	t.Cleanup(func() {
		if dpkgStatus(t, "tokend") != "not-installed" {
			exec.Command("dpkg", "--purge", "tokend").Run()
		}
		os.RemoveAll("/etc/tokend")
	})

	// Install.
	out := mustRun(t, "dpkg", "-i", deb)
	if !strings.Contains(out, "systemctl --global enable tokend.service") || !strings.Contains(out, "pam-auth-update --enable tokend") {
		t.Errorf("the install does not say how to turn tokend on:\n%s", out)
	}
	if st := dpkgStatus(t, "tokend"); st != "install ok installed" {
		t.Fatalf("after dpkg -i: %s", st)
	}
	files := map[string]os.FileMode{
		"/usr/bin/tokend":                                0o755,
		"/usr/bin/tokend-pam":                            0o755,
		"/usr/lib/systemd/user/tokend.service":           0o644,
		"/usr/lib/systemd/system/tokend-verifyd.service": 0o644,
		"/usr/lib/systemd/system/tokend-verifyd.socket":  0o644,
		"/usr/share/tokend/pam-session":                  0o644,
		"/usr/share/pam-configs/tokend":                  0o644,
		"/usr/share/man/man1/tokend.1.gz":                0o644,
		"/usr/share/bash-completion/completions/tokend":  0o644,
		"/usr/share/doc/tokend/admin.md":                 0o644,
		"/etc/tokend/config.toml":                        0o644,
	}
	for path, mode := range files {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want mode %v", path, st.Mode(), err, mode)
		}
	}
	if data, _ := os.ReadFile("/usr/share/pam-configs/tokend"); !strings.Contains(string(data), "pam_exec.so quiet stdout /usr/bin/tokend-pam\n") {
		t.Errorf("pam-auth-update's profile does not name the launcher:\n%s", data)
	}
	if out := mustRun(t, "/usr/bin/tokend", "version"); !strings.HasPrefix(out, "tokend ") {
		t.Errorf("tokend version: %q", out)
	}
	cfg, err := config.Load("/etc/tokend/config.toml")
	if err != nil || !reflect.DeepEqual(cfg, config.Default()) {
		t.Errorf("the installed config is not the defaults: %v\n%+v", err, cfg)
	}
	// The installed units pass verify, man page included.
	if out, err := exec.Command("systemd-analyze", "verify", "/usr/lib/systemd/system/tokend-verifyd.service", "/usr/lib/systemd/system/tokend-verifyd.socket").CombinedOutput(); err != nil || strings.Contains(string(out), "tokend") {
		t.Errorf("systemd-analyze verify of the installed system units: %v\n%s", err, out)
	}
	u := testenv.Lookup(t, testenv.UserName)
	cmd := testenv.Command(u, "systemd-analyze", "--user", "verify", "/usr/lib/systemd/user/tokend.service")
	cmd.Env = append(cmd.Env, "XDG_RUNTIME_DIR="+testenv.Dir(t, u))
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "tokend") {
		t.Errorf("systemd-analyze --user verify of the installed user unit: %v\n%s", err, out)
	}
	// Nothing turned on: no unit enabled, PAM untouched.
	assertNothingEnabled(t)
	assertPAMUnchanged(t, pamBefore)

	// Reinstall over itself; an administrator's edit of the config survives.
	os.WriteFile("/etc/tokend/config.toml", []byte("legacy = \"move\"\n"), 0o644)
	mustRun(t, "dpkg", "-i", deb)
	if data, _ := os.ReadFile("/etc/tokend/config.toml"); string(data) != "legacy = \"move\"\n" {
		t.Errorf("a reinstall replaced the edited config: %q", data)
	}

	// Remove: everything but the config goes, and what verifyd left in /run.
	madeRun := false
	if err := os.Mkdir("/run/tokend", 0o755); err == nil {
		madeRun = true
		os.WriteFile("/run/tokend/verify.sock", nil, 0o600)
	}
	mustRun(t, "dpkg", "-r", "tokend")
	if st := dpkgStatus(t, "tokend"); st != "deinstall ok config-files" {
		t.Errorf("after dpkg -r: %s", st)
	}
	for path := range files {
		_, err := os.Stat(path)
		if path == "/etc/tokend/config.toml" {
			if err != nil {
				t.Errorf("dpkg -r removed the config: %v", err)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("dpkg -r left %s", path)
		}
	}
	if _, err := os.Stat("/run/tokend"); madeRun && !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dpkg -r left /run/tokend")
	}
	assertPAMUnchanged(t, pamBefore)

	// Purge: the config goes too.
	mustRun(t, "dpkg", "--purge", "tokend")
	if st := dpkgStatus(t, "tokend"); st != "not-installed" && !strings.Contains(st, "not-installed") {
		t.Errorf("after dpkg --purge: %s", st)
	}
	if _, err := os.Stat("/etc/tokend"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dpkg --purge left /etc/tokend: %v", err)
	}
	assertNothingEnabled(t)
	assertPAMUnchanged(t, pamBefore)
}

func assertNothingEnabled(t *testing.T) {
	t.Helper()
	links, _ := filepath.Glob("/etc/systemd/*/*.wants/tokend*")
	if len(links) > 0 {
		t.Errorf("units enabled: %v", links)
	}
}

func assertPAMUnchanged(t *testing.T, before map[string]string) {
	t.Helper()
	after := pamConfig(t)
	if !reflect.DeepEqual(before, after) {
		for name, data := range after {
			if before[name] != data {
				t.Errorf("/etc/pam.d/%s changed", name)
			}
		}
		for name := range before {
			if _, ok := after[name]; !ok {
				t.Errorf("/etc/pam.d/%s removed", name)
			}
		}
	}
	for name, data := range after {
		if bytes.Contains([]byte(data), []byte("tokend")) {
			t.Errorf("/etc/pam.d/%s mentions tokend", name)
		}
	}
}
