package verifyd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/internal/testenv/wirev1"
	"github.com/tokend/tokend/token"
)

// TestPreviousReleaseClient: an agent of the first release (its client and
// verdict mapping, frozen in wirev1) keeps working with today's verifyd,
// which knows its trust domain and a max age. Verdicts on its own issuer's
// tokens are what they were; another issuer's token comes back with reason
// "" (that agent keeps it shown, which is right: the tools skip it); a
// token past SEC_TOKEN_MAX_AGE is expired, as the servers treat it; the
// long poll wakes at a rotation.
func TestPreviousReleaseClient(t *testing.T) {
	noCondor(t)
	t.Setenv("_CONDOR_SEC_TOKEN_MAX_AGE", "3600")
	f := newRotation(t)
	o := fast(f.dir)
	o.TrustDomain = "example.org"
	ts := start(t, o, nil)
	old := wirev1.NewClient(ts.socket)
	defer old.Close()
	ctx := context.Background()

	now := time.Now()
	for name, c := range map[string]struct {
		raw  []byte
		want token.Reason
	}{
		"POOL":                     {f.tOldPool, token.Valid},
		"AP":                       {f.tOldAP, token.Valid},
		"POOL, another key":        {f.tNewPool, token.RotatedKey},
		"no key file":              {f.tExtra, token.UnknownKey},
		"malformed":                {[]byte("not.a.token"), token.Malformed},
		"expired":                  {signAs(t, "example.org", "POOL", f.oldPool, now.Add(-3*time.Hour), time.Hour), token.Expired},
		"past SEC_TOKEN_MAX_AGE":   {signAs(t, "example.org", "POOL", f.oldPool, now.Add(-2*time.Hour), 24*time.Hour), token.Expired},
		"another issuer, POOL":     {signAs(t, "other.example", "POOL", keys.NewFile(), now, time.Hour), token.Valid},
		"another issuer, no file":  {signAs(t, "other.example", "NONE", keys.NewFile(), now, time.Hour), token.Valid},
		"another issuer, rotated":  {signAs(t, "other.example", "AP", f.newAP, now, time.Hour), token.Valid},
		"another issuer, very old": {signAs(t, "other.example", "POOL", f.oldPool, now.Add(-48*time.Hour), 0), token.Valid},
	} {
		r, err := wirev1.Check(ctx, old, c.raw)
		if err != nil || r != c.want {
			t.Errorf("%s: %q, %v; want %q", name, r, err, c.want)
		}
	}
	// No verdict stays no verdict for that release: a refused key is 503.
	if err := os.Chmod(filepath.Join(f.dir, "AP"), 0o644); err != nil {
		t.Fatal(err)
	}
	g0, err := old.Generation(ctx)
	if err != nil || g0 != ts.Generation() {
		t.Fatalf("Generation: %d, %v", g0, err)
	}
	g1, err := old.WaitChange(ctx, g0)
	if err != nil || g1 != g0+1 {
		t.Fatalf("WaitChange after AP was refused: %d, %v; want %d", g1, err, g0+1)
	}
	if _, err := wirev1.Check(ctx, old, f.tOldAP); !errors.Is(err, wirev1.ErrCannotTell) || !errors.Is(err, wirev1.ErrUnavailable) {
		t.Fatalf("AP refused: %v; want cannot tell (503)", err)
	}

	// A rotation wakes the long poll, and the verdicts follow.
	got := make(chan uint64, 1)
	go func() {
		g, _ := old.WaitChange(ctx, g1)
		got <- g
	}()
	testenv.Eventually(t, 5*time.Second, "the poll to wait", func() bool { return ts.waiting.Load() > 0 })
	tmp := filepath.Join(t.TempDir(), "POOL")
	writeKey(t, tmp, f.newPool)
	if err := os.Rename(tmp, filepath.Join(f.dir, "POOL")); err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-got:
		if g != g1+1 {
			t.Fatalf("WaitChange after the rotation: %d, want %d", g, g1+1)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll did not wake at the rotation")
	}
	if r, err := wirev1.Check(ctx, old, f.tOldPool); err != nil || r != token.RotatedKey {
		t.Errorf("old POOL token after the rotation: %q, %v; want rotated-key", r, err)
	}
	if r, err := wirev1.Check(ctx, old, f.tNewPool); err != nil || r != token.Valid {
		t.Errorf("new POOL token after the rotation: %q, %v; want valid", r, err)
	}
}
