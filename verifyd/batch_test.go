package verifyd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/testenv"
	"github.com/tokend/tokend/internal/testenv/keys"
	"github.com/tokend/tokend/token"
	"github.com/tokend/tokend/verifyapi"
)

// TestVerifyBatchAgreesWithVerify: a batch of every kind of token gets,
// for each, what POST /v1/verify says of it alone: verdicts, no verdict on
// another issuer's token, and "key unavailable" for a kid whose key file
// cannot be used, in the request's order.
func TestVerifyBatchAgreesWithVerify(t *testing.T) {
	noCondor(t)
	f := newRotation(t)
	o := fast(f.dir)
	o.TrustDomain = "example.org"
	ts := start(t, o, func(s *Server) { s.pollTimeout = 50 * time.Millisecond })
	if err := os.Chmod(filepath.Join(f.dir, "AP"), 0o644); err != nil { // AP unusable
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "AP to be refused", func() bool { return ts.answer(t, f.tOldAP) == unavailable })

	now := time.Now()
	raws := [][]byte{
		f.tOldPool, f.tNewPool, f.tExtra, f.tOldAP, []byte("not.a.token"),
		signAs(t, "other.example", "POOL", keys.NewFile(), now, time.Hour),
		signAs(t, "example.org", "POOL", f.oldPool, now.Add(-2*time.Hour), time.Hour),
		f.tOldPool, // twice: each gets its own verdict
	}
	resp, err := ts.client.VerifyBatch(context.Background(), raws)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Generation != ts.Generation() || resp.TrustDomain != "example.org" {
		t.Fatalf("batch answer: generation %d, trust domain %q; want %d, example.org", resp.Generation, resp.TrustDomain, ts.Generation())
	}
	for i, raw := range raws {
		got := resp.Verdicts[i]
		single, se := ts.verify(t, raw)
		var want verifyapi.BatchVerdict
		switch {
		case se != nil:
			want.Unavailable = se.Message
		default:
			r := ts.full(t, raw)
			want = verifyapi.BatchVerdict{Reason: r.Reason, CannotTell: r.CannotTell}
		}
		if got != want {
			t.Errorf("token %d: batch %+v; alone %+v (%q)", i, got, want, single)
		}
	}
	if resp.Verdicts[3].Unavailable == "" || resp.Verdicts[5].CannotTell != verifyapi.CannotTellOtherIssuer ||
		resp.Verdicts[1].Reason != token.RotatedKey || resp.Verdicts[6].Reason != token.Expired {
		t.Fatalf("the batch does not hold every kind of answer: %+v", resp.Verdicts)
	}
}

// A batch that is not one is refused with a clear 400 or 413, and nothing
// in it is judged.
func TestVerifyBatchHostile(t *testing.T) {
	f := newRotation(t)
	ts := start(t, fast(f.dir), nil)
	tok := string(f.tOldPool)
	tooMany := `{"tokens":[` + strings.Repeat(`"`+tok+`",`, verifyapi.MaxBatchTokens) + `"` + tok + `"]}`
	for _, body := range []string{
		"", "{", "[]", "null", `{"tokens":null}`, `{"tokens":[]}`, `{"tokens":""}`, `{"tokens":["a",5]}`,
		`{"tokens":["a",""]}`, `{"tokens":[["a"]]}`, `{"tokens":["a"],"tokens":["b"]}`, `{"token":"` + tok + `"}`, tooMany,
	} {
		r := ts.do(t, http.MethodPost, verifyapi.PathVerifyBatch, body)
		if r.status != http.StatusBadRequest || r.code(t) != verifyapi.CodeBadRequest {
			t.Errorf("body %.60q: %d %s", body, r.status, r.body)
		}
	}
	big := `{"tokens":["` + strings.Repeat("a", verifyapi.MaxBatchBytes) + `"]}`
	if r := ts.do(t, http.MethodPost, verifyapi.PathVerifyBatch, big); r.status != http.StatusRequestEntityTooLarge || r.code(t) != verifyapi.CodeTooLarge {
		t.Errorf("oversized batch: %d %s", r.status, r.body)
	}
	// Escapes and spaces are JSON's business: the tokens come out as sent.
	spaced := " { \"tokens\" : [ \"" + strings.Replace(tok, ".", `\u002e`, 1) + "\" , \"x.y.z\" ] } "
	r := ts.do(t, http.MethodPost, verifyapi.PathVerifyBatch, spaced)
	if r.status != http.StatusOK || !bytes.Contains(r.body, []byte(`"verdicts":[{"reason":""},{"reason":"malformed"}]`)) {
		t.Fatalf("a batch with spaces and escapes: %d %s", r.status, r.body)
	}
	// The single verify keeps its own, smaller limit.
	if r := ts.do(t, http.MethodPost, verifyapi.PathVerify, `{"token":"`+strings.Repeat("a", verifyapi.MaxRequestBytes)+`"}`); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("a single verify above its limit: %d %s", r.status, r.body)
	}
}

// The client refuses a batch it may not send, and says so.
func TestVerifyBatchClientLimits(t *testing.T) {
	f := newRotation(t)
	ts := start(t, fast(f.dir), nil)
	for _, n := range []int{0, verifyapi.MaxBatchTokens + 1} {
		raws := make([][]byte, n)
		for i := range raws {
			raws[i] = f.tOldPool
		}
		_, err := ts.client.VerifyBatch(context.Background(), raws)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint(n)) || errors.Is(err, verifyapi.ErrUnsupported) {
			t.Errorf("a batch of %d: %v", n, err)
		}
	}
}
