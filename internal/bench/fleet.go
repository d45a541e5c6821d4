package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tokend/tokend/config"
)

// startConcurrency bounds how many fleet agents start at once.
const startConcurrency = 8

// fleetSize returns how many agents the fleet can have on this machine, and
// why it is fewer than asked for ("" when it is not).
func (b *bench) fleetSize() (int, string) {
	n := b.fleet
	var why []string
	// fusermount3 refuses more than mount_max user mounts (fuse.conf,
	// default 1000).
	mountMax := 1000
	if f, err := os.Open("/etc/fuse.conf"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
			if ok && strings.TrimSpace(k) == "mount_max" {
				if m, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					mountMax = m
				}
			}
		}
		f.Close()
	}
	fuseMounts := 0
	if data, err := os.ReadFile("/proc/mounts"); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 2 && strings.HasPrefix(f[2], "fuse") {
				fuseMounts++
			}
		}
	}
	if room := mountMax - fuseMounts - 1; n > room {
		n = max(room, 0)
		why = append(why, fmt.Sprintf("fuse.conf mount_max = %d with %d FUSE mounts already", mountMax, fuseMounts))
	}
	// Memory: allow 40 MiB an agent while they start (much less when idle).
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				if fit := int(kb / (40 << 10)); n > fit {
					n = fit
					why = append(why, fmt.Sprintf("MemAvailable %s fits %d agents at 40 MiB each", kib(kb), fit))
				}
			}
		}
	}
	return n, strings.Join(why, "; ")
}

// fleetPhase runs idle agents of different users, each holding 16 tokens
// and following verifyd, and measures their total PSS; then rotates the
// pool key once and measures how their refetches spread out, and how fast
// they all hid the stale tokens; then stops them all at once.
func (b *bench) fleetPhase() error {
	const section = secMemory
	n, why := b.fleetSize()
	if n < 2 {
		b.skip(section, "fleet figures", fmt.Sprintf("room for %d agents only (%s)", n, why))
		return nil
	}
	if why != "" {
		b.note("fleet: %d agents instead of %d: %s", n, b.fleet, why)
	}
	b.logf("fleet of %d agents (users %s..%s)", n, benchUser(0), benchUser(n-1))
	users, err := b.users(n)
	if err != nil {
		return err
	}
	hs, err := b.homes("fleet", users)
	if err != nil {
		return err
	}
	agents := make([]*agent, n)
	errs := make([]error, n)
	sem := make(chan struct{}, startConcurrency)
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = func() error {
				if err := h.writeConfig(b.verifyd.Sock, nil); err != nil {
					return err
				}
				a, err := b.startAgent(h)
				if err != nil {
					return err
				}
				agents[i] = a
				if _, err := a.waitReady(60 * time.Second); err != nil {
					return err
				}
				if _, err := a.waitLog("token fetched", a.start, 60*time.Second); err != nil {
					return err
				}
				return b.fill(h)
			}()
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	time.Sleep(idleWait)
	var pss, rss int64
	for _, a := range agents {
		m, err := readMem(a.pid(), b.tokend)
		if err != nil {
			return err
		}
		pss += m.pss
		rss += m.rss
	}
	r := row{section: section, figure: fmt.Sprintf("%d idle agents of %d users, 16 tokens each: total PSS", n, n), value: kib(pss)}
	if b.oneRSS > 0 {
		r.baseline = fmt.Sprintf("%s = %d × one agent's RSS", kib(int64(n)*b.oneRSS), n)
		r.ratio = ratio(float64(pss) / float64(int64(n)*b.oneRSS))
	}
	b.add(r)
	r = row{section: section, figure: "  PSS per agent in the fleet", value: kib(pss / int64(n))}
	if b.sshRSS > 0 {
		r.baseline, r.ratio = kib(b.sshRSS)+" idle ssh-agent RSS", ratio(float64(pss/int64(n))/float64(b.sshRSS))
	}
	b.add(r)
	b.note("fleet: sum of RSS %s (shared pages counted %d times), sum of PSS %s", kib(rss), n, kib(pss))

	if err := b.fleetRotation(agents, hs); err != nil {
		return err
	}

	b.stopAll()
	var stops []time.Duration
	for _, a := range agents {
		stops = append(stops, a.stopped)
	}
	r = row{section: secStart, figure: fmt.Sprintf("SIGTERM → exited, %d agents stopped at once", n),
		value: fmt.Sprintf("%s (max %s)", dur(medianDur(stops)), dur(slices.Max(stops)))}
	if b.stopTime > 0 {
		r.baseline, r.ratio = dur(b.stopTime)+" one agent alone", ratio(float64(medianDur(stops))/float64(b.stopTime))
	}
	b.add(r)
	return nil
}

