package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/syncbuf"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/proc"
)

// standIn writes an executable script owned by the user: a stand-in for an
// HTCondor tool with the same command-line contract.
func (e *env) standIn(name, script string) string {
	e.t.Helper()
	p := filepath.Join(e.work, name)
	e.writeFile(p, "#!/bin/sh\n"+script, 0o755)
	return p
}

// The exec fetcher runs condor_token_fetch; its failures reach the user with
// HTCondor's own message and exit code 5, and never cost the token in place.
func TestFetchThroughCondorTokenFetch(t *testing.T) {
	e := newEnv(t, nil)
	good := e.sign("tool@test.example", time.Hour)
	tokFile := filepath.Join(e.work, "next-token")
	e.writeFile(tokFile, string(good)+"\n", 0o600)
	mode := filepath.Join(e.work, "mode")
	e.writeFile(mode, "ok", 0o600)
	fetch := e.standIn("condor_token_fetch", `echo "$@" >> "$0.args"
case "$(cat `+mode+`)" in
  ok) cat `+tokFile+` ;;
  fail) echo "Failed to request a session token: SECMAN:2007:Failed to end classad message." >&2; exit 1 ;;
  garbage) echo "this-is-not-a-token-but-looks.secret.ish" ;;
esac
`)
	// The session token comes from the stand-in too.
	e.config = rewrite(t, e, `fetch.method = "exec"`+"\n"+`fetch.command = [`+quote(fetch)+`]`)
	e.start()
	if r := e.read(); r.Pick != string(good) {
		t.Fatalf("the session token is not the one condor_token_fetch printed")
	}

	out, stderr, code := e.cli("fetch", "--name", "scoped", "--lifetime", "2h", "--authz", "READ", "--authz", "WRITE", "--json")
	if code != 0 {
		t.Fatalf("tokend fetch: exit %d: %s", code, stderr)
	}
	var tok api.Token
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.Name != "scoped" || tok.Sub != "tool@test.example" {
		t.Fatalf("tokend fetch --json: %q %v", out, err)
	}
	args, _ := os.ReadFile(fetch + ".args")
	if !strings.Contains(string(args), "-lifetime 7200 -authz READ -authz WRITE") {
		t.Fatalf("condor_token_fetch got %q", args)
	}

	e.writeFile(mode, "fail", 0o600)
	_, stderr, code = e.cli("fetch", "--name", "scoped")
	if code != exitFetch || !strings.Contains(stderr, "Failed to request a session token: SECMAN:2007") {
		t.Fatalf("failing fetch: exit %d: %s", code, stderr)
	}
	e.writeFile(mode, "garbage", 0o600)
	_, stderr, code = e.cli("fetch", "--name", "scoped")
	if code != exitFetch || strings.Contains(stderr, "looks.secret.ish") {
		t.Fatalf("garbage fetch: exit %d: %s", code, stderr)
	}
	// The good tokens are still there.
	names := map[string]bool{}
	for _, f := range e.read().Files {
		names[filepath.Base(f.Path)] = true
	}
	if !names["scoped"] || !names["tokend-session"] {
		t.Fatalf("a failed fetch cost a token: %v", names)
	}
	if strings.Contains(e.log.String(), "looks.secret.ish") {
		t.Fatal("the garbage output reached the log")
	}

	// rm, and rm of a missing name.
	if _, stderr, code := e.cli("rm", "scoped"); code != 0 {
		t.Fatalf("rm: exit %d: %s", code, stderr)
	}
	if _, stderr, code := e.cli("rm", "scoped"); code != exitNotFound || !strings.Contains(stderr, "no token file") {
		t.Fatalf("rm of a missing token: exit %d: %s", code, stderr)
	}
	if _, _, code := e.cli("fetch", "--lifetime", "soon"); code != exitFetch && code != exitFailure {
		t.Fatalf("bad lifetime: exit %d", code)
	}
}

// The request fetcher shows the request id while it waits for approval, in
// `tokend fetch` and in `tokend status`.
func TestFetchThroughTokenRequest(t *testing.T) {
	e := newEnv(t, nil)
	good := e.sign("req@test.example", time.Hour)
	tokFile := filepath.Join(e.work, "next-token")
	e.writeFile(tokFile, string(good)+"\n", 0o600)
	approved := filepath.Join(e.work, "approved")
	request := e.standIn("condor_token_request", `echo "Token request enqueued.  Ask an administrator to please approve request 4242."
while [ ! -e `+approved+` ]; do sleep 0.05; done
cat `+tokFile+`
`)
	e.config = rewrite(t, e, `fetch.method = "request"`+"\n"+`fetch.command = [`+quote(request)+`]`)
	// The session token itself waits for approval; status says so.
	e.launch()
	testenv.Eventually(t, 10*time.Second, "status to show the request waiting for approval", func() bool {
		st, err := e.status()
		return err == nil && st.Session.State == api.SessionWaiting && st.Session.RequestID == "4242"
	})
	out, _, _ := e.cli("status")
	if !strings.Contains(out, "condor_token_request_approve -reqid 4242") {
		t.Fatalf("status does not say how to approve:\n%s", out)
	}
	e.writeFile(approved, "", 0o600)
	e.waitReady()
	os.Remove(approved)

	cmd := testenv.Command(e.u, e.bin, "fetch", "--name", "requested")
	cmd.Env = append(cmd.Env, "TOKEND_SOCKET="+e.sock)
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	fetch, err := proc.Start(cmd, nil)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "tokend fetch to show the request id", func() bool {
		return strings.Contains(stderr.String(), "4242")
	})
	e.writeFile(approved, "", 0o600)
	if !fetch.Wait(20 * time.Second) {
		t.Fatal("tokend fetch did not finish after the approval")
	}
	if err := fetch.Err(); err != nil {
		t.Fatalf("tokend fetch: %v: %s", err, stderr.String())
	}
	found := false
	for _, f := range e.read().Files {
		found = found || filepath.Base(f.Path) == "requested"
	}
	if !found {
		t.Fatal("the approved token is not in the directory")
	}
}

