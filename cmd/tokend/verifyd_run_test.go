package main

// `tokend verifyd`'s command line, run in the test process: flags over the
// configuration file, exit codes, and a clean stop. The end-to-end tests
// with a real verifyd process and agents are in verifyd_test.go.

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// verifydKeys makes a password directory holding a POOL key owned by this
// process, and a token signed with it.
func verifydKeys(t *testing.T) (dir string, tok []byte) {
	t.Helper()
	dir = t.TempDir()
	file := keys.NewFile()
	if err := keys.Write(filepath.Join(dir, token.PoolKeyName), file); err != nil {
		t.Fatal(err)
	}
	tok, err := keys.Sign(file, token.PoolKeyName, token.Claims{Issuer: "test.example", Subject: "u@test.example", Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return dir, tok
}

// noHarden leaves the test process debuggable while verifyd runs in it.
func noHarden(t *testing.T) {
	old := harden
	harden = func() error { return nil }
	t.Cleanup(func() { harden = old })
}

func TestVerifydRun(t *testing.T) {
	noHarden(t)
	keys, tok := verifydKeys(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "verify.sock")
	cfg := filepath.Join(t.TempDir(), "verifyd.toml")
	// The file names another socket, directory and trust domain; the
	// flags win.
	conf := "socket = \"" + filepath.Join(dir, "other.sock") + "\"\npassword_dir = \"/nonexistent\"\ntrust_domain = \"file.example\"\nrate = 1000.0\nburst = 1000\nrefetch_rate = 250\nlog_level = \"debug\"\n"
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncbuf.Buffer
	code := make(chan int, 1)
	go func() {
		code <- runVerifyd(ctx, []string{"--config", cfg, "--socket", sock, "--password-dir", keys, "--trust-domain", "test.example"}, &stdout, &stderr)
	}()
	c := verifyapi.NewClient(sock)
	defer c.Close()
	testenv.Eventually(t, 10*time.Second, "verifyd to answer on its socket", func() bool {
		_, err := c.Generation(ctx)
		return err == nil
	})
	r, err := c.Verify(ctx, tok)
	if err != nil || r.Reason != token.Valid || r.Generation != 1 || r.TrustDomain != "test.example" || r.CannotTell != "" {
		t.Fatalf("Verify through runVerifyd: %+v, %v; want valid, for trust domain test.example", r, err)
	}
	if at, err := c.RefetchSlot(ctx, verifyapi.RefetchSlotRequest{Generation: r.Generation}); err != nil || time.Until(at) > time.Second {
		t.Fatalf("RefetchSlot through runVerifyd: %v, %v; want a slot at once", at, err)
	}
	cancel()
	select {
	case n := <-code:
		if n != exitOK {
			t.Fatalf("verifyd exited %d:\n%s", n, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("verifyd did not stop with its context")
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Fatal("verifyd left its socket behind")
	}
	if !strings.Contains(stderr.String(), "level=DEBUG") {
		t.Fatalf("log_level from the file was not used:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "refetch_rate=250") {
		t.Fatalf("refetch_rate from the file was not used:\n%s", stderr.String())
	}
}

func TestVerifydRunErrors(t *testing.T) {
	noHarden(t)
	keys, _ := verifydKeys(t)
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		n := runVerifyd(context.Background(), args, &stdout, &stderr)
		return n, stdout.String(), stderr.String()
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("sockett = \"x\"\n"), 0o644)
	if n, _, e := run("--config", bad, "--password-dir", keys); n != exitUsage || !strings.Contains(e, "sockett") {
		t.Fatalf("unknown config key: exit %d, %s", n, e)
	}
	// The agent's loader: the key meant is suggested, the file and line named.
	if _, _, e := run("--config", bad, "--password-dir", keys); !strings.Contains(e, `did you mean "socket"?`) || !strings.Contains(e, bad) {
		t.Fatalf("unknown config key without a suggestion: %s", e)
	}
	os.WriteFile(bad, []byte("rate = -1.0\n"), 0o644)
	if n, _, e := run("--config", bad, "--password-dir", keys); n != exitUsage || !strings.Contains(e, bad+": rate = -1") {
		t.Fatalf("bad rate in the file: exit %d, %s", n, e)
	}
	os.WriteFile(bad, []byte("refetch_rate = 0\n"), 0o644)
	if n, _, e := run("--config", bad, "--password-dir", keys); n != exitUsage || !strings.Contains(e, bad+": refetch_rate = 0: want a number of refetches per second") {
		t.Fatalf("bad refetch_rate in the file: exit %d, %s", n, e)
	}
	if n, _, e := run("--config", filepath.Join(t.TempDir(), "missing.toml")); n != exitUsage || !strings.Contains(e, "no such file") {
		t.Fatalf("missing config file: exit %d, %s", n, e)
	}
	if n, _, _ := run("--bogus"); n != exitUsage {
		t.Fatalf("bad flag: exit %d", n)
	}
	if n, _, _ := run("extra"); n != exitUsage {
		t.Fatalf("extra argument: exit %d", n)
	}
	if n, out, _ := run("--help"); n != exitOK || !strings.Contains(out, "usage: tokend verifyd") {
		t.Fatalf("--help: exit %d, %q", n, out)
	}
	empty := filepath.Join(t.TempDir(), "empty.toml")
	os.WriteFile(empty, nil, 0o644)
	if n, _, e := run("--config", empty, "--password-dir", filepath.Join(t.TempDir(), "none"), "--socket", filepath.Join(t.TempDir(), "s")); n != exitFailure || !strings.Contains(e, "does not exist") {
		t.Fatalf("missing password dir: exit %d, %s", n, e)
	}
	if n, _, e := run("--config", empty, "--password-dir", keys, "--log-level", "loud"); n != exitUsage || !strings.Contains(e, "log level") {
		t.Fatalf("bad log level: exit %d, %s", n, e)
	}
	if n, _, e := run("--config", empty, "--password-dir", keys, "--trust-domain", "a b"); n != exitUsage || !strings.Contains(e, `trust_domain = "a b": want an issuer name`) {
		t.Fatalf("bad trust domain: exit %d, %s", n, e)
	}
}
