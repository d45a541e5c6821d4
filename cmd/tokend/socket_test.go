package main

// How the CLI finds the agent: --socket, else $TOKEND_SOCKET, else the
// configuration's socket, else $XDG_RUNTIME_DIR/tokend/agent.sock.

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/testenv"
)

// The agent listens on a socket named only in its config file; the CLI,
// given that file by $TOKEND_CONFIG or --config (no --socket, no
// $TOKEND_SOCKET), reaches it.
func TestCLIFindsTheSocketInTheConfig(t *testing.T) {
	e := newEnv(t, nil) // the config names the socket
	e.start()
	// The default socket is in an empty runtime directory: only the
	// config leads to the agent.
	runtime := "XDG_RUNTIME_DIR=" + testenv.Dir(t, e.u)
	byEnv := []string{runtime, "TOKEND_CONFIG=" + e.config}

	for _, c := range []struct {
		name string
		env  []string
		args []string
	}{
		{"TOKEND_CONFIG", byEnv, []string{"status", "--json"}},
		{"--config", []string{runtime}, []string{"status", "--json", "--config", e.config}},
	} {
		out, stderr, code := e.runAsEnv(e.u, c.env, "", e.bin, c.args...)
		if code != exitOK || stderr != "" {
			t.Fatalf("%s: tokend %s: exit %d: %s", c.name, strings.Join(c.args, " "), code, stderr)
		}
		var st api.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil || st.PID != e.agent.Pid() {
			t.Fatalf("%s: status %q (%v), want the agent's (pid %d)", c.name, out, err, e.agent.Pid())
		}
	}

	// The other client commands find it the same way.
	out, stderr, code := e.runAsEnv(e.u, byEnv, "", e.bin, "list", "--json")
	var toks []api.Token
	if code != exitOK || json.Unmarshal([]byte(out), &toks) != nil || len(toks) != 1 || toks[0].Name != "tokend-session" {
		t.Fatalf("tokend list: exit %d, %q: %s", code, out, stderr)
	}

	// $TOKEND_SOCKET comes before the config, --socket before both.
	nowhere := filepath.Join(e.work, "nowhere.sock")
	_, stderr, code = e.runAsEnv(e.u, append(byEnv, "TOKEND_SOCKET="+nowhere), "", e.bin, "status")
	if code != exitNoAgent || !strings.Contains(stderr, nowhere) {
		t.Errorf("with $TOKEND_SOCKET and the config: exit %d, %q; want no agent on %s", code, stderr, nowhere)
	}
	_, stderr, code = e.runAsEnv(e.u, append(byEnv, "TOKEND_SOCKET="+e.sock), "", e.bin, "status", "--socket", nowhere)
	if code != exitNoAgent || !strings.Contains(stderr, nowhere) {
		t.Errorf("with --socket, $TOKEND_SOCKET and the config: exit %d, %q; want no agent on %s", code, stderr, nowhere)
	}
}

// A configuration file that does not load still lets `tokend status` reach
// an agent at the default socket: it says what is wrong with the file, on
// standard error, and goes on.
func TestStatusWithABrokenConfigUsesTheDefaultSocket(t *testing.T) {
	e := newEnv(t, map[string]string{"socket": `""`})
	runtime := testenv.Dir(t, e.u)
	e.agentEnv = []string{"XDG_RUNTIME_DIR=" + runtime}
	e.sock = filepath.Join(runtime, "tokend", "agent.sock") // the default
	e.start()

	for _, c := range []struct{ name, content, want string }{
		{"unknown key", "sokcet = \"/elsewhere/agent.sock\"\n", `unknown key "sokcet" (did you mean "socket"?)`},
		{"syntax error", "socket = \"/elsewhere/agent.sock\n", "broken.toml:1:"},
		{"bad value", "socket = \"elsewhere/agent.sock\"\n", `socket = "elsewhere/agent.sock": want an absolute path`},
	} {
		t.Run(c.name, func(t *testing.T) {
			broken := filepath.Join(testenv.Dir(t, e.u), "broken.toml")
			e.writeFile(broken, c.content, 0o600)
			out, stderr, code := e.runAsEnv(e.u, append(e.agentEnv, "TOKEND_CONFIG="+broken), "", e.bin, "status", "--json")
			if code != exitOK {
				t.Fatalf("exit %d, want 0: %s", code, stderr)
			}
			var st api.Status
			if err := json.Unmarshal([]byte(out), &st); err != nil || st.PID != e.agent.Pid() {
				t.Fatalf("status %q (%v), want the agent's (pid %d) and nothing else", out, err, e.agent.Pid())
			}
			for _, want := range []string{broken, c.want, "default socket " + e.sock} {
				if !strings.Contains(stderr, want) {
					t.Errorf("standard error %q does not say %q", stderr, want)
				}
			}
		})
	}
}
