package config

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"syscall"

	"github.com/tokend/tokend/internal/condor"
)

// Environment variables every tokend command reads.
const (
	// SocketEnv names the agent's control socket; a --socket flag comes
	// first, the configuration's socket after it.
	SocketEnv = "TOKEND_SOCKET"
	// FileEnv names the one configuration file to read instead of
	// SystemFile and UserFile(); a --config flag comes first.
	FileEnv = "TOKEND_CONFIG"
)

// DefaultSocket is where the agent listens when nothing names another
// socket: $XDG_RUNTIME_DIR/tokend/agent.sock, with /run/user/UID when
// XDG_RUNTIME_DIR is unset.
func DefaultSocket() string {
	dir := os.Getenv("XDG_RUNTIME_DIR")
	if dir == "" {
		dir = fmt.Sprintf("/run/user/%d", os.Getuid())
	}
	return filepath.Join(dir, "tokend", "agent.sock")
}

// SocketOverride returns the socket a command line names: flag (its
// --socket), else $TOKEND_SOCKET. It is "" when neither names one, and the
// configuration decides (AgentSocket). The agent and every client resolve
// the socket in this one order, so that they meet.
func SocketOverride(flag string) string {
	if flag != "" {
		return flag
	}
	return os.Getenv(SocketEnv)
}

// FileOverride returns the configuration file a command line names: flag
// (its --config), else $TOKEND_CONFIG; "" means the usual files (Load).
func FileOverride(flag string) string {
	if flag != "" {
		return flag
	}
	return os.Getenv(FileEnv)
}

// AgentSocket returns the agent's control socket: the socket key, else
// DefaultSocket().
func (c *Config) AgentSocket() string {
	if c.Socket != "" {
		return c.Socket
	}
	return DefaultSocket()
}

// Runtime are the files of one agent: its socket and what lives beside it,
// in the socket's directory (private to the user).
type Runtime struct {
	Socket      string
	Dir         string // the socket's directory, mode 0700
	Lock        string // held by the agent for its whole life; the file stays
	Log         string // the output of an agent the session hook started
	PIDFile     string // "PID STARTTIME" of the agent the session hook started
	SessionLock string // serializes the session hook's "start the agent unless one answers"
}

// RuntimeFiles returns the files that go with the agent socket socket.
func RuntimeFiles(socket string) Runtime {
	dir := filepath.Dir(socket)
	return Runtime{
		Socket:      socket,
		Dir:         dir,
		Lock:        socket + ".lock",
		Log:         filepath.Join(dir, "agent.log"),
		PIDFile:     filepath.Join(dir, "agent.pid"),
		SessionLock: filepath.Join(dir, "session.lock"),
	}
}

// TokenDir returns the token directory, where the HTCondor tools look for
// tokens: the dir key, else SEC_TOKEN_DIRECTORY (from the environment or
// condor_config_val), else <pw_dir>/.condor/tokens.d, pw_dir from the
// password database as HTCondor does (not $HOME).
func (c *Config) TokenDir() (string, error) {
	if c.Dir != "" {
		return c.Dir, nil
	}
	if d := condor.PathSetting("SEC_TOKEN_DIRECTORY"); d != "" {
		return d, nil
	}
	u, err := user.LookupId(fmt.Sprint(os.Getuid()))
	if err != nil {
		return "", fmt.Errorf("could not find uid %d's home directory: %w; set dir in the config", os.Getuid(), err)
	}
	return filepath.Join(u.HomeDir, ".condor", "tokens.d"), nil
}

// EnsurePrivateDir makes dir (and missing parents) exist, a directory owned
// by the user, mode 0700: the socket's directory (Runtime.Dir).
func EnsurePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("could not create %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory: remove it", dir)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; int(uid) != os.Getuid() {
		return fmt.Errorf("the socket directory %s belongs to uid %d: another user took it; remove it or set socket = \"...\" in the config", dir, uid)
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
	}
	return nil
}
