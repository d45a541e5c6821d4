package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tokend/tokend/internal/testenv/simwire"
	"github.com/tokend/tokend/internal/testenv/verifydv1"
	"github.com/tokend/tokend/token"
)

// Across a rotation, a tool runs HTCondor's read sequence every toolPeriod
// from toolBefore runs before the key change until toolSpan after the tool
// started; runs that overlap the first toolBlind after the change are left
// out (nothing can know of the change sooner).
const (
	toolPeriod    = 30 * time.Millisecond
	toolBefore    = 30
	toolSpan      = 4 * time.Second
	toolBlind     = 100 * time.Millisecond
	gateRotations = 2
)

// toolRun is one run of the read sequence by the tool job: its start and
// end (CLOCK_MONOTONIC, ns) and the token the tools would pick ("" for
// none).
type toolRun struct {
	Start int64  `json:"start"`
	End   int64  `json:"end"`
	Pick  string `json:"pick,omitempty"`
}

// toolJob runs the read sequence on dir every period (at once after a run
// that took longer) for duration, printing each run as it ends.
func toolJob(dir, period, duration string) error {
	p, err := time.ParseDuration(period)
	if err != nil {
		return err
	}
	d, err := time.ParseDuration(duration)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	fmt.Println("ready")
	end := time.Now().Add(d)
	for next := time.Now(); next.Before(end); {
		run := toolRun{Start: int64(monotonic())}
		r, err := simwire.ReadDir(dir)
		run.End = int64(monotonic())
		if err == nil {
			run.Pick = r.Pick
		}
		if err := enc.Encode(run); err != nil {
			return err
		}
		if next = next.Add(p); next.Before(time.Now()) {
			next = time.Now() // no catching up in a burst
		}
		time.Sleep(time.Until(next))
	}
	return nil
}

// gateOutcome is how a tool fared across gateRotations rotations.
type gateOutcome struct {
	judged, bad, left int           // runs judged, without a good token, left out
	longest           time.Duration // the longest run (a tool parked at the gate)
	fresh             []time.Duration
}

// gatePhase runs a tool every 30 ms across same-name POOL rotations under
// one agent, with the gate (fetch.wait's default), and, as baselines in the
// same run, without it (fetch.wait "0s"); then both again against a
// verifyd of the first release (no refetch slots: the random jitter, what
// the issue saw), where the gate has something to wait for.
func (b *bench) gatePhase() error {
	const section = secRotation
	users, err := b.users(1)
	if err != nil {
		return err
	}
	oldSock, stopOld, err := b.startOldVerifyd("gate")
	if err != nil {
		return err
	}
	defer stopOld()
	variants := []struct {
		name  string
		sock  string
		extra map[string]string
	}{
		{"gate-on", b.verifyd.Sock, nil},
		{"gate-off", b.verifyd.Sock, map[string]string{"fetch.wait": `"0s"`}},
		{"gate-on-old", oldSock, nil},
		{"gate-off-old", oldSock, map[string]string{"fetch.wait": `"0s"`}},
	}
	out := map[string]gateOutcome{}
	for _, v := range variants {
		b.logf("%s: a tool every %s across %d rotations", v.name, toolPeriod, gateRotations)
		hs, err := b.homes(v.name, users)
		if err != nil {
			return err
		}
		h := hs[0]
		if err := h.writeConfig(v.sock, v.extra); err != nil {
			return err
		}
		a, err := b.startServing(h)
		if err != nil {
			return err
		}
		var o gateOutcome
		for range gateRotations {
			if err := b.toolAcrossRotation(a, h, &o); err != nil {
				return err
			}
		}
		if err := b.stopAgent(a); err != nil {
			return err
		}
		out[v.name] = o
	}
	on, off, onOld, old := out["gate-on"], out["gate-off"], out["gate-on-old"], out["gate-off-old"]
	r := row{section: section, figure: fmt.Sprintf("tool every %s across a rotation: runs without a good token", dur(toolPeriod)),
		value:    fmt.Sprintf("%d of %d", on.bad, on.judged),
		baseline: fmt.Sprintf("%d of %d gate off (fetch.wait 0s)", off.bad, off.judged),
		goal:     "0", verdict: verdict(float64(on.bad), 0)}
	if off.bad > 0 {
		r.ratio = ratio(float64(on.bad) / float64(off.bad))
	}
	b.add(r)
	r = row{section: section, figure: "  the same, verifyd without slots (jitter)",
		value:    fmt.Sprintf("%d of %d", onOld.bad, onOld.judged),
		baseline: fmt.Sprintf("%d of %d gate off", old.bad, old.judged)}
	if old.bad > 0 {
		r.ratio = ratio(float64(onOld.bad) / float64(old.bad))
	}
	b.add(r)
	b.add(row{section: section, figure: "  longest run of the tool (parked at the gate)",
		value: dur(on.longest), baseline: dur(off.longest) + " gate off", ratio: ratio(float64(on.longest) / float64(off.longest))})
	b.add(row{section: section, figure: "    without slots",
		value: dur(onOld.longest), baseline: dur(old.longest) + " gate off", ratio: ratio(float64(onOld.longest) / float64(old.longest))})
	b.note("gate: %d same-name POOL rotations a variant, one agent, a tool (HTCondor's read sequence as the owner) every %s from about %s before "+
		"the key change to %s after; each run judged against the key in force for all of it (the picked token's signature); runs overlapping "+
		"the first %s after the change left out (%d, %d, %d, %d); key change → fresh session token: gate on %s, gate off %s; "+
		"without slots: gate on %s, gate off %s",
		gateRotations, dur(toolPeriod), dur(toolBefore*toolPeriod), dur(toolSpan-toolBefore*toolPeriod), dur(toolBlind),
		on.left, off.left, onOld.left, old.left, durs(on.fresh), durs(off.fresh), durs(onOld.fresh), durs(old.fresh))
	return nil
}

