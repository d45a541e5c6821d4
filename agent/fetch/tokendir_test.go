package fetch

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/secmem"
)

// tokenDirScript records what the command finds as its token directory:
// the path, its mode, its files and their contents; it keeps a hard link
// to each file (to see them zeroed afterwards), then prints the token.
const tokenDirScript = `
T="$_CONDOR_SEC_TOKEN_DIRECTORY"
echo "$T" > "$D/tokdir"
stat -c %a "$T" > "$D/mode"
ls -A "$T" > "$D/listing"
for f in "$T"/*; do [ -f "$f" ] && cat "$f" >> "$D/contents" && ln "$f" "$D/link-$(basename "$f")"; done
cat "$D/token"`

func readString(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wiped(b *secmem.Buffer) (gone bool) {
	defer func() { gone = recover() != nil }()
	b.Bytes()
	return false
}

// The fetch command gets a token directory of its own: empty for this
// host's schedd, the pool's shown tokens for another; zeroed and removed
// when it exits; never the mount.
func TestTokenDir(t *testing.T) {
	tok := testToken(t)
	shown := []string{"a-token", "tokend-other"}
	for _, tc := range []struct {
		name   string
		method string
		opts   Options
		want   []string // files the command finds
	}{
		{name: "local schedd", method: "exec"},
		{name: "remote pool", method: "exec", opts: Options{Pool: "cm.example:9618"}, want: shown},
		{name: "named schedd", method: "exec", opts: Options{Name: "ap1.example"}, want: shown},
		{name: "request, remote", method: "request", opts: Options{Pool: "cm.example"}, want: shown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := tokenDirScript
			if tc.method == "request" {
				script = "echo 'Token request enqueued.  Ask an administrator to please approve request 42.'\n" + tokenDirScript
			}
			s := newStandIn(t, "condor_token_fetch", script, tok)
			var given []*secmem.Buffer
			calls := 0
			o := tc.opts
			o.Method, o.Command, o.TokenDir = tc.method, []string{s.path}, t.TempDir()
			o.Tokens = func() []TokenFile {
				calls++
				var files []TokenFile
				for _, name := range shown {
					b, err := secmem.From([]byte(name + "-content\n"))
					if err != nil {
						t.Fatal(err)
					}
					given = append(given, b)
					files = append(files, TokenFile{Name: name, Content: b})
				}
				return files
			}
			f, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			got, err := f.Fetch(context.Background(), Request{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer got.Wipe()
			if !bytes.Equal(got.Bytes(), tok) {
				t.Fatal("wrong token")
			}

			dir := strings.TrimSpace(readString(t, filepath.Join(s.dir, "tokdir")))
			if filepath.Dir(dir) != o.TokenDir || !strings.HasPrefix(filepath.Base(dir), "tokend-fetch-") {
				t.Fatalf("token directory %q, want one under %s", dir, o.TokenDir)
			}
			if mode := strings.TrimSpace(readString(t, filepath.Join(s.dir, "mode"))); mode != "700" {
				t.Errorf("token directory mode %s, want 700", mode)
			}
			listing := strings.Fields(readString(t, filepath.Join(s.dir, "listing")))
			if strings.Join(listing, " ") != strings.Join(tc.want, " ") {
				t.Errorf("the command found %v, want %v", listing, tc.want)
			}
			if tc.want == nil && calls != 0 {
				t.Error("the pool's tokens were asked for a local schedd")
			}
			var contents string
			for _, name := range tc.want {
				contents += name + "-content\n"
			}
			if c, _ := os.ReadFile(filepath.Join(s.dir, "contents")); string(c) != contents {
				t.Errorf("contents %q, want %q", c, contents)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("the token directory is left: %v", err)
			}
			for _, name := range tc.want {
				link, _ := os.ReadFile(filepath.Join(s.dir, "link-"+name))
				if len(link) == 0 || !bytes.Equal(link, make([]byte, len(link))) {
					t.Errorf("%s was not zeroed: %q", name, link)
				}
			}
			for i, b := range given {
				if !wiped(b) {
					t.Errorf("the buffer of %s was not wiped", shown[i])
				}
			}
		})
	}
}

// Without a place in memory for the pool's tokens, the fetch fails and
// says why; with none to give, it goes on with an empty directory.
func TestTokenDirNoRuntimeDir(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "")
	defer func(old string) { runUser = old }(runUser)
	runUser = filepath.Join(t.TempDir(), "none")
	tok := testToken(t)
	s := newStandIn(t, "condor_token_fetch", tokenDirScript, tok)
	var b *secmem.Buffer
	f, err := New(Options{Command: []string{s.path}, Pool: "cm.example", Tokens: func() []TokenFile {
		b, _ = secmem.From([]byte("x\n"))
		return []TokenFile{{Name: "x", Content: b}}
	}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Fetch(context.Background(), Request{}, nil)
	if err == nil || !strings.Contains(err.Error(), "no $XDG_RUNTIME_DIR to hold the pool's tokens") {
		t.Fatalf("err = %v", err)
	}
	if !wiped(b) {
		t.Error("the token buffer was not wiped")
	}

	f, err = New(Options{Command: []string{s.path}, Tokens: func() []TokenFile { t.Error("tokens asked for a local schedd"); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.Fetch(context.Background(), Request{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got.Wipe()
	if l := readString(t, filepath.Join(s.dir, "listing")); l != "" {
		t.Errorf("the empty directory held %q", l)
	}
}
