package main

import (
	"fmt"
	"os"
	"time"

	"github.com/tokend/tokend/internal/testenv/proc"
)

// startRuns is how many times the agent is started and stopped.
const startRuns = 10

// lifecycle times an agent's start (to READY=1, sent once the mount is up
// and the socket listens, and to the session token readable by the user)
// and its stop (SIGTERM to unmounted and exited), against the start of the
// same binary doing nothing (`tokend version`).
func (b *bench) lifecycle() error {
	const section = secStart
	users, err := b.users(1)
	if err != nil {
		return err
	}
	hs, err := b.homes("lifecycle", users)
	if err != nil {
		return err
	}
	h := hs[0]
	if err := h.writeConfig(b.verifyd.Sock, nil); err != nil {
		return err
	}
	// The watcher polls the directory from before the mount.
	if err := os.Mkdir(h.tokens, 0o700); err != nil {
		return err
	}
	if err := os.Chown(h.tokens, h.u.UID, h.u.GID); err != nil {
		return err
	}

	var ready, usable, stop, bare []time.Duration
	for range startRuns {
		w, err := b.startWatch(h.u, h.tokens, "appear", 30*time.Second)
		if err != nil {
			return err
		}
		a, err := b.startAgent(h)
		if err != nil {
			w.kill()
			return err
		}
		d, err := a.waitReady(20 * time.Second)
		if err != nil {
			w.kill()
			return err
		}
		seen, err := w.wait()
		if err != nil {
			return err
		}
		if err := b.stopAgent(a); err != nil {
			return err
		}
		ready = append(ready, d)
		usable = append(usable, seen-a.startMono)
		stop = append(stop, a.stopped)

		cmd := proc.Command(h.u, b.tokend, "version")
		t0 := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("tokend version: %v: %s", err, out)
		}
		bare = append(bare, time.Since(t0))
	}
	mReady, mUsable, mStop, mBare := medianDur(ready), medianDur(usable), medianDur(stop), medianDur(bare)
	b.startUsable, b.stopTime = mUsable, mStop
	b.add(row{section: section, figure: "agent start → mount ready (READY=1)",
		value: dur(mReady), baseline: dur(mBare) + " `tokend version`", ratio: ratio(float64(mReady) / float64(mBare)), goal: "—"})
	b.add(row{section: section, figure: "agent start → session token readable",
		value: dur(mUsable), baseline: dur(mReady) + " mount ready", ratio: ratio(float64(mUsable) / float64(mReady)), goal: "—"})
	b.add(row{section: section, figure: "SIGTERM → wiped, unmounted, exited",
		value: dur(mStop), baseline: dur(mBare) + " `tokend version`", ratio: ratio(float64(mStop) / float64(mBare)), goal: "—"})
	b.note("start and stop: medians of %d runs; \"readable\" is when the owner's read sequence first finds the token "+
		"(the fetch is the embedded issuer, in-process signing, plus one verifyd check)", startRuns)
	return nil
}