// toolAcrossRotation runs the tool job on h's mount, rotates the pool key
// once toolBefore runs have ended, and judges every run.
func (b *bench) toolAcrossRotation(a *agent, h *home, o *gateOutcome) error {
	oldKey := token.DeriveKey(token.PoolKeyName, h.key)
	cmd := b.workerCmd(h.u, "tool", h.tokens, toolPeriod.String(), toolSpan.String())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	waited := false
	defer func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	if !sc.Scan() || sc.Text() != "ready" {
		return fmt.Errorf("tool on %s: %q: %s", h.tokens, sc.Text(), &stderr)
	}
	var runs []toolRun
	var at time.Time
	var t0 time.Duration
	for sc.Scan() {
		var r toolRun
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("tool: %v: %s", err, &stderr)
		}
		runs = append(runs, r)
		if len(runs) == toolBefore {
			if at, t0, err = b.rotate([]*home{h}); err != nil {
				return err
			}
		}
	}
	waited = true
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("tool on %s: %v: %s", h.tokens, err, &stderr)
	}
	if at.IsZero() {
		return fmt.Errorf("tool on %s: only %d runs", h.tokens, len(runs))
	}
	newKey := token.DeriveKey(token.PoolKeyName, h.key)
	for _, r := range runs {
		start, end := time.Duration(r.Start), time.Duration(r.End)
		o.longest = max(o.longest, end-start)
		key := oldKey
		switch {
		case end < t0:
		case start >= t0+toolBlind:
			key = newKey
		default:
			o.left++
			continue
		}
		o.judged++
		if r.Pick == "" || token.Verify([]byte(r.Pick), key) != nil {
			o.bad++
		}
	}
	ft, err := a.waitLog("token fetched", at, 20*time.Second)
	if err != nil {
		return err
	}
	o.fresh = append(o.fresh, ft.Sub(at))
	return nil
}

// startOldVerifyd runs, in this process, a verifyd of the first release
// (no refetch slots: agents spread their refetches by the random jitter)
// over verifyd's key directory, so that b.rotate moves both. It returns
// its socket, reachable by every user.
func (b *bench) startOldVerifyd(phase string) (string, func(), error) {
	dir := filepath.Join(b.work, "verifyd-v1-"+phase)
	if err := os.Mkdir(dir, 0o711); err != nil {
		return "", nil, err
	}
	sock := filepath.Join(dir, "verify.sock")
	s, err := verifydv1.Start(sock, token.KeyDir{Dir: b.verifyd.Keys, WantUID: 0})
	if err != nil {
		return "", nil, fmt.Errorf("the first release's verifyd: %w", err)
	}
	return sock, s.Close, nil
}

// durs lists durations, in order.
func durs(ds []time.Duration) string {
	var s []string
	for _, d := range slices.Sorted(slices.Values(ds)) {
		s = append(s, dur(d))
	}
	return strings.Join(s, ", ")
}
