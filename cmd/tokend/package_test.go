package main

// Installation: `make install` into a staging directory; the Debian
// package built by `make deb`, installed, reinstalled, removed and purged on
// this machine; and the Enterprise Linux package built by `make rpm`,
// checked with rpm's tools and installed into a scratch root.

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
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
	testenv.BuildLauncher(t) // beside it, where make install looks
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
		"usr/local/share/doc/tokend/LICENSE":                  0o644,
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
	testenv.RequireRoot(t, "it builds and installs the package into a root-owned tree")
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
		"/usr/share/doc/tokend/copyright":                0o644,
		"/etc/tokend/config.toml":                        0o644,
	}
	for path, mode := range files {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want mode %v", path, st.Mode(), err, mode)
		}
	}
	if data, _ := os.ReadFile("/usr/share/doc/tokend/copyright"); !strings.Contains(string(data), "The tokend authors") || !strings.Contains(string(data), "Apache License\n                           Version 2.0") {
		t.Errorf("/usr/share/doc/tokend/copyright does not hold the Apache-2.0 license and its copyright:\n%.200s", data)
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

// rpmArch is rpm's name for GOARCH.
var rpmArch = map[string]string{"amd64": "x86_64", "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x"}

// rpmFile is one file of an rpm as `rpm -qp` reports it.
type rpmFile struct {
	perms, owner, flags string
}

// The Enterprise Linux package built by `make rpm`, checked with rpm's own
// tools on this Debian machine: what it holds, with which modes and flags,
// what it requires, its scriptlets (run against a stub systemctl), an
// install, reinstall and erase in a scratch root, and rpmlint.
func TestRPMPackage(t *testing.T) {
	testenv.RequireRoot(t, "it builds the package and installs it into a scratch root")
	for _, tool := range []string{"rpm", "rpmlint", "make", "objdump"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: apt-get install -y rpm rpmlint binutils make (.ci/setup does)", tool)
		}
	}
	arch, ok := rpmArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no rpm architecture name known for %s", runtime.GOARCH)
	}
	work := t.TempDir()
	bin := filepath.Join(work, "tokend")
	if out, err := exec.Command("make", "-C", testenv.ModuleRoot(t), "--no-print-directory", "rpm",
		"BIN="+bin, "DISTDIR="+filepath.Join(work, "dist"), "RPM_VERSION=0.0.0~test").CombinedOutput(); err != nil {
		t.Fatalf("make rpm (it runs nfpm from the Go module proxy, so it needs the network or a filled module cache): %v\n%s", err, out)
	}
	pkg := filepath.Join(work, "dist", "tokend-0.0.0~test-1."+arch+".rpm")
	query := func(format string) string {
		t.Helper()
		return mustRun(t, "rpm", "-qp", "--qf", format, pkg)
	}

	if got, want := query("%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE}"), "tokend 0.0.0~test 1 "+arch+" Apache-2.0"; got != want {
		t.Errorf("rpm header: %q, want %q", got, want)
	}

	// Requires: fuse3, and the glibc the binary was linked against (as
	// rpmbuild would add), so that dnf refuses it where glibc is older.
	requires := strings.Fields(mustRun(t, "rpm", "-qp", "--requires", pkg))
	want := []string{"fuse3"}
	if v := glibcNeeded(t, bin); v != "" {
		want = append(want, "libc.so.6("+v+")(64bit)")
	}
	if !slices.Equal(requires, want) {
		t.Errorf("requires %q, want %q", requires, want)
	}

	// Every file, with mode, owner and flags (c: %config, n: noreplace,
	// d: %doc, l: %license); no Debian-only file.
	files := map[string]rpmFile{}
	for line := range strings.Lines(query("[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags}. %{FILENAMES}\n]")) {
		f := strings.Fields(line)
		if len(f) != 4 {
			t.Fatalf("rpm -qp line %q", line)
		}
		files[f[3]] = rpmFile{f[0], f[1], strings.TrimSuffix(f[2], ".")}
	}
	wantFiles := map[string]rpmFile{
		"/usr/bin/tokend":                                {"-rwxr-xr-x", "root:root", ""},
		"/usr/bin/tokend-pam":                            {"-rwxr-xr-x", "root:root", ""},
		"/usr/lib/systemd/user/tokend.service":           {"-rw-r--r--", "root:root", ""},
		"/usr/lib/systemd/system/tokend-verifyd.service": {"-rw-r--r--", "root:root", ""},
		"/usr/lib/systemd/system/tokend-verifyd.socket":  {"-rw-r--r--", "root:root", ""},
		"/usr/share/tokend":                              {"drwxr-xr-x", "root:root", ""},
		"/usr/share/tokend/pam-session":                  {"-rw-r--r--", "root:root", ""},
		"/usr/share/man/man1/tokend.1.gz":                {"-rw-r--r--", "root:root", "d"},
		"/usr/share/bash-completion/completions/tokend":  {"-rw-r--r--", "root:root", ""},
		"/usr/share/doc/tokend":                          {"drwxr-xr-x", "root:root", ""},
		"/usr/share/doc/tokend/README.md":                {"-rw-r--r--", "root:root", "d"},
		"/usr/share/doc/tokend/admin.md":                 {"-rw-r--r--", "root:root", "d"},
		"/usr/share/doc/tokend/user.md":                  {"-rw-r--r--", "root:root", "d"},
		"/usr/share/licenses/tokend":                     {"drwxr-xr-x", "root:root", ""},
		"/usr/share/licenses/tokend/LICENSE":             {"-rw-r--r--", "root:root", "l"},
		"/etc/tokend":                                    {"drwxr-xr-x", "root:root", ""},
		"/etc/tokend/config.toml":                        {"-rw-r--r--", "root:root", "cn"},
	}
	if !maps.Equal(files, wantFiles) {
		for p, f := range files {
			if w, ok := wantFiles[p]; !ok {
				t.Errorf("unexpected file in the rpm: %s %+v", p, f)
			} else if f != w {
				t.Errorf("%s: %+v, want %+v", p, f, w)
			}
		}
		for p := range wantFiles {
			if _, ok := files[p]; !ok {
				t.Errorf("the rpm lacks %s", p)
			}
		}
	}

	t.Run("scriptlets", func(t *testing.T) { testRPMScriptlets(t, pkg) })
	t.Run("install", func(t *testing.T) { testRPMInstall(t, pkg) })
	t.Run("rpmlint", func(t *testing.T) { testRPMLint(t, pkg) })
}