// rewrite appends settings to the env's config (keys must not be set yet).
func rewrite(t *testing.T, e *env, extra string) string {
	t.Helper()
	data, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, line := range strings.Split(string(data), "\n") {
		key, _, _ := strings.Cut(line, " =")
		if !strings.Contains(extra, key+" =") {
			kept = append(kept, line)
		}
	}
	e.writeFile(e.config, strings.Join(kept, "\n")+"\n"+extra+"\n", 0o600)
	return e.config
}

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }

// A session token the user removes stays removed (they asked for no token)
// until `tokend fetch`; one the agent hides is fetched again.
func TestSessionTokenRemovedByUser(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	if _, stderr, code := e.cli("rm", "tokend-session"); code != 0 {
		t.Fatalf("rm: exit %d: %s", code, stderr)
	}
	testenv.Eventually(t, 5*time.Second, "status to say the session token was removed", func() bool {
		st, err := e.status()
		return err == nil && st.Session.State == api.SessionRemoved
	})
	// Another change makes the agent look again; it still does not fetch.
	if errno := e.write("write", "other", e.sign("o@test.example", time.Hour)); errno != "" {
		t.Fatal(errno)
	}
	testenv.Eventually(t, 5*time.Second, "the new token to be checked", func() bool {
		return len(e.tokens(false)) == 1
	})
	if st, _ := e.status(); st.Session.State != api.SessionRemoved {
		t.Fatalf("after another change the session token is %s", st.Session.State)
	}
	out, _, _ := e.cli("status")
	if !strings.Contains(out, "tokend fetch") {
		t.Fatalf("status does not say how to get it back:\n%s", out)
	}
	if _, stderr, code := e.cli("fetch"); code != 0 {
		t.Fatalf("fetch: exit %d: %s", code, stderr)
	}
	if st, _ := e.status(); st.Session.State != api.SessionValid {
		t.Fatalf("after tokend fetch the session token is %s", st.Session.State)
	}
}

// A fetch from a schedd elsewhere (fetch.pool set) gets its own token
// directory holding what the mount shows, as the tool would have read it
// there; it never reads the mount, where a tool's first look after a key
// change may be waiting for this very fetch.
func TestFetchTokenDirectory(t *testing.T) {
	e := newEnv(t, nil)
	good := e.sign("tool@test.example", time.Hour)
	tokFile := filepath.Join(e.work, "next-token")
	e.writeFile(tokFile, string(good)+"\n", 0o600)
	seen := filepath.Join(e.work, "seen")
	fetch := e.standIn("condor_token_fetch", `case "$_CONDOR_SEC_TOKEN_DIRECTORY" in
  `+e.dir+`*|"") echo "no private token directory: $_CONDOR_SEC_TOKEN_DIRECTORY" >&2; exit 1 ;;
esac
{ echo "$@"; ls "$_CONDOR_SEC_TOKEN_DIRECTORY"; cat "$_CONDOR_SEC_TOKEN_DIRECTORY"/* 2>/dev/null; } > `+seen+`
cat `+tokFile+`
`)
	e.set(map[string]string{"fetch.method": `"exec"`, "fetch.command": `[` + quote(fetch) + `]`, "fetch.pool": `"cm.elsewhere.example"`})
	// The copies live in the runtime directory, in memory, as in a login
	// session.
	runtime, err := os.MkdirTemp("/dev/shm", "tokend-runtime-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runtime) })
	if err := os.Chown(runtime, e.u.UID, e.u.GID); err != nil {
		t.Fatal(err)
	}
	e.agentEnv = append(e.agentEnv, "XDG_RUNTIME_DIR="+runtime)
	e.start()
	if errno := e.write("write", "mine", good); errno != "" {
		t.Fatalf("writing a token: %s", errno)
	}
	if _, stderr, code := e.cli("fetch", "--name", "other"); code != 0 {
		t.Fatalf("tokend fetch: exit %d: %s", code, stderr)
	}
	got, _ := os.ReadFile(seen)
	if !strings.Contains(string(got), "-pool cm.elsewhere.example") || !strings.Contains(string(got), "mine") || !strings.Contains(string(got), string(good)) {
		t.Fatalf("the remote fetch's token directory does not hold the shown files:\n%s", got)
	}
}
