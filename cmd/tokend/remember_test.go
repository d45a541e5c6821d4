package main

// End-to-end tests of reversible hiding: a rotated-key token leaves the
// mount at once but is kept in locked memory, and comes back with the same
// name and bytes when its key arrives; a key file that blinks costs
// nothing; a refused write leaves no file behind.

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/token"
)

// signNext signs a token of the pool with the key file next, which the pool
// does not have yet (the site rolled it out elsewhere first).
func (e *env) signNext(next []byte, sub string) []byte {
	e.t.Helper()
	tok, err := keys.Sign(next, token.PoolKeyName, token.Claims{Issuer: "test.example", Subject: sub, Lifetime: time.Hour, IssuedAt: time.Now()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.secrets = append(e.secrets, tok)
	return tok
}

// remembered reports whether `tokend list --all` says a token of file name
// is hidden and kept.
func (e *env) remembered(name string) bool {
	e.t.Helper()
	return slices.ContainsFunc(e.listed(name), func(t api.Token) bool {
		return t.State == api.StateHidden && t.Remembered && t.Reason == "rotated-key"
	})
}

// A token signed with the pool's next key is hidden as rotated-key and
// kept; after the rotation to that key it is back, same name, same bytes.
// tokend rm removes a name that only has kept tokens.
func TestNextKeyReturns(t *testing.T) {
	check := func(t *testing.T, e *env, rotate func(next []byte)) {
		next := newKeyFile()
		tok := e.signNext(next, "next@test.example")
		e.put("next", tok)
		e.put("dropped", e.signNext(next, "dropped@test.example"))
		testenv.Eventually(t, goneWithin, "the tokens of the next key to be hidden and kept", func() bool {
			return e.remembered("next") && e.remembered("dropped") && !e.showsToken(tok)
		})
		if st := e.mustStatus(); st.Remembered < 2 {
			t.Fatalf("status: %d tokens kept, want 2", st.Remembered)
		}
		if _, stderr, code := e.cli("rm", "dropped"); code != 0 {
			t.Fatalf("tokend rm of a name with only a kept token: exit %d: %s", code, stderr)
		}
		if l := e.listed("dropped"); len(l) != 0 {
			t.Fatalf("after tokend rm: %+v", l)
		}

		rotate(next)
		e.waitShown("next", tok)
		if l := e.listed("next"); !slices.ContainsFunc(l, func(t api.Token) bool { return t.State == api.StateValid }) {
			t.Fatalf("tokend list: %+v, want next shown", l)
		}
		if e.remembered("next") {
			t.Fatalf("next is still kept after it came back: %+v", e.listed("next"))
		}
	}
	t.Run("key_dir", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		e.start()
		check(t, e, func(next []byte) { e.setUserKey(token.PoolKeyName, next) })
	})
	t.Run("verifyd", func(t *testing.T) {
		t.Parallel()
		e, v := startWithVerifyd(t)
		check(t, e, func(next []byte) {
			e.setUserKey(token.PoolKeyName, next)
			renameRootKey(t, filepath.Join(v.keys, token.PoolKeyName), next)
		})
	})
}

// A POOL file removed and restored within 0.2 s loses nothing: shown
// tokens keep their bytes, a kept token stays kept (a miss at most), and
// no session token is fetched.
func TestKeyBlink(t *testing.T) {
	blink := func(t *testing.T, e *env, path string, moved func() bool) {
		good := e.sign("good@test.example", time.Hour)
		e.put("good", good)
		next := e.signNext(newKeyFile(), "next@test.example")
		e.put("next", next)
		testenv.Eventually(t, goneWithin, "the token of another key to be kept", func() bool {
			return e.remembered("next")
		})
		e.waitShown("good", good)
		session := e.sessionToken()
		fetched := e.mustStatus().Session.LastFetch

		file, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var st os.FileInfo
		if st, err = os.Stat(path); err != nil {
			t.Fatal(err)
		}
		restored := make(chan error, 1)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(150*time.Millisecond, func() {
			err := os.WriteFile(path, file, 0o600)
			if err == nil {
				err = os.Chown(path, int(st.Sys().(*syscall.Stat_t).Uid), int(st.Sys().(*syscall.Stat_t).Gid))
			}
			restored <- err
		})
		if err := <-restored; err != nil {
			t.Fatal(err)
		}
		since := time.Now()
		testenv.Eventually(t, goneWithin, "the key change to be seen and a check pass to follow", func() bool {
			e.running()
			st := e.mustStatus()
			return moved() && st.Validation.LastCheck != nil && st.Validation.LastCheck.After(since)
		})
		shown := e.shown()
		for name, tok := range map[string][]byte{"good": good, "tokend-session": session} {
			if !slices.Equal(shown[name], []string{string(tok)}) {
				t.Errorf("%s: the tools read %q, want the token from before the blink", name, shown[name])
			}
		}
		if !e.remembered("next") {
			t.Errorf("the kept token was lost: %+v", e.listed("next"))
		}
		if st := e.mustStatus(); !st.Session.LastFetch.Equal(*fetched) {
			t.Errorf("the blink made the agent fetch: last fetch %v, was %v", st.Session.LastFetch, fetched)
		}
	}
	t.Run("key_dir", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		e.start()
		changes := func() int {
			return strings.Count(e.log.String(), `msg="signing keys changed; re-checking every token"`)
		}
		blink(t, e, filepath.Join(e.keys, token.PoolKeyName), func() bool { return changes() >= 2 })
	})
	t.Run("verifyd", func(t *testing.T) {
		t.Parallel()
		e, v := startWithVerifyd(t)
		gen := e.mustStatus().Validation.Generation
		blink(t, e, filepath.Join(v.keys, token.PoolKeyName), func() bool {
			return e.mustStatus().Validation.Generation >= gen+2
		})
	})
}

// A refused write through the mount leaves no file behind: the name never
// appears, in the directory or in tokend list.
func TestRefusedCreateLeavesNothing(t *testing.T) {
	e := newEnv(t, nil)
	e.start()
	path := filepath.Join(e.dir, "new")
	_, _, code := e.runAs(e.u, "", "sh", "-c", "echo garbage > "+path)
	if code == 0 {
		t.Fatal("writing garbage as a token file succeeded")
	}
	out, stderr, code := e.runAs(e.u, "", "ls", "-a", e.dir)
	if code != 0 {
		t.Fatalf("ls: exit %d: %s", code, stderr)
	}
	if slices.Contains(strings.Fields(out), "new") {
		t.Fatalf("ls shows the refused file:\n%s", out)
	}
	if l := e.listed("new"); len(l) != 0 {
		t.Fatalf("tokend list --all shows the refused file: %+v", l)
	}
}
