package main

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/condor"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/mounttab"
	"github.com/tokend/tokend/token"
)

// The tools read the session token as the user; the file passes
// read_secure_file's owner and mode checks; HTCondor's writers work.
func TestAgentServesTheToolsAsUser(t *testing.T) {
	e := newEnv(t, nil)
	e.start()

	r := e.read()
	if len(r.Files) != 1 || filepath.Base(r.Files[0].Path) != "tokend-session" || r.Files[0].Err != "" {
		t.Fatalf("the tools read %+v", r.Files)
	}
	if err := token.VerifyWith([]byte(r.Pick), token.KeyDir{Dir: e.keys, WantUID: -1}); err != nil {
		t.Fatalf("the session token does not verify: %v", err)
	}
	var st syscall.Stat_t
	// Root cannot look inside; the owner and mode checks above ran as the user.
	if err := syscall.Stat(e.dir, &st); err != syscall.EACCES {
		t.Fatalf("root stat of the mount: %v, want EACCES", err)
	}

	extra := e.sign("user@test.example", time.Hour, "READ")
	if errno := e.write("write", "extra", extra); errno != "" {
		t.Fatalf("write_out_token: %s", errno)
	}
	older := e.sign("old@test.example", time.Hour)
	if errno := e.write("append", "appended", older); errno != "" {
		t.Fatalf("O_APPEND writer: %s", errno)
	}
	replacement := e.sign("user@test.example", 2*time.Hour)
	if errno := e.write("write", "extra", replacement); errno != "" {
		t.Fatalf("write_out_token over an existing file: %s", errno)
	}
	if errno := e.write("write", "extra", []byte("not a token")); errno != "EINVAL" {
		t.Fatalf("writing garbage: %q, want EINVAL", errno)
	}
	r = e.read()
	got := map[string][]string{}
	for _, f := range r.Files {
		if f.Err != "" {
			t.Fatalf("%s: %s", f.Path, f.Err)
		}
		got[filepath.Base(f.Path)] = f.Tokens
	}
	if !slices.Equal(got["extra"], []string{string(replacement)}) || !slices.Equal(got["appended"], []string{string(older)}) {
		t.Fatalf("after the writes the tools read %v", got)
	}
	names := []string{}
	for _, tok := range e.tokens(false) {
		names = append(names, tok.Name+":"+tok.Scope)
	}
	slices.Sort(names)
	if want := []string{"appended:", "extra:", "tokend-session:"}; !slices.Equal(names, want) {
		t.Fatalf("tokend list: %v, want %v", names, want)
	}
}

// Nobody but the owner gets in: not another user, not root.
func TestOthersAreRefused(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	other := testenv.Lookup(t, testenv.OtherName)
	// The mount point's parent must be reachable for the test to mean
	// anything: open the work directory to everyone for this test.
	os.Chmod(e.work, 0o711)
	var res map[string]string
	e.sim(other, &res, "", "access", e.dir, "tokend-session")
	// The kernel answers statfs for everyone with an empty stub (so that
	// df works); it carries nothing of the tokens.
	delete(res, "statfs")
	for op, errno := range res {
		if errno != "EACCES" {
			t.Errorf("another user: %s -> %q, want EACCES", op, errno)
		}
	}
	if len(res) < 10 {
		t.Fatalf("only %d operations tried: %v", len(res), res)
	}
	// Root, in this process.
	for name, op := range map[string]func() error{
		"readdir": func() error { _, err := os.ReadDir(e.dir); return err },
		"stat":    func() error { _, err := os.Stat(filepath.Join(e.dir, "tokend-session")); return err },
		"open":    func() error { _, err := os.Open(filepath.Join(e.dir, "tokend-session")); return err },
		"create":  func() error { return os.WriteFile(filepath.Join(e.dir, "x"), []byte("x"), 0o600) },
	} {
		if err := op(); !errorsIs(err, syscall.EACCES) {
			t.Errorf("root: %s -> %v, want EACCES", name, err)
		}
	}
	// The token is still there for its owner.
	if r := e.read(); r.Pick == "" {
		t.Fatal("the owner lost the token")
	}
}