// glibcNeeded is the newest GLIBC_ symbol version bin needs, "" if none (a
// static binary).
func glibcNeeded(t *testing.T, bin string) string {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		t.Fatal(err)
	}
	newest, best := "", []int(nil)
	for _, s := range syms {
		v, ok := strings.CutPrefix(s.Version, "GLIBC_")
		if !ok {
			continue
		}
		var parts []int
		for p := range strings.SplitSeq(v, ".") {
			n, err := strconv.Atoi(p)
			if err != nil {
				t.Fatalf("symbol version %q", s.Version)
			}
			parts = append(parts, n)
		}
		if slices.Compare(parts, best) > 0 {
			newest, best = s.Version, parts
		}
	}
	return newest
}

// The scriptlets, as rpm runs them (sh, $1 the count of this package's
// versions after the step), against a systemctl that records its calls:
// they reload systemd, restart a running verifyd on upgrade, undo every
// enablement on erase, and never enable or start anything.
func testRPMScriptlets(t *testing.T, pkg string) {
	exclusive(t) // the erase's rmdir /run/tokend
	scripts := mustRun(t, "rpm", "-qp", "--scripts", pkg)
	var kinds []string
	for line := range strings.Lines(scripts) {
		if kind, ok := strings.CutSuffix(strings.TrimSpace(line), " scriptlet (using /bin/sh):"); ok {
			kinds = append(kinds, kind)
		}
	}
	if want := []string{"postinstall", "preuninstall", "postuninstall"}; !slices.Equal(kinds, want) {
		t.Errorf("scriptlets %q, want %q:\n%s", kinds, want, scripts)
	}
	body := map[string]string{}
	for _, tag := range []string{"POSTIN", "PREUN", "POSTUN"} {
		body[tag] = mustRun(t, "rpm", "-qp", "--qf", "%{"+tag+"}", pkg)
	}

	stub := t.TempDir()
	calls := filepath.Join(stub, "calls")
	systemctl := filepath.Join(stub, "systemctl")
	writeStub := func(exit int) {
		script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >>'%s'\nexit %d\n", calls, exit)
		if err := os.WriteFile(systemctl, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run := func(tag string, count int) (out string, called []string) {
		t.Helper()
		os.Remove(calls)
		cmd := exec.Command("bash", "-c", body[tag], tag, strconv.Itoa(count))
		cmd.Env = append(os.Environ(), "PATH="+stub+":"+os.Getenv("PATH"))
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s with $1=%d: %v\n%s", tag, count, err, b)
		}
		data, _ := os.ReadFile(calls)
		for line := range strings.Lines(string(data)) {
			called = append(called, strings.TrimSpace(line))
		}
		return string(b), called
	}

	writeStub(0)
	// Install: %post 1.
	out, called := run("POSTIN", 1)
	if !slices.Equal(called, []string{"daemon-reload"}) {
		t.Errorf("install (%%post 1) called systemctl %q, want only daemon-reload", called)
	}
	for _, want := range []string{"systemctl --global enable tokend.service", "admin.md", "systemctl enable --now tokend-verifyd.socket"} {
		if !strings.Contains(out, want) {
			t.Errorf("the install does not say how to turn tokend on (%q):\n%s", want, out)
		}
	}
	// Upgrade: the new %post 2, then the old %preun 1 and %postun 1.
	if out, called := run("POSTIN", 2); !slices.Equal(called, []string{"daemon-reload"}) || out != "" {
		t.Errorf("upgrade (%%post 2) called systemctl %q and said %q", called, out)
	}
	if _, called := run("PREUN", 1); len(called) != 0 {
		t.Errorf("upgrade (%%preun 1) called systemctl %q", called)
	}
	if _, called := run("POSTUN", 1); !slices.Equal(called, []string{"try-restart tokend-verifyd.service"}) {
		t.Errorf("upgrade (%%postun 1) called systemctl %q, want try-restart tokend-verifyd.service", called)
	}
	// Erase: %preun 0 and %postun 0; the socket's directory goes if empty.
	wantErase := []string{
		"--no-reload disable --now tokend-verifyd.socket tokend-verifyd.service",
		"--global disable tokend.service",
	}
	if _, called := run("PREUN", 0); !slices.Equal(called, wantErase) {
		t.Errorf("erase (%%preun 0) called systemctl %q, want %q", called, wantErase)
	}
	madeRun := os.Mkdir("/run/tokend", 0o755) == nil
	if _, called := run("POSTUN", 0); !slices.Equal(called, []string{"daemon-reload"}) {
		t.Errorf("erase (%%postun 0) called systemctl %q, want daemon-reload", called)
	}
	if _, err := os.Stat("/run/tokend"); madeRun && !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("erase left the empty /run/tokend")
	}

	// Where systemctl fails (a container, an image build), every step
	// still succeeds.
	writeStub(1)
	for _, step := range []struct {
		tag   string
		count int
	}{{"POSTIN", 1}, {"POSTIN", 2}, {"PREUN", 0}, {"POSTUN", 1}, {"POSTUN", 0}} {
		run(step.tag, step.count)
	}
}

