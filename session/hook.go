package session

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/tokend/tokend/session/pamenv"
)

// RuntimeRoot holds the users' runtime directories, as logind makes them.
const RuntimeRoot = "/run/user"

// DefaultPath is the PATH the hook and the agent get once they run as the
// user: pam_exec passes none, and the fetch commands (condor_token_fetch)
// and fusermount3 live here. Elsewhere, name them in fetch.command.
const DefaultPath = "/usr/local/bin:/usr/bin:/bin"

// ErrRoot means the PAM user is root: tokend runs no agent for root.
var ErrRoot = errors.New("tokend runs no agent for root")

// Account is a local user the hook acts for.
type Account struct {
	Name     string
	UID, GID int
	Groups   []int // supplementary groups, as initgroups(3) sets them
	Home     string
}

// LookupAccount finds a user and their groups in the system's databases.
func LookupAccount(name string) (Account, error) {
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		return Account{}, fmt.Errorf("no user %q in the password database", name)
	}
	if err != nil {
		return Account{}, fmt.Errorf("user %q: %w", name, err)
	}
	a := Account{Name: u.Username, Home: u.HomeDir}
	if a.UID, err = strconv.Atoi(u.Uid); err != nil {
		return Account{}, fmt.Errorf("user %q: uid %q: %w", name, u.Uid, err)
	}
	if a.GID, err = strconv.Atoi(u.Gid); err != nil {
		return Account{}, fmt.Errorf("user %q: gid %q: %w", name, u.Gid, err)
	}
	gids, err := u.GroupIds()
	if err != nil {
		return Account{}, fmt.Errorf("user %q: groups: %w", name, err)
	}
	for _, g := range gids {
		if n, err := strconv.Atoi(g); err == nil {
			a.Groups = append(a.Groups, n)
		}
	}
	return a, nil
}

// EnsureRuntimeDir returns root/UID, the user's runtime directory, creating
// it (mode 0700, owned by the user) when logind has not. root itself must be
// a directory owned by root that others cannot write to; it is created 0755
// when missing. An existing runtime directory must be a real directory owned
// by the user. Only root can call it.
func EnsureRuntimeDir(root string, a Account) (string, error) {
	if err := os.Mkdir(root, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("could not create %s: %w", root, err)
	}
	st, err := os.Lstat(root)
	if err != nil {
		return "", err
	}
	if s := st.Sys().(*syscall.Stat_t); !st.IsDir() || s.Uid != 0 || st.Mode().Perm()&0o022 != 0 {
		return "", fmt.Errorf("%s must be a directory owned by root that only root can write to (it is %v, uid %d)", root, st.Mode(), s.Uid)
	}
	dir := filepath.Join(root, strconv.Itoa(a.UID))
	if err := os.Mkdir(dir, 0o700); err == nil {
		// Created by root in a directory only root can write to: nobody
		// can have swapped it for something else in between.
		if err := os.Chown(dir, a.UID, a.GID); err != nil {
			os.Remove(dir)
			return "", fmt.Errorf("could not give %s to %s: %w", dir, a.Name, err)
		}
		return dir, nil
	} else if !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("could not create %s: %w", dir, err)
	}
	st, err = os.Lstat(dir)
	if err != nil {
		return "", err
	}
	if s := st.Sys().(*syscall.Stat_t); !st.IsDir() || int(s.Uid) != a.UID {
		return "", fmt.Errorf("%s is not a directory owned by %s (it is %v, uid %d): remove it", dir, a.Name, st.Mode(), s.Uid)
	}
	return dir, nil
}

// runtimeRoot is RuntimeRoot; tests point it elsewhere.
var runtimeRoot = RuntimeRoot

