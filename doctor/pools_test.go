package doctor

import (
	"strings"
	"testing"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/config"
)

func TestPoolChecks(t *testing.T) {
	one := config.Default()
	two := config.Default()
	two.Pools = map[string]config.Pool{"osg": {TrustDomain: "osg.example", Fetch: config.PoolFetch{Pool: "cm.osg"}}}
	if err := two.Check(); err != nil {
		t.Fatal(err)
	}
	site := two
	site.TrustDomain = "site.example"

	valid := api.Session{Name: "tokend-session", State: api.SessionValid}
	osgValid := api.Session{Name: "tokend-osg", State: api.SessionValid}
	def := api.PoolStatus{Name: "default", TrustDomain: "site.example", TrustFrom: api.TrustFromVerifyd, Session: valid, Validation: api.Validation{KeyCheck: "verifyd"}}
	osg := api.PoolStatus{Name: "osg", TrustDomain: "osg.example", TrustFrom: api.TrustFromConfig, Session: osgValid, Validation: api.Validation{KeyCheck: "none"}}

	type want struct {
		name, status string
		detail       []string // substrings
		fix          string   // substring; "" = no fix
	}
	tests := []struct {
		name string
		cfg  config.Config
		st   *api.Status
		want []want
	}{
		{"one pool, no agent", one, nil, []want{
			{"pool default", OK, []string{"trust domain not in the config: the agent asks verifyd", "session token tokend-session (no agent to ask)", "key check verifyd"}, ""},
		}},
		{"two pools, no agent", two, nil, []want{
			{"pool default", OK, []string{"trust domain not in the config"}, ""},
			{"pool osg", OK, []string{"trust domain osg.example (from config)", "session token tokend-osg (no agent to ask)", "key check none (only expiry hides its tokens)"}, ""},
		}},
		{"configured trust domain, no agent", site, nil, []want{
			{"pool default", OK, []string{"trust domain site.example (from config)"}, ""},
			{"pool osg", OK, nil, ""},
		}},
		{"one pool, the agent knows no trust domain", one, &api.Status{Pools: []api.PoolStatus{{Name: "default", ClaimsOther: true, Session: valid}}}, []want{
			{"pool default", OK, []string{"trust domain unknown: it judges every token"}, ""},
		}},
		{"two pools, the agent knows no default trust domain", two, &api.Status{Pools: []api.PoolStatus{{Name: "default", ClaimsOther: true, Session: valid}, osg}}, []want{
			{"pool default", Warn, []string{"trust domain unknown: its key checks judge every token no other pool claims"}, "set trust_domain"},
			{"pool osg", OK, nil, ""},
		}},
		{"two pools, the agent's view", two, &api.Status{Session: valid, Pools: []api.PoolStatus{def, osg}}, []want{
			{"pool default", OK, []string{"trust domain site.example (from verifyd)", "session token tokend-session valid", "key check verifyd"}, ""},
			{"pool osg", OK, []string{"trust domain osg.example (from config)", "session token tokend-osg valid", "key check none"}, ""},
		}},
		{"a failed fetch and a refused token", site, &api.Status{Pools: []api.PoolStatus{
			def,
			{Name: "osg", TrustDomain: "osg.example", TrustFrom: api.TrustFromConfig,
				Session:   api.Session{Name: "tokend-osg", State: api.SessionFailed, LastError: "SECMAN:2007"},
				LastError: `the token fetched for pool osg has iss "x": refused`},
		}}, []want{
			{"pool default", OK, nil, ""},
			{"pool osg", Warn, []string{"session token tokend-osg failed: SECMAN:2007", `has iss "x": refused`}, "[pools.osg.fetch]"},
		}},
		{"a failed fetch", site, &api.Status{Pools: []api.PoolStatus{
			def,
			{Name: "osg", TrustDomain: "osg.example", TrustFrom: api.TrustFromConfig, Session: api.Session{Name: "tokend-osg", State: api.SessionFailed, LastError: "SECMAN:2007"}},
		}}, []want{
			{"pool default", OK, nil, ""},
			{"pool osg", Warn, []string{"failed: SECMAN:2007"}, "tokend fetch --pool osg"},
		}},
		{"waiting for approval", one, &api.Status{Pools: []api.PoolStatus{
			{Name: "default", Session: api.Session{Name: "tokend-session", State: api.SessionWaiting, RequestID: "42"}, ClaimsOther: true},
		}}, []want{
			{"pool default", Warn, []string{"tokend-session waiting-approval"}, "condor_token_request_approve -reqid 42"},
		}},
		{"an agent of an earlier release", two, &api.Status{Session: api.Session{Name: "tokend-session", State: api.SessionFailed, LastError: "boom"}, Validation: api.Validation{KeyCheck: "keys"}}, []want{
			{"pool default", Warn, []string{"session token tokend-session failed: boom", "key check keys"}, "`tokend fetch`"},
			{"pool osg", Warn, []string{"the agent reports no pools: it is of an earlier release"}, "update tokend"},
		}},
		{"the agent runs another configuration", two, &api.Status{Pools: []api.PoolStatus{def, {Name: "gone", TrustDomain: "gone.example"}}}, []want{
			{"pool default", OK, nil, ""},
			{"pool osg", Warn, []string{"the agent does not have this pool"}, "systemctl --user restart tokend"},
			{"pool gone", Warn, []string{"the agent holds pool gone, which the configuration no longer has"}, "systemctl --user restart tokend"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := poolChecks(tt.cfg.PoolList(), tt.st)
			if len(got) != len(tt.want) {
				t.Fatalf("poolChecks gave %d checks, want %d: %+v", len(got), len(tt.want), got)
			}
			for i, w := range tt.want {
				c := got[i]
				if c.Name != w.name || c.Status != w.status {
					t.Errorf("check %d = %q %s, want %q %s: %+v", i, c.Name, c.Status, w.name, w.status, c)
				}
				for _, d := range w.detail {
					if !strings.Contains(c.Detail, d) {
						t.Errorf("%s: detail %q lacks %q", c.Name, c.Detail, d)
					}
				}
				if (w.fix == "") != (c.Fix == "") || !strings.Contains(c.Fix, w.fix) {
					t.Errorf("%s: fix %q, want one containing %q", c.Name, c.Fix, w.fix)
				}
			}
		})
	}
}

func TestDescribeKeyCheck(t *testing.T) {
	tests := []struct {
		v    config.Validate
		want string
	}{
		{config.Validate{}, "none (only expiry hides its tokens)"},
		{config.Validate{Verifyd: "/v"}, "verifyd"},
		{config.Validate{Verifyd: "/v", KeyDir: "/k", Probe: []string{"p"}}, "verifyd, then keys, then probe"},
		{config.Validate{Probe: []string{"p"}}, "probe"},
	}
	for _, tt := range tests {
		if got := describeKeyCheck(tt.v); got != tt.want {
			t.Errorf("describeKeyCheck(%+v) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

func TestCondorToolsNamesThePool(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	c := config.Default()
	c.Pools = map[string]config.Pool{"osg": {TrustDomain: "osg.example", Fetch: config.PoolFetch{Pool: "cm"}}}
	pools := c.PoolList()
	def, osg := condorTools(pools[0]), condorTools(pools[1])
	if def.Name != "HTCondor tools" || def.Status != Fail || !strings.Contains(def.Fix, "set fetch.command") {
		t.Errorf("default pool: %+v", def)
	}
	if osg.Name != "HTCondor tools: osg" || osg.Status != Fail || !strings.Contains(osg.Fix, "set pools.osg.fetch.command") {
		t.Errorf("pool osg: %+v", osg)
	}
}
