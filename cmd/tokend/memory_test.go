package main

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/memscan"
	"github.com/tokend/tokend/internal/testenv/poll"
	"github.com/tokend/tokend/token"
)

// After `tokend wipe` the agent's memory holds no copy of any token it
// held, nor of its signature (base64 or raw), along a session's paths: a
// session fetch (the local issuer signs), a token file copied into the
// mount, reads of every file, a listing, and the validation of each token
// with the key directory. Key material (the key file, the derived key, the
// HKDF key, HMAC pads and pad-derived hash states) may be found only in
// locked memory. The copy goes through cp, which writes a token file in one
// write(2): go-fuse keeps an uncleared copy of writes under 48 bytes
// (fusefs/doc.go, "Memory").
func TestNoTokenLeftInMemoryAfterWipe(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	first := e.catAll() // the session token fetched at start
	if _, stderr, code := e.cli("fetch"); code != 0 {
		t.Fatalf("tokend fetch: exit %d: %s", code, stderr)
	}
	copied := e.sign("copied@test.example", time.Hour, "READ")
	src := filepath.Join(e.work, "copied.token")
	e.writeFile(src, string(copied)+"\n", 0o600)
	if _, stderr, code := e.runAs(e.u, "", "cp", src, filepath.Join(e.dir, "copied")); code != 0 {
		t.Fatalf("cp into the mount: exit %d: %s", code, stderr)
	}
	os.Remove(src)
	held := e.catAll() // the copy and the fetched session token
	if listed := e.tokens(true); len(listed) != 2 {
		t.Fatalf("tokend list: %+v, want the session token and the copy", listed)
	}
	tokens := append(first, held...)
	needles := map[string][]byte{}
	for _, tok := range tokens {
		tokenNeedles(needles, tok)
	}
	if len(first) != 1 || len(held) != 2 || len(needles) != 3*3 {
		t.Fatalf("read %d then %d tokens (%d needles), want 1 then 2 other ones", len(first), len(held), len(needles))
	}
	pid := e.agent.Pid()

	// The scan sees the agent's memory: before the wipe it finds the tokens
	// the store holds, in locked memory when the agent could lock.
	st, err := e.status()
	if err != nil {
		t.Fatal(err)
	}
	hits := e.scan(pid, needles)
	for _, tok := range held {
		if !slices.ContainsFunc(hits, func(h memscan.Hit) bool {
			return h.Needle == string(tok) && (h.Mapping.Locked || !st.MemoryLocked)
		}) {
			t.Fatalf("before the wipe the scan does not find %s in the store's locked memory: it cannot tell", describe(tokens, string(tok)))
		}
	}

	if _, stderr, code := e.cli("wipe"); code != 0 {
		t.Fatalf("tokend wipe: exit %d: %s", code, stderr)
	}
	for name, b := range keyNeedles(t, e.keys) {
		needles[name] = b
	}
	// Poll briefly: a check that copied a token just before the wipe
	// holds it in a locked buffer until it ends.
	var bad []memscan.Hit
	poll.Until(5*time.Second, func() bool {
		bad = bad[:0]
		for _, h := range e.scan(pid, needles) {
			if strings.HasPrefix(h.Needle, "key ") && h.Mapping.Locked {
				continue
			}
			bad = append(bad, h)
		}
		return len(bad) == 0
	})
	for _, h := range bad {
		name := h.Needle
		if !strings.HasPrefix(name, "key ") {
			name = describe(tokens, name)
		}
		t.Errorf("after the wipe: %s at %#x in %s", name, h.Addr, h.Mapping)
	}
}

// catAll reads every file of the mount as the user and returns the tokens
// they hold.
func (e *env) catAll() [][]byte {
	e.t.Helper()
	out, stderr, code := e.runAs(e.u, "", "ls", "-A1", e.dir)
	if code != 0 {
		e.t.Fatalf("ls: exit %d: %s", code, stderr)
	}
	var toks [][]byte
	for _, name := range strings.Fields(out) {
		content, stderr, code := e.runAs(e.u, "", "cat", filepath.Join(e.dir, name))
		if code != 0 {
			e.t.Fatalf("cat %s: exit %d: %s", name, code, stderr)
		}
		for _, l := range strings.Split(content, "\n") {
			if l = strings.TrimSpace(l); l != "" && l[0] != '#' {
				toks = append(toks, []byte(l))
				e.secrets = append(e.secrets, []byte(l))
			}
		}
	}
	if len(toks) == 0 {
		e.t.Fatal("the mount shows no token")
	}
	return toks
}