// fleetRotation rotates the pool key once under the whole fleet. The
// agents' logs say when each hid its stale tokens and fetched a fresh one
// (slog times, millisecond precision).
func (b *bench) fleetRotation(agents []*agent, hs []*home) error {
	const section = secRotation
	n := len(agents)
	cpu0 := cpuOf(agents)
	at, _, err := b.rotate(hs)
	if err != nil {
		return err
	}
	defer func() {
		used := cpuOf(agents) - cpu0
		b.note("fleet rotation: the agents used %s of CPU time (user and system) from the key change until all were fresh, %s each",
			dur(used), dur(used/time.Duration(n)))
	}()
	var fetched, starts []time.Time
	var hidden []time.Duration
	for _, a := range agents {
		ft, err := a.waitLog("token fetched", at, 30*time.Second)
		if err != nil {
			return err
		}
		fetched = append(fetched, ft)
		st, ok := fetchStart(a.log.String(), ft)
		if !ok {
			return fmt.Errorf("agent of %s: no took= in its \"token fetched\" line:\n%s", a.h.u.Name, a.log)
		}
		starts = append(starts, st)
		last := time.Time{}
		for _, t := range logTimes(a.log.String(), "token hidden") {
			if !t.Before(at.Truncate(time.Millisecond)) && t.After(last) {
				last = t
			}
		}
		if last.IsZero() {
			return fmt.Errorf("agent of %s logged no hidden token after the rotation:\n%s", a.h.u.Name, a.log)
		}
		hidden = append(hidden, last.Sub(at))
	}
	worst := slices.Max(hidden)
	b.add(row{section: section, figure: fmt.Sprintf("key change → stale tokens hidden, %d agents (agent logs)", n),
		value: fmt.Sprintf("%s (max %s)", dur(medianDur(hidden)), dur(worst)), goal: "< 1 s", verdict: verdict(float64(worst), float64(time.Second-1))})
	// verifyd's config is empty: refetch_rate is its default.
	rate := config.DefaultRefetchRate
	lastFresh := slices.MaxFunc(fetched, time.Time.Compare).Sub(at)
	ideal := time.Duration(float64(n) / rate * float64(time.Second))
	b.add(row{section: section, figure: fmt.Sprintf("key change → all %d agents fresh", n),
		value: dur(lastFresh), baseline: dur(ideal) + " = N/refetch_rate", ratio: ratio(float64(lastFresh) / float64(ideal)),
		goal: "≤ 1.5 s", verdict: verdict(float64(lastFresh), float64(1500*time.Millisecond))})
	window := 100 * time.Millisecond
	busiest := maxInWindow(starts, window)
	limit := int(rate * window.Seconds())
	first, last := slices.MinFunc(starts, time.Time.Compare), slices.MaxFunc(starts, time.Time.Compare)
	b.add(row{section: section, figure: "  fetch starts in the busiest 100 ms (half-open)",
		value:    fmt.Sprintf("%d", busiest),
		baseline: fmt.Sprintf("%.1f if spread evenly over the span", float64(n)*window.Seconds()/max(last.Sub(first).Seconds(), window.Seconds())),
		goal:     fmt.Sprintf("≤ %d (refetch_rate %v/s)", limit, rate), verdict: verdict(float64(busiest), float64(limit))})
	b.add(row{section: section, figure: "  span of the fetch starts, first to last",
		value: dur(last.Sub(first)), baseline: dur(ideal) + " = N/refetch_rate", ratio: ratio(float64(last.Sub(first)) / float64(ideal))})
	b.note("fleet rotation: fetch starts (a \"token fetched\" line's time less its took=, millisecond precision; the fetch is local signing, "+
		"standing in for the schedd) per 100 ms after the key change: %v; the agents hid the stale tokens %s–%s after it",
		histogram(starts, at.Truncate(time.Millisecond), window), dur(slices.Min(hidden)), dur(worst))
	return nil
}

// fetchStart returns when the fetch that logged "token fetched" at ft began:
// that line's time less its took= (both to the millisecond).
func fetchStart(log string, ft time.Time) (time.Time, bool) {
	for line := range strings.SplitSeq(log, "\n") {
		ts, ok := strings.CutPrefix(line, "time=")
		if !ok || !strings.Contains(line, " msg=\"token fetched\" ") {
			continue
		}
		ts, _, _ = strings.Cut(ts, " ")
		if t, err := time.Parse(time.RFC3339Nano, ts); err != nil || !t.Equal(ft) {
			continue
		}
		_, rest, ok := strings.Cut(line, " took=")
		if !ok {
			continue
		}
		rest, _, _ = strings.Cut(rest, " ")
		if took, err := time.ParseDuration(rest); err == nil {
			return ft.Add(-took), true
		}
	}
	return time.Time{}, false
}

// cpuOf sums the agents' CPU time, user and system (/proc/PID/stat,
// utime and stime, in clock ticks of 10 ms).
func cpuOf(agents []*agent) time.Duration {
	var t time.Duration
	for _, a := range agents {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.p.Pid()))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.Atoi(f[11])
		s, _ := strconv.Atoi(f[12])
		t += time.Duration(u+s) * 10 * time.Millisecond
	}
	return t
}
