package verifyapi

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv/verifydv1"
	"github.com/tokend/tokend/token"
)

func keyFile(t *testing.T, path string) []byte {
	t.Helper()
	b := make([]byte, 64)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

func signed(t *testing.T, kid string, file []byte) []byte {
	t.Helper()
	tok, err := token.Sign(token.Claims{Issuer: "example.org", Subject: "a@example.org", Lifetime: time.Hour}, kid, token.DeriveKey(kid, file))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestOldVerifyd: today's client with a verifyd of the first release's
// protocol. Verdicts come through; the fields that release does not send
// read as "unknown" (no trust domain, no max age, no cannot_tell); the
// state calls and the long poll work; a path that release does not know is
// an error meaning "cannot tell" (ErrUnsupported, ErrUnavailable), never a
// verdict; a refetch slot is ErrUnsupported (the caller uses jitter).
func TestOldVerifyd(t *testing.T) {
	dir := t.TempDir()
	pool := keyFile(t, filepath.Join(dir, "POOL"))
	sockDir, err := os.MkdirTemp("", "v1")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	old, err := verifydv1.Start(filepath.Join(sockDir, "verify.sock"), token.KeyDir{Dir: dir, WantUID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	c := NewClient(filepath.Join(sockDir, "verify.sock"))
	defer c.Close()
	ctx := context.Background()

	for name, tc := range map[string]struct {
		raw  []byte
		want token.Reason
	}{
		"POOL":        {signed(t, "POOL", pool), token.Valid},
		"rotated":     {signed(t, "POOL", make([]byte, 64)), token.RotatedKey},
		"no key file": {signed(t, "AP", pool), token.UnknownKey},
		"malformed":   {[]byte("not.a.token"), token.Malformed},
	} {
		r, err := c.Verify(ctx, tc.raw)
		if err != nil || r.Reason != tc.want || r.TrustDomain != "" || r.TokenMaxAge != 0 || r.CannotTell != "" || r.Generation != old.Generation() {
			t.Errorf("%s: %+v, %v; want %q and nothing else", name, r, err, tc.want)
		}
	}
	st, err := c.State(ctx)
	if err != nil || st != (GenerationResponse{Generation: old.Generation()}) {
		t.Fatalf("State: %+v, %v; want only the generation", st, err)
	}
	got := make(chan GenerationResponse, 1)
	go func() {
		st, _ := c.WaitState(ctx, st.Generation)
		got <- st
	}()
	keyFile(t, filepath.Join(dir, "AP")) // the old verifyd moves its generation
	select {
	case st2 := <-got:
		if st2.Generation <= st.Generation || st2.TrustDomain != "" {
			t.Fatalf("WaitState: %+v after %d", st2, st.Generation)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitState did not wake at a key change")
	}
	if g, err := c.Generation(ctx); err != nil || g != old.Generation() {
		t.Fatalf("Generation: %d, %v", g, err)
	}
	g := old.Generation()
	if g2, err := c.WaitChange(ctx, g-1); err != nil || g2 != g {
		t.Fatalf("WaitChange: %d, %v; want %d at once", g2, err, g)
	}

	// A path of a later release: cannot tell, and the error says why.
	var out GenerationResponse
	err = c.do(ctx, RequestTimeout, http.MethodGet, "/v1/slots", nil, &out)
	var se *ServerError
	if !errors.As(err, &se) || se.Status != http.StatusNotFound || !errors.Is(err, ErrUnsupported) || !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrRateLimited) {
		t.Fatalf("a path the old verifyd does not know: %v", err)
	}
	if !strings.Contains(err.Error(), "does not know GET /v1/slots") || !strings.Contains(err.Error(), "older release") {
		t.Fatalf("the error does not say what happened: %v", err)
	}
	// Refetch slots came later: the old verifyd's 404 is ErrUnsupported,
	// which callers take as "use jitter", never as a slot or a wrong
	// generation.
	at, err := c.RefetchSlot(ctx, RefetchSlotRequest{Generation: old.Generation(), Urgent: true})
	if !at.IsZero() || !errors.As(err, &se) || se.Status != http.StatusNotFound || !errors.Is(err, ErrUnsupported) ||
		errors.Is(err, ErrWrongGeneration) || errors.Is(err, ErrRateLimited) {
		t.Fatalf("RefetchSlot against the old verifyd: %v, %v; want ErrUnsupported", at, err)
	}
	if !strings.Contains(err.Error(), "does not know POST "+PathRefetchSlot) {
		t.Fatalf("the error does not say what happened: %v", err)
	}

	// So did batches: ErrUnsupported, which callers take as "ask one at
	// a time".
	if _, err := c.VerifyBatch(ctx, [][]byte{signed(t, "POOL", pool), signed(t, "POOL", pool)}); !errors.As(err, &se) ||
		se.Status != http.StatusNotFound || !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "does not know POST "+PathVerifyBatch) {
		t.Fatalf("VerifyBatch against the old verifyd: %v; want ErrUnsupported", err)
	}

	// No POOL key: the old verifyd's 503 is no verdict either.
	os.Remove(filepath.Join(dir, "POOL"))
	if _, err := c.Verify(ctx, signed(t, "POOL", pool)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("POOL missing: %v; want 503, cannot tell", err)
	}
}
