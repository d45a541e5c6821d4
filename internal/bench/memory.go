package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tokend/tokend/internal/testenv/proc"
)

// idleWait is how long agents sit idle before their memory is read: long
// enough for the start's garbage to be collected and the Go runtime's
// background scavenger to return some of it.
const idleWait = 5 * time.Second

// mem is one process's memory from /proc, in KiB.
type mem struct {
	rss, rssAnon, rssFile int64 // /proc/PID/status
	pss, pssAnon, pssFile int64 // /proc/PID/smaps_rollup
	// By kind of mapping (/proc/PID/smaps): RSS and PSS.
	kinds map[string][2]int64
}

// Kinds of mappings, in the order the notes list them.
var memKinds = []string{"tokend binary (text, rodata, data)", "shared libraries", "anonymous (Go heap, stacks, runtime)", "mlocked token pages", "other"}

// readMem reads pid's memory. exe is the path of the program's binary.
func readMem(pid int, exe string) (mem, error) {
	m := mem{kinds: map[string][2]int64{}}
	fields := func(file string, want map[string]*int64) error {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
		if err != nil {
			return err
		}
		for line := range strings.SplitSeq(string(data), "\n") {
			name, rest, ok := strings.Cut(line, ":")
			if p := want[name]; ok && p != nil {
				*p, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			}
		}
		return nil
	}
	if err := fields("status", map[string]*int64{"VmRSS": &m.rss, "RssAnon": &m.rssAnon, "RssFile": &m.rssFile}); err != nil {
		return m, err
	}
	if err := fields("smaps_rollup", map[string]*int64{"Pss": &m.pss, "Pss_Anon": &m.pssAnon, "Pss_File": &m.pssFile}); err != nil {
		return m, err
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return m, err
	}
	defer f.Close()
	var kind string
	var rss, pss int64
	flush := func() {
		if kind != "" {
			k := m.kinds[kind]
			m.kinds[kind] = [2]int64{k[0] + rss, k[1] + pss}
		}
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			flush()
			rss, pss = 0, 0
			path := ""
			if len(f) >= 6 {
				path = f[5]
			}
			switch {
			case path == exe:
				kind = memKinds[0]
			case strings.HasPrefix(path, "/"):
				kind = memKinds[1]
			case path == "" || path == "[heap]" || path == "[stack]" || strings.HasPrefix(path, "[anon"):
				kind = memKinds[2]
			default:
				kind = memKinds[4]
			}
			continue
		}
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			rss = n
		case "Pss:":
			pss = n
		case "Locked:":
			if n > 0 && kind == memKinds[2] {
				kind = memKinds[3]
			}
		}
	}
	flush()
	return m, sc.Err()
}

// breakdown describes m by kind of mapping.
func (m mem) breakdown() string {
	var parts []string
	for _, k := range memKinds {
		if v, ok := m.kinds[k]; ok && v[0] > 0 {
			parts = append(parts, fmt.Sprintf("%s %s (PSS %s)", k, kib(v[0]), kib(v[1])))
		}
	}
	return strings.Join(parts, ", ")
}

// sshAgentRSS starts an idle `ssh-agent -D` as u and returns its RSS, the
// baseline the issue names.
func (b *bench) sshAgentRSS(h *home) (int64, error) {
	bin, err := exec.LookPath("ssh-agent")
	if err != nil {
		return 0, fmt.Errorf("ssh-agent is not installed")
	}
	p, err := proc.Start(proc.Command(h.u, bin, "-D", "-a", filepath.Join(h.dir, "ssh-agent.sock")), nil)
	if err != nil {
		return 0, err
	}
	defer p.Stop(10 * time.Second)
	time.Sleep(time.Second)
	m, err := readMem(p.Pid(), bin)
	return m.rss, err
}

// idleAgent starts an agent for u in a new directory named
// phase, following verifyd, gives it 16 tokens, lets it sit idle, and
// reads its memory. env is added to the agent's environment.
func (b *bench) idleAgent(phase string, u proc.User, env ...string) (*agent, mem, error) {
	hs, err := b.homes(phase, []proc.User{u})
	if err != nil {
		return nil, mem{}, err
	}
	h := hs[0]
	if err := h.writeConfig(b.verifyd.Sock, nil); err != nil {
		return nil, mem{}, err
	}
	a, err := b.startServing(h, env...)
	if err != nil {
		return nil, mem{}, err
	}
	if err := b.fill(h); err != nil {
		return nil, mem{}, err
	}
	time.Sleep(idleWait)
	m, err := readMem(a.pid(), b.tokend)
	return a, m, err
}

// memory measures one idle agent holding 16 tokens against an idle
// ssh-agent, and again with the Go runtime told to keep its heap small
// (GOGC, GOMEMLIMIT), to show how much of the RSS the garbage collector's
// settings can win back.
func (b *bench) memory() error {
	const section = secMemory
	users, err := b.users(1)
	if err != nil {
		return err
	}
	a, m, err := b.idleAgent("memory", users[0])
	if err != nil {
		return err
	}
	b.oneRSS = m.rss
	r := row{section: section, figure: "one idle agent, 16 tokens: RSS", value: kib(m.rss), goal: "≤ 8 MiB", verdict: verdict(float64(m.rss), 8*1024)}
	if ssh, err := b.sshAgentRSS(a.h); err == nil {
		b.sshRSS = ssh
		r.baseline, r.ratio = kib(ssh)+" idle ssh-agent", ratio(float64(m.rss)/float64(ssh))
	} else {
		r.baseline = "no baseline: " + err.Error()
	}
	b.add(r)
	b.add(row{section: section, figure: "  of which anonymous / file-backed", value: kib(m.rssAnon) + " / " + kib(m.rssFile)})
	b.add(row{section: section, figure: "one idle agent: PSS (binary shared with verifyd only)", value: kib(m.pss)})
	b.note("one idle agent's RSS by mapping: %s. GOGC and GOMEMLIMIT unset (Go defaults); file-backed pages "+
		"are the tokend binary and libc, shared by every agent on the host", m.breakdown())
	if err := b.stopAgent(a); err != nil {
		return err
	}

	const tuned = "GOGC=25 GOMEMLIMIT=4MiB"
	a, mt, err := b.idleAgent("tuned", users[0], strings.Fields(tuned)...)
	if err != nil {
		return err
	}
	b.add(row{section: section, figure: "  the same with " + tuned, value: kib(mt.rss),
		baseline: kib(m.rss) + " Go defaults", ratio: ratio(float64(mt.rss) / float64(m.rss))})
	return b.stopAgent(a)
}

// fill writes 15 tokens through h's mount (16 with the session token) and
// reads the directory once, as the user's tools would.
func (b *bench) fill(h *home) error {
	toks, err := h.signN(15)
	if err != nil {
		return err
	}
	if err := b.putTokens(h, "t", toks); err != nil {
		return err
	}
	w, err := b.startWatch(h.u, h.tokens, "appear", 10*time.Second)
	if err != nil {
		return err
	}
	_, err = w.wait()
	return err
}