func errorsIs(err error, errno syscall.Errno) bool {
	var e syscall.Errno
	for err != nil {
		if x, ok := err.(syscall.Errno); ok {
			e = x
			break
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			break
		}
		err = u.Unwrap()
	}
	return e == errno
}

// A killed agent leaves a dead mount (ENOTCONN); the next agent recovers it.
func TestStaleMountRecovered(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	before := e.read().Pick
	e.kill()
	var res map[string]string
	e.sim(e.u, &res, "", "access", e.dir, "tokend-session")
	if res["stat-dir"] != "ENOTCONN" {
		t.Fatalf("after SIGKILL the mount point gives %q, want ENOTCONN", res["stat-dir"])
	}
	e.start()
	after := e.read().Pick
	if after == "" || after == before {
		t.Fatalf("after recovery the tools pick %q (before: %q): want a fresh token", after, before)
	}
	e.waitLog("detached a dead mount")
}

// The session ends cleanly: SIGTERM and `wipe --logout` both unmount, remove
// the socket and exit 0.
func TestLogoutLeavesNothing(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	e.read()
	if _, stderr, code := e.cli("wipe", "--logout"); code != 0 {
		t.Fatalf("wipe --logout: exit %d: %s", code, stderr)
	}
	if !e.agent.Wait(15 * time.Second) {
		t.Fatal("the agent did not exit after wipe --logout")
	}
	if err := e.agent.Err(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
	e.agent = nil
	if mounttab.Mounted(e.dir) {
		t.Fatal("still mounted")
	}
	if _, err := os.Stat(e.sock); !os.IsNotExist(err) {
		t.Fatalf("socket left: %v", err)
	}
	if _, stderr, code := e.cli("status"); code != exitNoAgent || !strings.Contains(stderr, "no tokend agent answers") {
		t.Fatalf("status without an agent: exit %d: %s", code, stderr)
	}

	e.start()
	e.stop() // SIGTERM
	if mounttab.Mounted(e.dir) {
		t.Fatal("still mounted after SIGTERM")
	}
}

// Tokens on disk before the agent starts are imported (and with move,
// deleted); files that are not tokens are left alone.
func TestLegacyImport(t *testing.T) {
	for _, mode := range []string{"import", "move"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, map[string]string{"legacy": `"` + mode + `"`})
			e.mkdir(e.dir)
			old := e.sign("disk@test.example", time.Hour)
			e.writeFile(filepath.Join(e.dir, "ondisk"), string(old)+"\n", 0o600)
			e.writeFile(filepath.Join(e.dir, "notes.txt"), "hello\n", 0o600)
			// Files HTCondor would refuse are not imported either.
			e.writeFile(filepath.Join(e.dir, "public"), string(e.sign("pub@test.example", time.Hour))+"\n", 0o644)
			if err := os.Symlink("ondisk", filepath.Join(e.dir, "link")); err != nil {
				t.Fatal(err)
			}
			os.Lchown(filepath.Join(e.dir, "link"), e.u.UID, e.u.GID)
			e.start()
			found := false
			for _, f := range e.read().Files {
				if filepath.Base(f.Path) == "ondisk" && slices.Equal(f.Tokens, []string{string(old)}) {
					found = true
				}
				switch filepath.Base(f.Path) {
				case "notes.txt", "public", "link":
					t.Errorf("%s was imported", filepath.Base(f.Path))
				}
			}
			if !found {
				t.Fatal("the token on disk was not imported")
			}
			e.stop()
			_, err := os.Stat(filepath.Join(e.dir, "ondisk"))
			if mode == "move" && !os.IsNotExist(err) {
				t.Fatalf("legacy = move left the file: %v", err)
			}
			if mode == "import" && err != nil {
				t.Fatalf("legacy = import removed the file: %v", err)
			}
			if !strings.Contains(e.log.String(), "plaintext files remain on disk") {
				t.Errorf("the files left on disk were not reported:\n%s", e.log)
			}
		})
	}
}

