// Package session is the login-session lifecycle of sites without systemd
// user managers: `tokend session open|close`, run by pam_exec at every login
// and logout.
//
// The hook runs twice per login, as root: once with PAM_TYPE=open_session,
// once with PAM_TYPE=close_session. pam_exec runs the static launcher
// tokend-pam (cmd/tokend-pam, package pamenv), which runs `tokend session`
// with an environment of its own. Become (the root side) does only what
// needs root — it looks up the PAM user and makes sure /run/user/UID exists
// — and then turns the process into that user for good (groups, gid, uid,
// a clean environment), so that nothing after it, the agent least of all,
// runs as root. Open and Close (the user side, also what `tokend session`
// does when a user runs it) then talk to the user's own agent over its
// control socket:
//
//   - Open starts the agent if none answers (detached, in its own session,
//     its output in a log file beside the socket), counts the session with
//     the pid of the login's process, and waits, within a deadline, until the
//     session token is usable.
//   - Close uncounts the session; at the last one the agent zeroes every
//     token, unmounts and exits, and Close waits until the mount is gone.
//
// The agent watches each session's process, so a session whose close never
// comes (sshd killed) is dropped once its process is gone. Several logins
// share one agent: a lock file beside the socket serializes the "is there an
// agent, else start one" step, and only the last close wipes.
//
// Where things live, for a user with uid UID and the default configuration:
//
//	/run/user/UID/                  created 0700 for the user by the hook when logind did not
//	/run/user/UID/tokend/agent.sock the agent's control socket (directory 0700, socket 0600)
//	/run/user/UID/tokend/agent.sock.lock  held by the agent while it runs
//	/run/user/UID/tokend/agent.log  the agent's log (no token is ever logged)
//	/run/user/UID/tokend/agent.pid  the agent Open started: "PID STARTTIME"
//	/run/user/UID/tokend/session.lock
//
// With socket = "..." in the configuration (or --socket, or $TOKEND_SOCKET
// when a user runs it), the files beside the socket move with it
// (config.RuntimeFiles).
//
// # Measuring
//
// The times a login and a logout cost are those of the hook itself, run as
// pam_exec runs it (as root, from a process that stays alive between the
// two, since the session is tied to the hook's parent):
//
//	PAM_TYPE=open_session  PAM_USER=alice tokend-pam   # returns once the session token is usable
//	PAM_TYPE=close_session PAM_USER=alice tokend-pam   # returns once the agent has exited and the mount is gone
//
// Open's time includes the fetch; the agent logs the fetch's own time
// ("token fetched ... took=").
package session

import (
	"errors"
	"fmt"
	"time"
)

// Actions.
const (
	ActionOpen  = "open"
	ActionClose = "close"
)

// Default deadlines. A login must never wait long for tokend: Open returns
// when its deadline passes even if the token is not there yet (the agent
// keeps fetching), and the hook kills a user side that overstays.
const (
	DefaultOpenTimeout  = 5 * time.Second
	DefaultCloseTimeout = 10 * time.Second
)

// ErrNotForPAMType means the hook was called for a PAM stage it has nothing
// to do in (auth, account, password): the PAM line is in the wrong stack.
var ErrNotForPAMType = errors.New("tokend session belongs in the session stack")

// ActionFor maps pam_exec's PAM_TYPE to an action.
func ActionFor(pamType string) (string, error) {
	switch pamType {
	case "open_session":
		return ActionOpen, nil
	case "close_session":
		return ActionClose, nil
	case "":
		return "", errors.New("no action: give open or close, or run from pam_exec (which sets PAM_TYPE)")
	}
	return "", fmt.Errorf("PAM_TYPE=%s: %w (`session optional pam_exec.so /usr/bin/tokend-pam`)", pamType, ErrNotForPAMType)
}
