package validate

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/internal/testenv/verifydv1"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
	"github.com/tokend/tokend/verifyd"
)

// verifydTokens makes a key directory with a POOL key and tokens of every
// verdict verifyd gives, more than one batch of them.
func verifydTokens(t *testing.T) (dir string, raws [][]byte, ts []*token.Token) {
	t.Helper()
	dir = t.TempDir()
	pool := keys.NewFile()
	if err := keys.Write(filepath.Join(dir, "POOL"), pool); err != nil {
		t.Fatal(err)
	}
	claims := token.Claims{Issuer: "pool.example", Subject: "alice@pool.example", Lifetime: time.Hour}
	for i := range verifyapi.MaxBatchTokens + 6 {
		file, kid := pool, "POOL"
		switch i % 3 {
		case 1:
			file = keys.NewFile() // rotated-key
		case 2:
			kid = "GONE" // unknown-key
		}
		raw, err := keys.Sign(file, kid, claims)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := token.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		raws, ts = append(raws, raw), append(ts, tok)
	}
	return dir, raws, ts
}

func sockIn(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vb") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return filepath.Join(d, "verify.sock")
}

// checkEach is what CheckKeys must agree with: CheckKey on each token.
func checkEach(t *testing.T, v *Verifyd, raws [][]byte, ts []*token.Token) []token.Reason {
	t.Helper()
	want := make([]token.Reason, len(raws))
	for i := range raws {
		r, err := v.CheckKey(context.Background(), raws[i], ts[i])
		if err != nil {
			t.Fatalf("CheckKey %d: %v", i, err)
		}
		want[i] = r
	}
	return want
}

// CheckKeys against a verifyd with batches: in batches of at most
// MaxBatchTokens, each verdict what the token gets alone.
func TestVerifydCheckKeysBatches(t *testing.T) {
	dir, raws, ts := verifydTokens(t)
	s, err := verifyd.New(verifyd.Options{PasswordDir: dir, Rate: 1e6, Burst: 1e6, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	sock := sockIn(t)
	l, err := verifyd.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })

	v := &Verifyd{Client: verifyapi.NewClient(sock)}
	defer v.Client.Close()
	want := checkEach(t, v, raws, ts)
	got, errs := v.CheckKeys(ctx, raws, ts)
	for i := range raws {
		if errs[i] != nil || got[i] != want[i] {
			t.Errorf("token %d: batch %q, %v; alone %q", i, got[i], errs[i], want[i])
		}
	}
	if v.noBatch.Load() {
		t.Fatal("a verifyd with batches was taken for an older one")
	}
	seen := map[token.Reason]bool{}
	for _, r := range want {
		seen[r] = true
	}
	if !seen[token.Valid] || !seen[token.RotatedKey] || !seen[token.UnknownKey] {
		t.Fatalf("the tokens do not get every verdict: %v", seen)
	}
}

// CheckKeys against a verifyd of the first release, which has no batches:
// its 404 makes the checker ask one token at a time, with the same
// verdicts, until verifyd comes back (it may have been upgraded).
func TestVerifydCheckKeysOlderVerifyd(t *testing.T) {
	dir, raws, ts := verifydTokens(t)
	sock := sockIn(t)
	old, err := verifydv1.Start(sock, token.KeyDir{Dir: dir, WantUID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	v := &Verifyd{Client: verifyapi.NewClient(sock)}
	defer v.Client.Close()
	want := checkEach(t, v, raws, ts)
	for round := range 2 {
		got, errs := v.CheckKeys(context.Background(), raws, ts)
		for i := range raws {
			if errs[i] != nil || got[i] != want[i] {
				t.Fatalf("round %d, token %d: %q, %v; want %q", round, i, got[i], errs[i], want[i])
			}
		}
		if !v.noBatch.Load() {
			t.Fatalf("round %d: the older verifyd's 404 was not remembered", round)
		}
	}
	v.Upgraded()
	if v.noBatch.Load() {
		t.Fatal("Upgraded did not let batches be tried again")
	}
}

// batchKey is a batch key check that cannot tell for the tokens in down.
type batchKey struct {
	fakeKey
	down  map[int]bool // by the token's Iat, which the test uses as an index
	calls int
}

func (b *batchKey) CheckKeys(_ context.Context, raws [][]byte, ts []*token.Token) ([]token.Reason, []error) {
	b.calls++
	reasons, errs := make([]token.Reason, len(raws)), make([]error, len(raws))
	for i, t := range ts {
		if b.down[int(t.Iat)] {
			errs[i] = ErrCannotTell
		} else {
			reasons[i] = b.r
		}
	}
	return reasons, errs
}

// CheckAll makes one batch call for all the tokens the claims leave
// undecided; the ones it cannot tell go to the next key check; the claims
// decide the rest without a key check.
func TestCheckAllBatchesThenFallsBack(t *testing.T) {
	now := time.Unix(2_000_000_000, 0)
	first := &batchKey{fakeKey: fakeKey{name: "verifyd", r: token.RotatedKey}, down: map[int]bool{2: true}}
	c := &Checker{Pool: "p", Keys: []KeyChecker{first, fakeKey{"keys", token.Valid, nil}}, Now: func() time.Time { return now }}
	ts := []*token.Token{
		{Iss: "p", Iat: 1, Exp: now.Unix() + 3600},
		{Iss: "p", Iat: 2, Exp: now.Unix() + 3600},
		{Iss: "p", Iat: 3, Exp: now.Unix() - 1},
		{Iss: "p", Iat: 4, Exp: now.Unix() + 3600},
	}
	raws := make([][]byte, len(ts))
	got := c.CheckAll(context.Background(), raws, ts)
	want := []Verdict{
		{token.RotatedKey, "verifyd", "p"},
		{token.Valid, "keys", "p"},
		{token.Expired, ByClaims, "p"},
		{token.RotatedKey, "verifyd", "p"},
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("token %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if first.calls != 1 {
		t.Fatalf("the batch check was called %d times for one pass, want once", first.calls)
	}
	for i, tok := range ts {
		if one := c.Check(context.Background(), nil, tok); one != want[i] {
			t.Errorf("Check of token %d alone: %+v, want %+v", i, one, want[i])
		}
	}
}