// Become is the root side of the PAM hook. It looks up the PAM user, makes
// sure their runtime directory exists when a session opens, and then turns
// this process into that user for good: their supplementary groups, gid and
// uid on every thread (so no capability is left and root cannot come back),
// a clean environment (userEnv), / as the working directory, umask 077.
// Everything after it — Open, Close, the agent they start — runs as the
// user. env is the hook's environment, as the launcher (tokend-pam) built
// it: the user's variables it carried are put back here, once the process
// is the user. It fails with ErrRoot for root, and on any doubt that the
// drop took; the caller must then exit.
func Become(name, action string, env []string) (Account, error) {
	if os.Geteuid() != 0 {
		return Account{}, errors.New("the PAM hook must run as root: it starts the agent as the user")
	}
	if name == "" {
		return Account{}, errors.New("PAM_USER is not set: run `tokend session` from pam_exec, or as the user")
	}
	a, err := LookupAccount(name)
	if err != nil {
		return a, err
	}
	if a.UID == 0 {
		return a, ErrRoot
	}
	runtime := filepath.Join(runtimeRoot, strconv.Itoa(a.UID))
	if action == ActionOpen {
		if runtime, err = EnsureRuntimeDir(runtimeRoot, a); err != nil {
			return a, err
		}
	}
	if err := dropPrivileges(a); err != nil {
		return a, fmt.Errorf("could not become %s: %w", a.Name, err)
	}
	os.Clearenv()
	for _, kv := range userEnv(a, runtime, env) {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	syscall.Umask(0o077)
	if err := os.Chdir("/"); err != nil {
		return a, err
	}
	return a, nil
}

// dropPrivileges sets the process's groups, gids and uids to a's. The
// syscall package's calls apply to every thread of the process (the
// runtime, or libc with cgo, broadcasts them); each thread is checked
// afterwards, as is that root cannot be regained.
func dropPrivileges(a Account) error {
	groups := a.Groups
	if len(groups) == 0 {
		groups = []int{a.GID}
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(a.GID, a.GID, a.GID); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if err := syscall.Setresuid(a.UID, a.UID, a.UID); err != nil {
		return fmt.Errorf("setresuid: %w", err)
	}
	if err := syscall.Setuid(0); err == nil {
		return errors.New("root could be regained after dropping privileges")
	}
	return checkThreads(a, groups)
}

// checkThreads reads every thread's credentials from /proc: all uids and
// gids a's, the groups given, no capability.
func checkThreads(a Account, groups []int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	uid := fmt.Sprintf("%d\t%d\t%d\t%d", a.UID, a.UID, a.UID, a.UID)
	gid := fmt.Sprintf("%d\t%d\t%d\t%d", a.GID, a.GID, a.GID, a.GID)
	var want []string
	for _, g := range groups {
		want = append(want, strconv.Itoa(g))
	}
	slices.Sort(want)
	for _, task := range tasks {
		data, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "status"))
		if err != nil {
			continue // the thread ended
		}
		seen := 0
		for line := range strings.SplitSeq(string(data), "\n") {
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimSpace(v)
			got := strings.Fields(v)
			slices.Sort(got)
			switch {
			case k == "Uid" && v == uid, k == "Gid" && v == gid, k == "Groups" && slices.Equal(got, want),
				k == "CapEff" && strings.Trim(v, "0") == "", k == "CapPrm" && strings.Trim(v, "0") == "":
				seen++
			case k == "Uid", k == "Gid", k == "Groups", k == "CapEff", k == "CapPrm":
				return fmt.Errorf("thread %s still has %s %s", task.Name(), k, v)
			}
		}
		if seen != 5 {
			return fmt.Errorf("could not read the credentials of thread %s", task.Name())
		}
	}
	return nil
}

// userEnv is the environment after Become: who the user is, where their
// runtime directory is, a fixed PATH, and the variables of the PAM
// environment the launcher carried (pamenv.Carried: HTCondor's and the
// locale).
func userEnv(a Account, runtime string, env []string) []string {
	return append([]string{
		"HOME=" + a.Home,
		"USER=" + a.Name,
		"LOGNAME=" + a.Name,
		"PATH=" + DefaultPath,
		"XDG_RUNTIME_DIR=" + runtime,
	}, pamenv.Carried(env)...)
}
