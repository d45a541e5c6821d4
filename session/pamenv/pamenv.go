// Package pamenv is the PAM hook's environment. pam_exec gives the program
// on the PAM line the PAM environment followed by the PAM items (PAM_USER,
// PAM_TYPE, PAM_SERVICE, ...); where users may set PAM environment
// variables (pam_env with user_readenv=1), the part before the items is
// theirs, loader variables (LD_PRELOAD) and second copies of the items
// included. So the program on the PAM line is tokend-pam, a static C
// launcher (cmd/tokend-pam/main.c: no dynamic loader and no language runtime
// reads its environment): it reads the items, refuses a block that names one
// twice, and runs `tokend session` with the environment Launch builds. What
// the user may set for their agent travels under a prefix no library reads,
// and `tokend session` turns it back (Carried) only once it runs as the user.
//
// This package is the reference of that format: the launcher's tests
// (cmd/tokend-pam) hold its output to Launch and its refusal to
// DuplicateError. A change here is a change to main.c too.
package pamenv

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/tokend/tokend/internal/logsafe"
)

// The PAM items the hook reads, as pam_exec names them.
const (
	User    = "PAM_USER"
	Type    = "PAM_TYPE"
	Service = "PAM_SERVICE"
)

// Launched is set ("1") by the launcher. `tokend session` run as root for
// PAM without it was named on the PAM line directly, where the dynamic
// loader has already read the user's variables: it refuses to act. (It
// says "misconfigured", not "safe": where the line names tokend directly,
// a user can set it too.)
const Launched = "TOKEND_PAM_LAUNCHER"

// Path is the PATH of `tokend session` while it is root.
const Path = "/usr/sbin:/usr/bin:/sbin:/bin"

// carry prefixes the user's variables on their way to the agent: no
// library or loader reads a variable of that name.
const carry = "TOKEND_USERENV_"

// Split returns the entries of a raw environment block (/proc/self/environ:
// each entry ends in a NUL byte), duplicates included; entries without "="
// are dropped.
func Split(block []byte) []string {
	var env []string
	for e := range bytes.SplitSeq(block, []byte{0}) {
		if bytes.IndexByte(e, '=') > 0 {
			env = append(env, string(e))
		}
	}
	return env
}

// DuplicateError means the environment names a PAM item more than once:
// someone put one in the PAM environment.
type DuplicateError struct {
	Name   string
	Values []string
}

func (e *DuplicateError) Error() string {
	quoted := make([]string, len(e.Values))
	for i, v := range e.Values {
		quoted[i] = `"` + logsafe.Text(v) + `"`
	}
	return fmt.Sprintf("%s appears %d times in the PAM environment (%s): a user may have set it (pam_env with user_readenv=1); nothing done for this login",
		e.Name, len(e.Values), strings.Join(quoted, ", "))
}

// Get returns the value of name in env, "" when it is absent, and a
// *DuplicateError when env names it more than once.
func Get(env []string, name string) (string, error) {
	var values []string
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, name+"="); ok {
			values = append(values, v)
		}
	}
	switch len(values) {
	case 0:
		return "", nil
	case 1:
		return values[0], nil
	}
	return "", &DuplicateError{Name: name, Values: values}
}

// Launch returns the environment the launcher runs `tokend session` with:
// PATH, the PAM items (each at most once in env, else an error), Launched,
// and the user's variables (see Carried) under a prefix. Nothing else of
// env is kept.
func Launch(env []string) ([]string, error) {
	out := []string{"PATH=" + Path, Launched + "=1"}
	for _, name := range []string{User, Type, Service} {
		v, err := Get(env, name)
		if err != nil {
			return nil, err
		}
		if v != "" {
			out = append(out, name+"="+v)
		}
	}
	user := map[string]string{}
	for _, e := range env {
		name, v, _ := strings.Cut(e, "=")
		if forAgent(name) {
			user[name] = v // the last wins, as in a shell
		}
	}
	for _, name := range slices.Sorted(maps.Keys(user)) {
		out = append(out, carry+name+"="+user[name])
	}
	return out, nil
}

// Carried returns, as NAME=value, the user's variables that Launch put in
// env: HTCondor's configuration (CONDOR_CONFIG, _CONDOR_*) and the locale
// (LANG, LC_ALL, TZ). The agent runs as the user, so they need no trust;
// they are put back only once the hook runs as the user.
func Carried(env []string) []string {
	var out []string
	for _, e := range env {
		rest, ok := strings.CutPrefix(e, carry)
		if name, _, _ := strings.Cut(rest, "="); ok && forAgent(name) {
			out = append(out, rest)
		}
	}
	return out
}

// forAgent reports whether a PAM environment variable may reach the user's
// agent.
func forAgent(name string) bool {
	switch name {
	case "CONDOR_CONFIG", "LANG", "LC_ALL", "TZ":
		return true
	}
	rest, ok := strings.CutPrefix(name, "_CONDOR_")
	return ok && rest != "" && strings.Trim(rest, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.") == ""
}
