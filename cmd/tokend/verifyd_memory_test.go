package main

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/memscan"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/internal/testenv/wirev1"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// Once verifyd has answered, its memory holds no copy of any token it was
// asked about, nor of its signature (base64 or raw), whatever the verdict;
// key material (the key files, unscrambled, the HKDF key, the derived keys,
// HMAC pads and pad-derived hash states) is found only in locked memory,
// and a key that was replaced is found nowhere. The requests come through
// verifyapi's client, as an agent sends them, and the first release's.
func TestNoTokenLeftInVerifydMemory(t *testing.T) {
	v := newVerifyd(t)
	pool, ap := newKeyFile(), newKeyFile()
	writeRootKey(t, filepath.Join(v.keys, token.PoolKeyName), pool)
	writeRootKey(t, filepath.Join(v.keys, "AP"), ap)
	v.start()
	pid := v.pid()

	sign := func(kid string, file []byte, iat time.Time, life time.Duration) []byte {
		t.Helper()
		tok, err := keys.Sign(file, kid, token.Claims{Issuer: "test.example", Subject: "alice@test.example", Lifetime: life, IssuedAt: iat})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	now := time.Now()
	asked := []struct {
		tok  []byte
		want token.Reason
	}{
		{sign(token.PoolKeyName, pool, now, time.Hour), token.Valid},
		{sign("AP", ap, now, time.Hour), token.Valid},
		{sign(token.PoolKeyName, newKeyFile(), now, time.Hour), token.RotatedKey},
		{sign(token.PoolKeyName, pool, now.Add(-2*time.Hour), time.Hour), token.Expired},
		{sign("GONE", newKeyFile(), now, time.Hour), token.UnknownKey},
	}
	c := verifyapi.NewClient(v.sock)
	defer c.Close()
	ask := func(tok []byte, want token.Reason) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := c.Verify(ctx, tok)
		if err != nil || r.Reason != want {
			t.Fatalf("Verify: %q, %v; want %q", r.Reason, err, want)
		}
	}
	var tokens [][]byte
	needles := map[string][]byte{}
	for _, a := range asked {
		tokens = append(tokens, a.tok)
		tokenNeedles(needles, a.tok)
		for range 3 { // on one connection, kept open and idle between requests
			ask(a.tok, a.want)
		}
	}
	// And one through the first release's client (net/http's transport):
	// what verifyd does with a request does not depend on who wrote it.
	old := wirev1.NewClient(v.sock)
	defer old.Close()
	firstRelease := sign(token.PoolKeyName, pool, now, 2*time.Hour)
	tokens = append(tokens, firstRelease)
	tokenNeedles(needles, firstRelease)
	if r, err := wirev1.Check(context.Background(), old, firstRelease); err != nil || r != token.Valid {
		t.Fatalf("the first release's client: %q, %v", r, err)
	}

	keys := func(prefix string, kid string, file []byte) {
		for name, b := range keyMaterial(t, prefix, kid, file) {
			needles[name] = b
		}
	}
	keys("key POOL", token.PoolKeyName, pool)
	keys("key AP", "AP", ap)

	// check scans verifyd until the scan is whole and finds the derived
	// keys it holds (named in held) in locked memory: keys are read again
	// now and then, in new buffers, while the old ones are wiped, and a
	// scan may pass a key's new place before it is written and its old
	// one after it is zeroed. Each scan fails the test for every copy of a
	// token, for key material outside locked memory, and for any trace of
	// a key named in gone.
	check := func(when string, held, gone []string) []memscan.Hit {
		t.Helper()
		var hits []memscan.Hit
		testenv.Eventually(t, 5*time.Second, when+": a whole scan that finds the derived keys verifyd holds", func() bool {
			var unread *memscan.Mapping
			hits, unread = tryScan(t, "verifyd", pid, needles)
			for _, h := range hits {
				isKey := strings.HasPrefix(h.Needle, "key ")
				switch {
				case !isKey:
					t.Fatalf("%s: %s at %#x in %s", when, describe(tokens, h.Needle), h.Addr, h.Mapping)
				case !h.Mapping.Locked:
					t.Fatalf("%s: %s at %#x in unlocked memory %s", when, h.Needle, h.Addr, h.Mapping)
				case slices.ContainsFunc(gone, func(p string) bool { return strings.HasPrefix(h.Needle, p+" ") }):
					t.Fatalf("%s: %s of a replaced key at %#x in %s", when, h.Needle, h.Addr, h.Mapping)
				}
			}
			for _, k := range held {
				if !slices.ContainsFunc(hits, func(h memscan.Hit) bool { return h.Needle == k+" derived" }) {
					return false
				}
			}
			return unread == nil
		})
		return hits
	}
	check("after the answers", []string{"key POOL", "key AP"}, nil)

	// A rotation: the replaced key is zeroed, the new one is locked.
	g0, err := v.generation()
	if err != nil {
		t.Fatal(err)
	}
	rotated := newKeyFile()
	renameRootKey(t, filepath.Join(v.keys, token.PoolKeyName), rotated)
	testenv.Eventually(t, 5*time.Second, "verifyd to take the new POOL key", func() bool {
		g, err := v.generation()
		return err == nil && g > g0
	})
	fresh := sign(token.PoolKeyName, rotated, time.Now(), time.Hour)
	tokens = append(tokens, fresh)
	tokenNeedles(needles, fresh)
	ask(fresh, token.Valid)
	ask(asked[0].tok, token.RotatedKey)
	keys("key new POOL", token.PoolKeyName, rotated)
	hits := check("after a rotation", []string{"key new POOL", "key AP"}, []string{"key POOL"})
	t.Logf("%d tokens asked about, %d needles, %d hits", len(tokens), len(needles), len(hits))
}
