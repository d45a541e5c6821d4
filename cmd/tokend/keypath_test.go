package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// verifyd follows a key's symlink into a directory only root can change
// (as sites mount keys, Kubernetes secrets among them), and refuses one
// into a directory anyone can write to, saying why in its log.
func TestVerifydKeySymlinks(t *testing.T) {
	v := newVerifyd(t)
	root := filepath.Dir(v.keys) // root's, mode 0711
	writeRootKey(t, filepath.Join(v.keys, "POOL"), newKeyFile())
	for name, mode := range map[string]os.FileMode{"secret": 0o755, "shared": 0o777} {
		dir := filepath.Join(root, name)
		if err := os.Mkdir(dir, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		writeRootKey(t, filepath.Join(dir, "key"), newKeyFile())
	}
	if err := os.Symlink("../secret/key", filepath.Join(v.keys, "LINKED")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "shared", "key"), filepath.Join(v.keys, "SHARED")); err != nil {
		t.Fatal(err)
	}
	v.start()
	var loaded string
	for line := range strings.SplitSeq(v.log.String(), "\n") {
		if strings.Contains(line, "signing keys loaded") {
			loaded = line
		}
	}
	if !strings.Contains(loaded, "LINKED") || !strings.Contains(loaded, "POOL") || strings.Contains(loaded, "SHARED") {
		t.Errorf("verifyd loaded the wrong keys: %s\n%s", loaded, v.log)
	}
	if log := v.log.String(); !strings.Contains(log, "key file left out") || !strings.Contains(log, filepath.Join(root, "shared")+" is writable by others (mode 0777)") {
		t.Errorf("verifyd's log does not say why SHARED was left out:\n%s", log)
	}
}