// The package installs into a scratch root, its binary runs, a reinstall
// keeps an edited config, and an erase removes everything else, saving the
// edited config as rpm does.
func testRPMInstall(t *testing.T, pkg string) {
	root := t.TempDir()
	rpmIn := func(args ...string) string {
		t.Helper()
		return mustRun(t, "rpm", append([]string{"--root", root, "--nodeps", "--noscripts"}, args...)...)
	}
	rpmIn("-i", pkg)
	if out := mustRun(t, "rpm", "--root", root, "--nodeps", "-V", "tokend"); strings.TrimSpace(out) != "" {
		t.Errorf("rpm -V after install:\n%s", out)
	}
	if out := mustRun(t, filepath.Join(root, "usr/bin/tokend"), "version"); !strings.HasPrefix(out, "tokend ") {
		t.Errorf("the installed tokend version: %q", out)
	}
	cfgPath := filepath.Join(root, "etc/tokend/config.toml")
	cfg, err := config.Load(cfgPath)
	if err != nil || !reflect.DeepEqual(cfg, config.Default()) {
		t.Errorf("the installed config is not the defaults: %v\n%+v", err, cfg)
	}

	edited := "legacy = \"move\"\n"
	os.WriteFile(cfgPath, []byte(edited), 0o644)
	rpmIn("-U", "--replacepkgs", pkg)
	if data, _ := os.ReadFile(cfgPath); string(data) != edited {
		t.Errorf("a reinstall replaced the edited config: %q", data)
	}

	rpmIn("-e", "tokend")
	var left []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(root, p)
		if err == nil && !d.IsDir() && !strings.Contains(rel, "rpmdb") && !strings.HasPrefix(filepath.Base(rel), ".rpm") {
			left = append(left, rel)
		}
		return nil
	})
	if !slices.Equal(left, []string{"etc/tokend/config.toml.rpmsave"}) {
		t.Errorf("after rpm -e: %q, want only the edited config saved", left)
	}
	for _, dir := range []string{"usr/share/tokend", "usr/share/doc/tokend", "usr/share/licenses/tokend"} {
		if _, err := os.Stat(filepath.Join(root, dir)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("rpm -e left the directory /%s", dir)
		}
	}
}

