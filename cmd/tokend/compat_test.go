package main

// The agent with a verifyd of the first release: no trust domain, no max
// age, no cannot_tell, 404 for anything new.

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/verifydv1"
	"github.com/tokend/tokend/token"
)

// With an old verifyd the default pool's trust domain stays unknown (it
// claims every other issuer), a rotation still hides the stale tokens as
// rotated-key and brings a fresh session token, and the token of a
// configured other pool is untouched.
func TestOldVerifyd(t *testing.T) {
	testenv.RequireRoot(t, "the old verifyd reads root-owned key files")
	root, err := os.MkdirTemp("", "tokend-verifydv1-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	keys, sock := filepath.Join(root, "passwords.d"), filepath.Join(root, "verify.sock")
	if err := os.Chmod(root, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}

	e := newEnv(t, map[string]string{"validate.verifyd": strconv.Quote(sock), "validate.key_dir": `""`})
	e.addPool("other", "other.example")
	e.set(map[string]string{"pools.other.validate.key_dir": ""})
	writeRootKey(t, filepath.Join(keys, token.PoolKeyName), e.userKey(token.PoolKeyName))
	old, err := verifydv1.Start(sock, token.KeyDir{Dir: keys, WantUID: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(old.Close)
	e.start()
	e.waitVerifyd(true)
	if p := e.poolStatus(config.DefaultPool); p.TrustDomain != "" || p.TrustFrom != api.TrustFromUnknown || !p.ClaimsOther {
		t.Fatalf("the default pool with an old verifyd: %+v, want an unknown trust domain that claims other issuers", p)
	}

	flock := e.foreign("other.example", "me@other.example")
	e.put("flock", flock)
	stale := e.sign("user@test.example", time.Hour)
	e.put("stale", stale)
	e.waitShown("flock", flock)
	e.waitShown("stale", stale)
	session := e.sessionToken()

	file := newKeyFile()
	e.setUserKey(token.PoolKeyName, file)
	renameRootKey(t, filepath.Join(keys, token.PoolKeyName), file)
	testenv.Eventually(t, goneWithin, "the stale tokens to leave the mount", func() bool {
		return !e.showsToken(stale) && !e.showsToken(session)
	})
	if got := e.hiddenReasons("stale"); !slices.Equal(got, []string{"rotated-key"}) {
		t.Fatalf("the stale token hidden as %v, want rotated-key", got)
	}
	e.waitFresh(session)
	if got := e.shown()["flock"]; !slices.Equal(got, []string{string(flock)}) {
		t.Fatalf("the other pool's token after the rotation: the tools read %q", got)
	}
}