// The control socket admits only its owner and survives hostile requests.
func TestControlSocket(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	st, err := os.Stat(e.sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v", st.Mode(), err)
	}
	dst, _ := os.Stat(filepath.Dir(e.sock))
	if dst.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory mode %v", dst.Mode())
	}
	// Another user cannot even reach it.
	other := testenv.Lookup(t, testenv.OtherName)
	os.Chmod(e.work, 0o711)
	if _, stderr, code := e.runAs(other, "", e.bin, "status"); code != exitNoAgent || !strings.Contains(stderr, "permission denied") {
		t.Fatalf("another user's status: exit %d: %s", code, stderr)
	}
	// Root can connect; SO_PEERCRED refuses it.
	client := http.Client{Transport: &http.Transport{Dial: func(_, _ string) (net.Conn, error) { return net.Dial("unix", e.sock) }}}
	resp, err := client.Get("http://tokend" + api.PathStatus)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("root's request: %s, want 403", resp.Status)
	}
	e.waitLog("refused a control connection from another user")
	// Hostile requests from the owner: the agent answers with an error and
	// keeps serving.
	rawsock := testenv.Build(t, "./internal/testenv/rawsock")
	raw := func(req string) string {
		out, _, _ := e.runAs(e.u, req, rawsock, e.sock)
		return out
	}
	big := strings.Repeat("x", 64<<10)
	for req, want := range map[string]string{
		"POST /v1/wipe HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope":                                              "400",
		"POST /v1/fetch HTTP/1.1\r\nHost: x\r\nContent-Length: " + itoa(len(big)+9) + "\r\n\r\n{\"name\":\"" + big + "\"}": "413",
		"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n":                                                                      "404",
		"DELETE /v1/status HTTP/1.1\r\nHost: x\r\n\r\n":                                                                    "405",
		"garbage\r\n\r\n": "400",
	} {
		if got := raw(req); !strings.Contains(got, want) {
			t.Errorf("%.40q: %q, want %s", req, got, want)
		}
	}
	if _, err := e.status(); err != nil {
		t.Fatalf("the agent stopped serving after hostile requests: %v", err)
	}
	if r := e.read(); r.Pick == "" {
		t.Fatal("hostile requests cost a token")
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// With allow_root (HTCondor's per-user flocking: the root schedd reads the
// user's tokens with its effective uid switched) root gets in; other users
// still do not.
func TestAllowRoot(t *testing.T) {
	e := newEnv(t, map[string]string{"allow_root": "true"})
	e.start()
	files, err := condor.Read(e.dir, e.u.UID)
	if err != nil {
		t.Fatal(err)
	}
	if _, tok, ok := condor.Pick(files); !ok || string(tok) != e.read().Pick {
		t.Fatalf("root with allow_root read %+v", files)
	}
	other := testenv.Lookup(t, testenv.OtherName)
	os.Chmod(e.work, 0o711)
	var res map[string]string
	e.sim(other, &res, "", "access", e.dir, "tokend-session")
	if res["open-read"] != "EACCES" || res["readdir"] != "EACCES" {
		t.Fatalf("another user with allow_root: %v", res)
	}
}

// One agent per socket: a second one refuses to start and leaves the first
// alone.
func TestSecondAgentRefused(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	_, stderr, code := e.runAs(e.u, "", e.bin, "agent", "--config", e.config)
	if code == 0 || !strings.Contains(stderr, "another tokend agent is already running") {
		t.Fatalf("a second agent: exit %d: %s", code, stderr)
	}
	if r := e.read(); r.Pick == "" {
		t.Fatal("the first agent lost its token")
	}
	if _, err := e.status(); err != nil {
		t.Fatalf("the first agent stopped answering: %v", err)
	}
}