// tokenNeedles adds what must not be left of tok, named by the token's text
// prefixed with what it is: the text, its base64url signature and the raw
// signature.
func tokenNeedles(n map[string][]byte, tok []byte) {
	sig := tok[bytes.LastIndexByte(tok, '.')+1:]
	raw, err := base64.RawURLEncoding.DecodeString(string(sig))
	if err != nil {
		panic(err)
	}
	n[string(tok)] = tok
	n["sig\x00"+string(tok)] = sig
	n["raw\x00"+string(tok)] = raw
}

// describe names a token needle without printing the token.
func describe(tokens [][]byte, needle string) string {
	what, text := "text", needle
	if kind, rest, ok := strings.Cut(needle, "\x00"); ok {
		what, text = map[string]string{"sig": "base64 signature", "raw": "raw signature"}[kind], rest
	}
	for i, tok := range tokens {
		if string(tok) == text {
			return fmt.Sprintf("the %s of token %d", what, i)
		}
	}
	return "the " + what + " of a token"
}

// keyNeedles is the key material of the POOL key in dir, as the agent
// handles it when it checks a token or signs one (see keyMaterial).
func keyNeedles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	file, err := os.ReadFile(filepath.Join(dir, token.PoolKeyName))
	if err != nil {
		t.Fatal(err)
	}
	return keyMaterial(t, "key", token.PoolKeyName, file)
}

// keyMaterial is what deriving kid's key from a key file and computing
// HMACs with it puts in memory, each needle named with prefix: the file,
// its unscrambled bytes, the HKDF pseudorandom key, the derived key, and
// for the two HMAC keys among them (the PRK, the derived key) the padded
// blocks and the SHA-256 states after each, in both byte orders.
func keyMaterial(t *testing.T, prefix, kid string, file []byte) map[string][]byte {
	t.Helper()
	k := token.Unscramble(file)
	ikm := k
	if kid == token.PoolKeyName {
		ikm = append(bytes.Clone(k), k...)
	}
	prk, err := hkdf.Extract(sha256.New, ikm, []byte("htcondor"))
	if err != nil {
		t.Fatal(err)
	}
	n := map[string][]byte{
		prefix + " file":        file,
		prefix + " unscrambled": k,
		prefix + " hkdf prk":    prk,
		prefix + " derived":     token.DeriveKey(kid, file),
	}
	for _, name := range []string{prefix + " hkdf prk", prefix + " derived"} {
		for pad, c := range map[string]byte{"ipad": 0x36, "opad": 0x5c} {
			block := make([]byte, sha256.BlockSize)
			copy(block, n[name])
			for i := range block {
				block[i] ^= c
			}
			h := sha256.New()
			h.Write(block)
			st, err := h.(encoding.BinaryMarshaler).MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			be := st[4 : 4+sha256.Size] // after the magic: eight big-endian words
			le := make([]byte, len(be))
			for i := 0; i < len(be); i += 4 {
				le[i], le[i+1], le[i+2], le[i+3] = be[i+3], be[i+2], be[i+1], be[i]
			}
			n[name+" "+pad+" block"] = block
			n[name+" "+pad+" state"] = bytes.Clone(be)
			n[name+" "+pad+" state (little-endian)"] = le
		}
	}
	return n
}

// scan searches the agent's memory (pid) for every needle.
func (e *env) scan(pid int, needles map[string][]byte) []memscan.Hit {
	e.t.Helper()
	return scanProcess(e.t, "the agent", pid, needles)
}

// scanProcess searches the memory of what (pid) for every needle. The
// scan must be whole.
func scanProcess(t *testing.T, what string, pid int, needles map[string][]byte) []memscan.Hit {
	t.Helper()
	hits, unread := tryScan(t, what, pid, needles)
	if unread != nil {
		t.Fatalf("could not read %s's mapping %s", what, *unread)
	}
	return hits
}

// tryScan searches the memory of what (pid) for every needle. unread is a
// mapping that could not be read and is still there (nil when the scan was
// whole): memory mapped and unmapped while the scan runs (secmem buffers)
// can make a scan miss parts of a mapping.
func tryScan(t *testing.T, what string, pid int, needles map[string][]byte) (hits []memscan.Hit, unread *memscan.Mapping) {
	t.Helper()
	hits, failed, err := memscan.Scan(pid, needles)
	if err != nil {
		t.Fatalf("scanning %s's memory: %v", what, err)
	}
	if len(failed) == 0 {
		return hits, nil
	}
	now, err := memscan.Maps(pid)
	if err != nil {
		t.Fatalf("scanning %s's memory: %v", what, err)
	}
	for _, m := range failed {
		if m.Name == "[vvar]" || m.Name == "[vvar_vclock]" || m.Name == "[vsyscall]" {
			continue
		}
		// Gone, with what it held, unless something overlaps it now.
		if slices.ContainsFunc(now, func(n memscan.Mapping) bool { return n.Start < m.End && m.Start < n.End }) {
			return hits, &m
		}
	}
	return hits, nil
}