// rpmlint finds nothing but the missing signature of a local build
// (packaging/rpmlintrc filters its false positives). It runs as an ordinary
// user with a cpio that strips leading slashes: nfpm writes absolute paths
// into the payload, and rpmlint unpacks it with a bare `cpio -i`, which as
// root would write the package's files into /.
func testRPMLint(t *testing.T, pkg string) {
	u := testenv.Lookup(t, testenv.UserName)
	dir := testenv.Dir(t, u)
	safe := filepath.Join(dir, "bin")
	if err := os.Mkdir(safe, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(safe, "cpio"), []byte("#!/bin/sh\nexec /usr/bin/cpio --no-absolute-filenames \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(dir, filepath.Base(pkg))
	if data, err := os.ReadFile(pkg); err != nil || os.WriteFile(local, data, 0o644) != nil {
		t.Fatalf("copy the rpm for the test user: %v", err)
	}
	rc := filepath.Join(testenv.ModuleRoot(t), "packaging", "rpmlintrc")
	rcLocal := filepath.Join(dir, "rpmlintrc")
	if data, err := os.ReadFile(rc); err != nil || os.WriteFile(rcLocal, data, 0o644) != nil {
		t.Fatalf("copy %s for the test user: %v", rc, err)
	}
	cmd := testenv.Command(u, "rpmlint", "-r", rcLocal, local)
	cmd.Dir = dir
	cmd.Env = append(cmd.Env, "TMPDIR="+dir)
	for i, e := range cmd.Env {
		if p, ok := strings.CutPrefix(e, "PATH="); ok {
			cmd.Env[i] = "PATH=" + safe + ":" + p
		}
	}
	b, _ := cmd.CombinedOutput() // exits 64 for the missing signature
	out := string(b)
	var findings []string
	for line := range strings.Lines(out) {
		if strings.Contains(line, ": E: ") || strings.Contains(line, ": W: ") {
			findings = append(findings, strings.TrimSpace(line))
		}
	}
	if want := []string{"tokend." + rpmArch[runtime.GOARCH] + ": E: no-signature"}; !slices.Equal(findings, want) {
		t.Errorf("rpmlint found %q, want only %q:\n%s", findings, want, out)
	}
	if !strings.Contains(out, "1 packages and 0 specfiles checked") {
		t.Errorf("rpmlint did not check the package:\n%s", out)
	}
	if _, err := os.Stat("/usr/share/licenses/tokend"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("/usr/share/licenses/tokend exists: something unpacked the rpm into /")
	}
}

// The packages' version (the Makefile's PKG_VERSION) orders for upgrades in
// rpm and dpkg alike, along a history: commits before any tag, a release
// candidate, commits after it, the release, commits after that.
func TestPackageVersionOrders(t *testing.T) {
	for _, tool := range []string{"rpm", "dpkg", "git", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: apt-get install -y rpm dpkg git make (.ci/setup does)", tool)
		}
	}
	repo := t.TempDir()
	makefile, err := os.ReadFile(filepath.Join(testenv.ModuleRoot(t), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "Makefile"), makefile, 0o644); err != nil {
		t.Fatal(err)
	}
	day := 0
	git := func(args ...string) {
		t.Helper()
		when := fmt.Sprintf("2024-01-%02dT12:00:00Z", max(day, 1))
		cmd := exec.Command("git", append([]string{"-C", repo}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.org",
			"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.org", "GIT_AUTHOR_DATE="+when, "GIT_COMMITTER_DATE="+when)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	commits := func(n int) {
		t.Helper()
		for range n {
			day++
			git("commit", "-q", "--allow-empty", "-m", "change")
		}
	}
	version := func() string {
		t.Helper()
		return strings.TrimSpace(mustRun(t, "make", "-s", "-C", repo, "--no-print-directory", "--eval", "pkg-version: ; @echo $(PKG_VERSION)", "pkg-version"))
	}
	git("init", "-q")
	var history []string
	commits(1)
	history = append(history, version())
	commits(1)
	history = append(history, version())
	git("tag", "v0.1.0-rc1")
	history = append(history, version())
	commits(1)
	history = append(history, version())
	git("tag", "v0.1.0")
	history = append(history, version())
	commits(2)
	history = append(history, version())
	commits(8)
	history = append(history, version())
	git("tag", "v0.2.0")
	history = append(history, version())

	for i, want := range map[int]string{0: "0.0~git20240101120000.", 2: "0.1.0~rc1", 3: "0.1.0~rc1+1.g", 4: "0.1.0", 5: "0.1.0+2.g", 6: "0.1.0+10.g", 7: "0.2.0"} {
		if !strings.HasPrefix(history[i], want) {
			t.Errorf("version %d is %q, want %s…", i, history[i], want)
		}
	}
	for i := 1; i < len(history); i++ {
		a, b := history[i-1], history[i]
		if got := strings.TrimSpace(mustRun(t, "rpm", "--eval", fmt.Sprintf("%%{lua:print(rpm.vercmp(%q, %q))}", a, b))); got != "-1" {
			t.Errorf("rpm orders %s and %s as %s, want -1 (older first)", a, b, got)
		}
		if err := exec.Command("dpkg", "--compare-versions", a, "lt", b).Run(); err != nil {
			t.Errorf("dpkg does not order %s before %s", a, b)
		}
	}
	t.Logf("versions: %q", history)
}
