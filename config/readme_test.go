package config

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"testing"
)

// The README's config block is the defaults, key for key: users copy it.
func TestReadmeConfigIsTheDefault(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```toml\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no ```toml block")
	}
	file := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(file, m[1], 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(file)
	if err != nil {
		t.Fatalf("the README's config block does not load: %v", err)
	}
	if want := Default(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("the README's config block is not the default:\n got %+v\nwant %+v", cfg, want)
	}
}
