package session

// The test binary doubles as a fake agent: Open starts it as `BIN agent
// --config FILE` with TOKEND_FAKE_AGENT set, and it serves the part of the
// control API that Open and Close use. The real agent is exercised end to
// end in cmd/tokend.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
)

// Fake agent behaviours, chosen per start from TOKEND_FAKE_PLAN
// (comma-separated, one per start; the last repeats).
const (
	fakeServe = "serve" // count sessions; at the last close answer wiped and exit
	fakeSlow  = "slow"  // like serve, but after the last close keep answering busy for a while
	fakeFail  = "fail"  // print a config error and exit 2 at once
	fakeHang  = "hang"  // never answer
)

func TestMain(m *testing.M) {
	if dir := os.Getenv("TOKEND_FAKE_AGENT"); dir != "" {
		os.Exit(fakeAgent(dir))
	}
	if user := os.Getenv("TOKEND_TEST_BECOME"); user != "" {
		os.Exit(become(user))
	}
	os.Exit(m.Run())
}

// became is what a process looks like after Become, as become prints it.
type became struct {
	Err        string
	UID, EUID  int
	GID, EGID  int
	Groups     []int
	Env        []string
	Cwd        string
	Umask      int
	RegainRoot string // the error of setuid(0)
}

// become runs Become in this (child) process and prints the result.
func become(user string) int {
	runtimeRoot = os.Getenv("TOKEND_TEST_RUNTIME_ROOT")
	var b became
	if _, err := Become(user, ActionOpen, os.Environ()); err != nil {
		b.Err = err.Error()
	}
	b.UID, b.EUID, b.GID, b.EGID = os.Getuid(), os.Geteuid(), os.Getgid(), os.Getegid()
	b.Groups, _ = os.Getgroups()
	b.Env = os.Environ()
	b.Cwd, _ = os.Getwd()
	b.Umask = syscall.Umask(0o077)
	b.RegainRoot = fmt.Sprint(syscall.Setuid(0))
	json.NewEncoder(os.Stdout).Encode(b)
	return 0
}

// fakeAgent runs one fake agent; dir collects what it did.
func fakeAgent(dir string) int {
	if len(os.Args) != 4 || os.Args[1] != "agent" || os.Args[2] != "--config" {
		fmt.Fprintf(os.Stderr, "fake agent: unexpected arguments %q\n", os.Args[1:])
		return 2
	}
	cfg, err := config.Load(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	starts, _ := os.ReadFile(filepath.Join(dir, "starts"))
	n := strings.Count(string(starts), "\n")
	appendLine(filepath.Join(dir, "starts"), fmt.Sprint(os.Getpid()))
	plan := strings.Split(os.Getenv("TOKEND_FAKE_PLAN"), ",")
	mode := plan[min(n, len(plan)-1)]
	switch mode {
	case fakeFail:
		fmt.Fprintln(os.Stderr, "config: fetch.method = \"nope\": want exec, request or local")
		return 2
	case fakeHang:
		time.Sleep(time.Minute)
		return 1
	}
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var mu sync.Mutex
	sessions, wiping := 0, false
	done := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		json.NewEncoder(w).Encode(api.Status{PID: os.Getpid(), Dir: dir, Mounted: true, Sessions: sessions,
			Session: api.Session{Name: "tokend-session", State: api.SessionValid}})
	})
	mux.HandleFunc("POST "+api.PathSession, func(w http.ResponseWriter, r *http.Request) {
		var req api.SessionRequest
		json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		defer mu.Unlock()
		if wiping {
			w.WriteHeader(http.StatusConflict)
			json.NewEncoder(w).Encode(api.Errorf(api.CodeBusy, "wiping"))
			appendLine(filepath.Join(dir, "events"), "busy")
			return
		}
		if req.Action == ActionOpen {
			sessions++
		} else if sessions > 0 {
			sessions--
		}
		appendLine(filepath.Join(dir, "events"), fmt.Sprintf("%s %d %d", req.Action, req.PID, sessions))
		resp := api.SessionResponse{Sessions: sessions, Wiped: sessions == 0}
		json.NewEncoder(w).Encode(resp)
		if resp.Wiped {
			wiping = true
			go func() {
				if mode == fakeSlow {
					time.Sleep(300 * time.Millisecond)
				}
				close(done)
			}()
		}
	})
	go http.Serve(ln, mux)
	<-done
	ln.Close()
	return 0
}

func appendLine(path, line string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

// fake is a directory with a config whose socket is inside it, and the
// environment that makes this test binary a fake agent.
type fake struct {
	t      *testing.T
	dir    string
	config string
	socket string
}

func newFake(t *testing.T, plan ...string) *fake {
	t.Helper()
	dir := t.TempDir()
	f := &fake{t: t, dir: dir, config: filepath.Join(dir, "config.toml"), socket: filepath.Join(dir, "run", "agent.sock")}
	if err := os.WriteFile(f.config, fmt.Appendf(nil, "socket = %q\n", f.socket), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TOKEND_FAKE_AGENT", dir)
	t.Setenv("TOKEND_FAKE_PLAN", strings.Join(plan, ","))
	t.Cleanup(func() {
		// End any fake agent still running.
		data, _ := os.ReadFile(filepath.Join(dir, "starts"))
		for _, pid := range strings.Fields(string(data)) {
			var p int
			fmt.Sscan(pid, &p)
			if proc, err := os.FindProcess(p); err == nil && p > 0 {
				proc.Kill()
			}
		}
	})
	return f
}

func (f *fake) options(pid int) Options {
	exe, err := os.Executable()
	if err != nil {
		f.t.Fatal(err)
	}
	return Options{Config: f.config, PID: pid, Timeout: 5 * time.Second, Agent: exe}
}

// starts returns the pids of the fake agents started so far.
func (f *fake) starts() []string {
	data, _ := os.ReadFile(filepath.Join(f.dir, "starts"))
	return strings.Fields(string(data))
}

func (f *fake) events() []string {
	data, _ := os.ReadFile(filepath.Join(f.dir, "events"))
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}
