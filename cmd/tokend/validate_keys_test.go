package main

// The agent's own key check (validate.key_dir) follows its key directory
// when the directory itself is replaced: a rotation inside the new
// directory is seen at once, not at the next periodic check.

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/token"
)

func TestValidateKeyDirReplaced(t *testing.T) {
	// The test's tokens have kid AP; the session token (kid POOL) keeps
	// its key through every change, so no refetch wakes the agent and
	// only the watch can explain what is seen.
	const kid = "AP"
	shapes := map[string]func(e *env, round int){
		"removed and made again": func(e *env, round int) {
			pool := e.userKey(token.PoolKeyName)
			if err := os.RemoveAll(e.keys); err != nil {
				t.Fatal(err)
			}
			e.mkdir(e.keys)
			e.writeFile(filepath.Join(e.keys, token.PoolKeyName), string(pool), 0o600)
			e.writeFile(filepath.Join(e.keys, kid), string(newKeyFile()), 0o600)
		},
		"moved away and another moved in": func(e *env, round int) {
			next := e.keys + ".new"
			e.mkdir(next)
			e.writeFile(filepath.Join(next, token.PoolKeyName), string(e.userKey(token.PoolKeyName)), 0o600)
			e.writeFile(filepath.Join(next, kid), string(newKeyFile()), 0o600)
			if err := os.Rename(e.keys, e.keys+".old"+strconv.Itoa(round)); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(next, e.keys); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, replace := range shapes {
		t.Run(name, func(t *testing.T) {
			// The periodic check is an hour away.
			e := newEnv(t, map[string]string{"validate.interval": `"1h"`})
			e.writeKey(kid)
			e.start()
			for round := range 2 {
				r := strconv.Itoa(round)
				before := e.signWith(e.keys, kid, "before@test.example")
				e.put("before"+r, before)
				testenv.Eventually(t, goneWithin, "the token signed before the change to be shown", func() bool {
					return e.showsToken(before)
				})

				replace(e, round)
				// While the directory is away its keys are unknown; then
				// AP is another key.
				testenv.Eventually(t, goneWithin, "the token of the old directory's key to be hidden", func() bool {
					return !e.showsToken(before)
				})
				for _, reason := range e.hiddenReasons("before" + r) {
					if reason != "rotated-key" && reason != "unknown-key" {
						t.Fatalf("hidden as %q, want rotated-key or unknown-key", reason)
					}
				}
				// The session token, had it been caught while the
				// directory was away, is back.
				testenv.Eventually(t, freshWithin, "the session token to be shown", func() bool {
					e.running()
					return e.mustStatus().Session.State == api.SessionValid && e.sessionToken() != nil
				})

				// The watch follows the new directory: a rotation inside
				// it is seen at once too.
				after := e.signWith(e.keys, kid, "after@test.example")
				e.put("after"+r, after)
				testenv.Eventually(t, goneWithin, "a token of the new directory's key to be shown", func() bool {
					return e.showsToken(after)
				})
				e.writeKey(kid)
				testenv.Eventually(t, goneWithin, "a rotation inside the new directory to hide the token", func() bool {
					return !e.showsToken(after)
				})
				if got := e.hiddenReasons("after" + r); !slices.Contains(got, "rotated-key") {
					t.Fatalf("after%s hidden as %v, want rotated-key", r, got)
				}
			}
		})
	}
}
