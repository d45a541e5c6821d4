package doctor

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// PAMDir is where the PAM services are configured.
const PAMDir = "/etc/pam.d"

// pamHook checks the PAM services in dir that run tokend: each must name
// the launcher tokend-pam, not tokend (pam_exec gives the program the PAM
// environment, and the dynamic loader of tokend would read it), and
// should not let users set PAM environment variables (pam_env with
// user_readenv=1, Debian's sshd among them): tokend-pam refuses a forged
// PAM_USER and passes on only HTCondor's variables, but every other program
// of that stack sees what users set. ok is false when no service runs
// tokend.
func pamHook(dir string) (c Check, ok bool) {
	names, err := os.ReadDir(dir)
	if err != nil {
		return Check{}, false
	}
	var launched, direct, readenv []string
	for _, e := range names {
		if e.IsDir() {
			continue
		}
		st := readStack(dir, e.Name(), 0, map[string]bool{})
		switch {
		case st.direct:
			direct = append(direct, e.Name())
		case st.launcher:
			launched = append(launched, e.Name())
		default:
			continue
		}
		if st.userReadenv {
			readenv = append(readenv, e.Name())
		}
	}
	switch {
	case len(direct) > 0:
		return Check{"PAM hook", Fail,
			fmt.Sprintf("%s run tokend itself from pam_exec (in %s): tokend refuses to act there, because the dynamic loader would read the PAM environment, which users may set", strings.Join(direct, ", "), dir),
			"name the launcher tokend-pam on the PAM line instead (session optional pam_exec.so quiet stdout /usr/bin/tokend-pam; see /usr/share/tokend/pam-session)"}, true
	case len(readenv) > 0:
		return Check{"PAM hook", Warn,
			fmt.Sprintf("%s run tokend and let users set PAM environment variables (pam_env with user_readenv=1, in %s): tokend-pam refuses a login whose environment names PAM_USER, PAM_TYPE or PAM_SERVICE twice, so a user can keep tokend from starting their own agent, and the other modules of the stack see what users set", strings.Join(readenv, ", "), dir),
			"remove user_readenv=1 from the pam_env lines of those services (for the locale, envfile=/etc/default/locale alone does it)"}, true
	case len(launched) > 0:
		return Check{"PAM hook", OK, fmt.Sprintf("%s run tokend-pam; users cannot set PAM environment variables there", strings.Join(launched, ", ")), ""}, true
	}
	return Check{}, false
}

// stack is what a PAM service's lines, includes expanded, do.
type stack struct {
	launcher    bool // pam_exec runs tokend-pam
	direct      bool // pam_exec runs tokend itself
	userReadenv bool // pam_env reads the users' ~/.pam_environment
}

// readStack reads the PAM file name in dir and the files it includes
// (@include, include, substack), at most 8 deep.
func readStack(dir, name string, depth int, seen map[string]bool) stack {
	var st stack
	if depth > 8 || seen[name] || strings.Contains(name, "/") {
		return st
	}
	seen[name] = true
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return st
	}
	defer f.Close()
	merge := func(o stack) {
		st.launcher = st.launcher || o.launcher
		st.direct = st.direct || o.direct
		st.userReadenv = st.userReadenv || o.userReadenv
	}
	for _, f := range pamLines(f) {
		if f[0] == "@include" && len(f) > 1 {
			merge(readStack(dir, f[1], depth+1, seen))
			continue
		}
		if len(f) < 3 {
			continue
		}
		control, module, args := f[1], filepath.Base(f[2]), f[3:]
		switch {
		case control == "include" || control == "substack":
			merge(readStack(dir, f[2], depth+1, seen))
		case module == "pam_exec.so":
			switch filepath.Base(execProgram(args)) {
			case "tokend-pam":
				st.launcher = true
			case "tokend":
				st.direct = true
			}
		case module == "pam_env.so":
			st.userReadenv = st.userReadenv || slices.Contains(args, "user_readenv=1")
		}
	}
	return st
}

// pamLines returns the fields of each line of a PAM file: comments
// dropped, continued lines joined, a [bracketed control] kept as one field.
func pamLines(f *os.File) [][]string {
	var out [][]string
	sc := bufio.NewScanner(f)
	var cont string
	for sc.Scan() {
		line := cont + sc.Text()
		if rest, ok := strings.CutSuffix(line, "\\"); ok {
			cont = rest + " "
			continue
		}
		cont = ""
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		var fields []string
		for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
			end := strings.IndexAny(line, " \t")
			if line[0] == '[' {
				end = strings.IndexByte(line, ']') + 1
			}
			if end <= 0 {
				end = len(line)
			}
			fields = append(fields, line[:end])
			line = line[end:]
		}
		if len(fields) > 0 {
			// "-session": a missing module is not logged; same stack.
			fields[0] = strings.TrimPrefix(fields[0], "-")
			out = append(out, fields)
		}
	}
	return out
}

// execProgram returns the program pam_exec runs, given its arguments:
// the first that is not one of pam_exec's options.
func execProgram(args []string) string {
	for _, a := range args {
		switch a {
		case "debug", "expose_authtok", "quiet", "quiet_log", "seteuid", "stdout":
			continue
		}
		if strings.HasPrefix(a, "log=") || strings.HasPrefix(a, "type=") {
			continue
		}
		return a
	}
	return ""
}
