package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// reading times HTCondor's read sequence on a real agent's mount against
// the same files on tmpfs.
//
// The mount is served by a real agent run as a bench user, and the reads
// are made by the worker run as that user, because that is exactly what an
// HTCondor tool meets: the agent's own mount options (through fusermount3),
// its cache settings and invalidations, and a reader in another process.
// (Mounting fusefs in this process as root would measure the same kernel
// path, but not the shipped configuration.) The tmpfs copy is read by the
// same worker in alternating slices, so both see the same machine load.
func (b *bench) reading() error {
	const section = secRead
	users, err := b.users(1)
	if err != nil {
		return err
	}
	hs, err := b.homes("read", users)
	if err != nil {
		return err
	}
	h := hs[0]
	// The user's key copy validates: with verifyd, each of the 127 writes
	// below would re-check every token through it.
	if err := h.writeConfig("", nil); err != nil {
		return err
	}
	tmpfs := filepath.Join(b.shm, "read")
	if err := os.Mkdir(tmpfs, 0o700); err != nil {
		return err
	}
	if err := os.Chown(tmpfs, h.u.UID, h.u.GID); err != nil {
		return err
	}
	a, err := b.startServing(h)
	if err != nil {
		return err
	}

	have := 1 // the session token
	for _, n := range []int{1, 16, 128} {
		toks, err := h.signN(n - have)
		if err != nil {
			return err
		}
		if err := b.putTokens(h, fmt.Sprintf("t%03d", n), toks); err != nil {
			return err
		}
		have = n
		time.Sleep(300 * time.Millisecond) // let the agent's re-check of the new tokens pass
		par := 0
		if n == 16 {
			par = 32
		}
		b.logf("reading %d files", n)
		out, err := b.runWorker(h.u, nil, "read", h.tokens, tmpfs, strconv.Itoa(b.rounds), strconv.Itoa(par))
		if err != nil {
			return err
		}
		var r readResult
		if err := json.Unmarshal(out, &r); err != nil {
			return fmt.Errorf("read job: %v: %s", err, out)
		}
		if r.Files != n {
			return fmt.Errorf("the read sequence found %d files, want %d", r.Files, n)
		}
		b.add(row{
			section: section, figure: fmt.Sprintf("read sequence, %d file%s", n, map[bool]string{true: "s"}[n > 1]),
			value: ns(r.Sequence.Mount), baseline: ns(r.Sequence.Tmpfs) + " tmpfs",
			ratio: ratio(r.Sequence.Ratio), goal: "≤ 2x", verdict: verdict(r.Sequence.Ratio, 2),
		})
		if n == 1 {
			b.add(row{
				section: section, figure: "open + read + close, one file",
				value: ns(r.OpenRead.Mount), baseline: ns(r.OpenRead.Tmpfs) + " tmpfs",
				ratio: ratio(r.OpenRead.Ratio), goal: "≤ 2x", verdict: verdict(r.OpenRead.Ratio, 2),
			})
		}
		if p := r.Parallel; p != nil {
			b.add(row{
				section: section, figure: fmt.Sprintf("%d parallel readers, %d files (sequences)", par, n),
				value: perSec(p.Mount), baseline: perSec(p.Tmpfs) + " tmpfs",
				ratio: ratio(p.Ratio), goal: "—",
			})
		}
	}
	b.note("reading: median of %d alternating 40 ms slices (mount, tmpfs); the sequence is internal/condor.Read "+
		"(readdir, sort, lstat, stat, open, fstat, one read of st_size, fstat, close) as the mount's owner, "+
		"against a real agent's mount and a copy of its files in /dev/shm", b.rounds)
	return b.stopAgent(a)
}
