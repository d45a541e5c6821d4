package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
)

// newPoolsAgent builds an agent (not running) with a verifyd configured for
// the default pool and a second pool b, HTCondor's TRUST_DOMAIN being condor.
func newPoolsAgent(t *testing.T, trustDomain, condor string) *Agent {
	t.Helper()
	old := condorTrustDomain
	condorTrustDomain = func() string { return condor }
	t.Cleanup(func() { condorTrustDomain = old })
	cfg := config.Default()
	cfg.Dir = "/nonexistent/tokend-test"
	cfg.Socket = "/nonexistent/tokend-test.sock"
	cfg.TrustDomain = trustDomain
	cfg.Fetch.Method = config.MethodLocal
	cfg.Fetch.Local.KeyDir = "/nonexistent/keys"
	cfg.Validate.Verifyd = "/nonexistent/verify.sock"
	cfg.Pools = map[string]config.Pool{"b": {TrustDomain: "b.example", Fetch: config.PoolFetch{Local: config.Local{KeyDir: "/nonexistent/keys-b"}}}}
	a, err := newAgent(Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.store.Close)
	return a
}

// The default pool's trust domain: the config's, else what verifyd
// reports, else HTCondor's; never another pool's.
func TestTrustDomainSources(t *testing.T) {
	a := newPoolsAgent(t, "", "condor.example")
	def := a.pools[0]
	check := func(wantTD, wantFrom string) {
		t.Helper()
		if td, from := a.router.TrustDomain(config.DefaultPool); td != wantTD || from != wantFrom {
			t.Fatalf("trust domain %q from %q, want %q from %q", td, from, wantTD, wantFrom)
		}
	}
	check("condor.example", api.TrustFromCondor)
	if !a.learn(def, "cm.example", 0) {
		t.Fatal("learning verifyd's trust domain changed nothing")
	}
	check("cm.example", api.TrustFromVerifyd)
	if a.router.ClaimsOther(config.DefaultPool) {
		t.Fatal("a default pool with a trust domain claims other issuers")
	}
	// Another pool's trust domain: refused, and said.
	if a.learn(def, "b.example", 0) {
		t.Fatal("the default pool took pool b's trust domain")
	}
	check("cm.example", api.TrustFromVerifyd)
	if msg := def.lastError(); !strings.Contains(msg, "pool b's") {
		t.Fatalf("last error %q does not say the trust domain is pool b's", msg)
	}
	if p := a.poolOf("b.example"); p == nil || p.cfg.Name != "b" {
		t.Fatal("pool b's tokens are not pool b's")
	}
	// A verifyd that no longer knows one: back to HTCondor's. The max age
	// comes with every report.
	if !a.learn(def, "", 9*time.Second) {
		t.Fatal("forgetting verifyd's trust domain changed nothing")
	}
	check("condor.example", api.TrustFromCondor)
	if got := a.poolStatus(def, a.store.Infos()).TokenMaxAge; got != 9 {
		t.Fatalf("token_max_age %d, want 9", got)
	}

	// HTCondor's TRUST_DOMAIN that is another pool's is not taken.
	a = newPoolsAgent(t, "", "b.example")
	if td, _ := a.router.TrustDomain(config.DefaultPool); td != "" || !a.router.ClaimsOther(config.DefaultPool) {
		t.Fatalf("the default pool took pool b's trust domain from HTCondor: %q", td)
	}

	// A configured trust domain wins; a verifyd that disagrees is reported.
	a = newPoolsAgent(t, "x.example", "condor.example")
	def = a.pools[0]
	check = func(wantTD, wantFrom string) {
		t.Helper()
		if td, from := a.router.TrustDomain(config.DefaultPool); td != wantTD || from != wantFrom {
			t.Fatalf("trust domain %q from %q, want %q from %q", td, from, wantTD, wantFrom)
		}
	}
	check("x.example", api.TrustFromConfig)
	if a.learn(def, "y.example", 0) {
		t.Fatal("verifyd changed a configured trust domain")
	}
	check("x.example", api.TrustFromConfig)
	if msg := def.lastError(); !strings.Contains(msg, `"y.example", not this pool's "x.example"`) {
		t.Fatalf("last error %q does not name both trust domains", msg)
	}
	a.learn(def, "x.example", 0)
	if msg := def.lastError(); msg != "" {
		t.Fatalf("last error %q once verifyd agrees", msg)
	}
}
