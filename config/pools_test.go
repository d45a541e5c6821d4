package config

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestPoolListDefaultOnly(t *testing.T) {
	c := Default()
	list := c.PoolList()
	if len(list) != 1 {
		t.Fatalf("PoolList() of Default() has %d pools, want 1", len(list))
	}
	p := list[0]
	if DefaultPool != "default" || p.Name != DefaultPool || p.TrustDomain != "" || p.SessionToken != "tokend-session" {
		t.Errorf("default pool = %+v", p)
	}
	if !reflect.DeepEqual(p.Fetch, c.Fetch) || !reflect.DeepEqual(p.Validate, c.Validate) {
		t.Errorf("default pool's fetch and validate differ from the top-level ones:\n%+v\n%+v", p, c)
	}
	// Fresh slices.
	p.Fetch.Command = append(p.Fetch.Command, "x")
	if len(c.Fetch.Command) != 0 {
		t.Error("PoolList shares fetch.command with the Config")
	}
	if got := c.PoolNames(); !reflect.DeepEqual(got, []string{"default"}) {
		t.Errorf("PoolNames() = %q", got)
	}
}

func TestPoolList(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.toml")
	write(t, file, `trust_domain = "site.example"
[fetch]
method = "exec"
command = ["site-fetch", "-v"]
lifetime = "8h"
authz = ["READ"]
timeout = "30s"
wait = "1s"
pool = "cm.site.example"
name = "schedd.site.example"
type = "SCHEDD"
key = "SITEKEY"
[fetch.local]
key_dir = "/site/keys"
identity = "me@site"
[validate]
trust_domains = ["site.example", "osg.example", "nat.example"]
verifyd = "/run/tokend/verify.sock"
key_dir = "/site/keys"
probe = ["condor_ping"]
interval = "1m"
exp_margin = "10s"

[pools.osg]
trust_domain = "osg.example"
[pools.osg.fetch]
pool = "cm.osg.example"
lifetime = "1h"

[pools.nat]
trust_domain = "nat.example"
session_token = "national"
[pools.nat.fetch]
method = "local"
command = []
authz = []
timeout = "5s"
wait = "0s"
[pools.nat.fetch.local]
key_dir = "/nat/keys"
[pools.nat.validate]
verifyd = "/run/nat/verify.sock"
key_dir = "/nat/keys"
pool_key = "/nat/POOL"
probe = ["nat-ping"]
`)
	c, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	list := c.PoolList()
	var names []string
	for _, p := range list {
		names = append(names, p.Name)
	}
	if want := []string{"default", "nat", "osg"}; !reflect.DeepEqual(names, want) || !reflect.DeepEqual(c.PoolNames(), want) {
		t.Fatalf("pools %q, PoolNames %q; want %q (default first, then by name)", names, c.PoolNames(), want)
	}
	def, nat, osg := list[0], list[1], list[2]

	if def.TrustDomain != "site.example" || def.SessionToken != "tokend-session" {
		t.Errorf("default pool = %+v", def)
	}
	if def.Fetch.Local.Issuer != "site.example" {
		t.Errorf("default pool's local issuer = %q, want the trust domain", def.Fetch.Local.Issuer)
	}

	// osg: how from [fetch] unless set; where only its own.
	wantOsg := Fetch{
		Method: "exec", Command: []string{"site-fetch", "-v"}, Lifetime: Duration(time.Hour),
		Authz: []string{"READ"}, Timeout: Duration(30 * time.Second), Wait: Duration(time.Second),
		Pool:  "cm.osg.example",
		Local: Local{Key: "POOL", Issuer: "osg.example"},
	}
	if osg.TrustDomain != "osg.example" || osg.SessionToken != "tokend-osg" || !reflect.DeepEqual(osg.Fetch, wantOsg) {
		t.Errorf("osg = %+v\nwant fetch %+v", osg, wantOsg)
	}
	wantVal := Validate{
		TrustDomains: []string{"site.example", "osg.example", "nat.example"},
		Probe:        []string{},
		Interval:     Duration(time.Minute), ExpMargin: Duration(10 * time.Second),
	}
	if !reflect.DeepEqual(osg.Validate, wantVal) {
		t.Errorf("osg validate = %+v, want %+v (no key check of its own: none)", osg.Validate, wantVal)
	}

	// nat: everything set.
	wantNat := Fetch{
		Method: "local", Command: []string{}, Lifetime: Duration(8 * time.Hour),
		Authz: []string{}, Timeout: Duration(5 * time.Second), Wait: 0,
		Local: Local{KeyDir: "/nat/keys", Key: "POOL", Issuer: "nat.example"},
	}
	if nat.SessionToken != "national" || !reflect.DeepEqual(nat.Fetch, wantNat) {
		t.Errorf("nat = %+v\nwant fetch %+v", nat, wantNat)
	}
	wantVal = Validate{
		TrustDomains: []string{"site.example", "osg.example", "nat.example"},
		Verifyd:      "/run/nat/verify.sock", KeyDir: "/nat/keys", PoolKey: "/nat/POOL", Probe: []string{"nat-ping"},
		Interval: Duration(time.Minute), ExpMargin: Duration(10 * time.Second),
	}
	if !reflect.DeepEqual(nat.Validate, wantVal) {
		t.Errorf("nat validate = %+v, want %+v", nat.Validate, wantVal)
	}

	// The resolved lists are copies.
	osg.Fetch.Command[0] = "changed"
	osg.Validate.TrustDomains[0] = "changed"
	if c.Fetch.Command[0] != "site-fetch" || c.Validate.TrustDomains[0] != "site.example" {
		t.Error("PoolList shares slices with the Config")
	}
}

// A [pools.NAME] table in the user file replaces the system file's table
// of that name as a whole; other pools and keys merge as usual.
func TestPoolsAcrossFiles(t *testing.T) {
	setup(t, `[pools.a]
trust_domain = "a.example"
session_token = "sys-a"
[pools.a.fetch]
pool = "cm.a"
[pools.b]
trust_domain = "b.example"
[pools.b.fetch]
pool = "cm.b"
`, `[pools.a]
trust_domain = "a2.example"
[pools.a.fetch]
name = "schedd.a"
`)
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.Pools["a"], c.Pools["b"]
	if a.TrustDomain != "a2.example" || a.SessionToken != "" || a.Fetch.Pool != "" || a.Fetch.Name != "schedd.a" {
		t.Errorf("pools.a = %+v, want the user's table only", a)
	}
	if b.TrustDomain != "b.example" || b.Fetch.Pool != "cm.b" {
		t.Errorf("pools.b = %+v, want the system's table", b)
	}
}

func TestPoolErrors(t *testing.T) {
	const osg = "[pools.osg]\ntrust_domain = \"osg.example\"\n[pools.osg.fetch]\npool = \"cm.osg\"\n"
	tests := []struct {
		name string
		file string
		want []string // "FILE" is the file's path
	}{
		{"no trust domain", "[pools.osg.fetch]\npool = \"cm.osg\"\n",
			[]string{`FILE: pools.osg.trust_domain: want the trust domain of this pool`}},
		{"empty table", "[pools.osg]\n",
			[]string{`FILE: pools.osg.trust_domain: want the trust domain`, `pools.osg.fetch.pool: want where this pool's tokens come from`}},
		{"reserved name", "[pools.default]\ntrust_domain = \"x\"\n[pools.default.fetch]\npool = \"cm\"\n",
			[]string{`FILE: pools.default: want another name: "default" is the pool of the top-level keys`}},
		{"bad name", "[pools.\"a b\"]\ntrust_domain = \"x\"\n",
			[]string{`FILE: pools."a b": want a pool name of 1 to 64 letters, digits`}},
		{"long name", "[pools." + strings.Repeat("a", 65) + "]\ntrust_domain = \"x\"\n",
			[]string{`pools.` + strings.Repeat("a", 65) + `: want a pool name of 1 to 64`}},
		{"two pools one trust domain", osg + "[pools.x]\ntrust_domain = \"osg.example\"\n[pools.x.fetch]\npool = \"cm.x\"\n",
			[]string{`FILE: pools.x.trust_domain = "osg.example": want a trust domain no other pool has (pools.osg.trust_domain has it)`}},
		{"a pool with the default's trust domain", "trust_domain = \"osg.example\"\n" + osg,
			[]string{`FILE: pools.osg.trust_domain = "osg.example": want a trust domain no other pool has (trust_domain has it)`}},
		{"two pools one session token", osg + "[pools.x]\ntrust_domain = \"x.example\"\nsession_token = \"tokend-osg\"\n[pools.x.fetch]\npool = \"cm.x\"\n",
			[]string{`FILE: pools.x.session_token = "tokend-osg": want a session token name no other pool uses (pools.osg.session_token is the same file)`}},
		{"a pool with the default's session token", osg + "[pools.x]\ntrust_domain = \"x.example\"\nsession_token = \"tokend-session\"\n[pools.x.fetch]\npool = \"cm.x\"\n",
			[]string{`pools.x.session_token = "tokend-session": want a session token name no other pool uses (session_token is the same file)`}},
		{"the default's session token is a pool's default", "session_token = \"tokend-osg\"\n" + osg,
			[]string{`pools.osg.session_token = "tokend-osg": want a session token name no other pool uses (session_token is the same file)`}},
		{"bad session token", "[pools.osg]\ntrust_domain = \"osg.example\"\nsession_token = \".hidden\"\n[pools.osg.fetch]\npool = \"cm\"\n",
			[]string{`pools.osg.session_token = ".hidden": want a plain file name not starting with "."`}},
		{"session token too long", "[limits]\nmax_name_len = 14\n[pools.osg-national]\ntrust_domain = \"osg.example\"\n[pools.osg-national.fetch]\npool = \"cm\"\n",
			[]string{`pools.osg-national.session_token = "tokend-osg-national": want a name of at most limits.max_name_len = 14`}},
		{"no target", "[pools.osg]\ntrust_domain = \"osg.example\"\n[pools.osg.fetch]\nlifetime = \"1h\"\n",
			[]string{`FILE: pools.osg.fetch.pool: want where this pool's tokens come from: pools.osg.fetch.pool or pools.osg.fetch.name`, `[fetch]'s target is not inherited`}},
		{"the default's target is not inherited", "[fetch]\npool = \"cm.site\"\n[pools.osg]\ntrust_domain = \"osg.example\"\n",
			[]string{`pools.osg.fetch.pool: want where this pool's tokens come from`}},
		{"type and key are no target", "[pools.osg]\ntrust_domain = \"osg.example\"\n[pools.osg.fetch]\ntype = \"SCHEDD\"\nkey = \"K\"\n",
			[]string{`pools.osg.fetch.pool: want where this pool's tokens come from`}},
		{"an empty command is no target", "[pools.osg]\ntrust_domain = \"osg.example\"\n[pools.osg.fetch]\ncommand = []\n",
			[]string{`pools.osg.fetch.pool: want where this pool's tokens come from`}},
		{"local without key_dir", "[fetch.local]\nkey_dir = \"/site/keys\"\n[pools.osg]\ntrust_domain = \"osg.example\"\n[pools.osg.fetch]\nmethod = \"local\"\n",
			[]string{`FILE: pools.osg.fetch.local.key_dir: want the folder of this pool's signing keys: [fetch.local]'s is not inherited`}},
		{"local by inheritance", "[fetch]\nmethod = \"local\"\n[fetch.local]\nkey_dir = \"/k\"\n[pools.osg]\ntrust_domain = \"osg.example\"\n",
			[]string{`pools.osg.fetch.local.key_dir: want the folder of this pool's signing keys`}},
		{"local issuer", "[pools.osg]\ntrust_domain = \"osg.example\"\n[pools.osg.fetch]\nmethod = \"local\"\n[pools.osg.fetch.local]\nkey_dir = \"/k\"\nissuer = \"other\"\n",
			[]string{`FILE: pools.osg.fetch.local.issuer = "other": want this pool's trust_domain "osg.example" or ""`}},
		{"default local issuer", "trust_domain = \"site\"\n[fetch.local]\nissuer = \"other\"\n",
			[]string{`FILE: fetch.local.issuer = "other": want trust_domain "site" or ""`}},
		{"one verifyd for two pools", osg + "[pools.osg.validate]\nverifyd = \"/run/tokend/verify.sock\"\n",
			[]string{`pools.osg.validate.verifyd = "/run/tokend/verify.sock": want a verifyd of this pool's own (validate.verifyd names the same socket)`}},
		{"one verifyd for two named pools", osg + "[pools.osg.validate]\nverifyd = \"/run/v.sock\"\n[pools.x]\ntrust_domain = \"x\"\n[pools.x.fetch]\npool = \"cm.x\"\n[pools.x.validate]\nverifyd = \"/run//v.sock\"\n",
			[]string{`pools.x.validate.verifyd = "/run//v.sock": want a verifyd of this pool's own (pools.osg.validate.verifyd names the same socket)`}},
		{"trust domain not in trust_domains", "[validate]\ntrust_domains = [\"site\"]\n" + osg,
			[]string{`pools.osg.trust_domain = "osg.example": want a trust domain listed in validate.trust_domains too`}},
		{"default trust domain not in trust_domains", "trust_domain = \"other\"\n[validate]\ntrust_domains = [\"site\"]\n",
			[]string{`FILE: trust_domain = "other": want a trust domain listed in validate.trust_domains too`}},
		{"trust domain with a space", "trust_domain = \"a b\"\n",
			[]string{`FILE: trust_domain = "a b": want an issuer name`}},
		// Value checks inside a pool name the pool's key.
		{"pool values", `[pools.osg]
trust_domain = "osg.example"
[pools.osg.fetch]
method = "ftp"
command = [""]
lifetime = "1.5s"
authz = [""]
timeout = "0s"
wait = "5m"
pool = "-x"
name = "a b"
type = "-t"
key = "-k"
[pools.osg.fetch.local]
key_dir = "rel"
key = "../K"
identity = "a\nb"
[pools.osg.validate]
verifyd = "rel.sock"
key_dir = "keys"
pool_key = "POOL"
probe = [""]
`, []string{
			`FILE: pools.osg.fetch.method = "ftp": want exec, request or local`,
			`pools.osg.fetch.command = [""]: want a program name`,
			`pools.osg.fetch.lifetime = "1.5s": want whole seconds`,
			`pools.osg.fetch.authz = [""]: want authorization levels`,
			`pools.osg.fetch.timeout = "0s": want a positive duration`,
			`pools.osg.fetch.wait = "5m": want "0s" (never wait) up to 1m`,
			`pools.osg.fetch.pool = "-x": want a value not starting with "-"`,
			`pools.osg.fetch.name = "a b": want a value without spaces`,
			`pools.osg.fetch.type = "-t"`,
			`pools.osg.fetch.key = "-k"`,
			`pools.osg.fetch.local.key_dir = "rel": want an absolute path`,
			`pools.osg.fetch.local.key = "../K": want a plain file name`,
			`pools.osg.fetch.local.identity = "a\nb": want a value without control characters`,
			`pools.osg.validate.verifyd = "rel.sock": want an absolute path`,
			`pools.osg.validate.key_dir = "keys": want an absolute path`,
			`pools.osg.validate.pool_key = "POOL": want an absolute path`,
			`pools.osg.validate.probe = [""]: want a program name`,
		}},
		{"unknown key in a pool", osg + "[pools.osg.validate]\ninterval = \"1m\"\n",
			[]string{`FILE: unknown key "pools.osg.validate.interval"`}},
		{"typo in a pool", "[pools.osg]\ntrust_domain = \"osg.example\"\n[pools.osg.fetch]\npool = \"cm\"\nlifetme = \"1h\"\n",
			[]string{`FILE: unknown key "pools.osg.fetch.lifetme" (did you mean "pools.osg.fetch.lifetime"?)`}},
		{"right key in the wrong pool table", "[pools.osg]\ntrust_domain = \"osg.example\"\npool = \"cm\"\n",
			[]string{`unknown key "pools.osg.pool" (did you mean "pools.osg.fetch.pool"?)`}},
		{"wrong case in a pool", "[pools.osg]\nTrust_Domain = \"osg.example\"\n[pools.osg.fetch]\npool = \"cm\"\n",
			[]string{`unknown key "pools.osg.Trust_Domain" (did you mean "pools.osg.trust_domain"?)`}},
		{"a top-level key never suggests a pool's", "verifyd = \"/x\"\n",
			[]string{`unknown key "verifyd" (did you mean "validate.verifyd"?)`}},
		{"pools not a table", "pools = 3\n", []string{`FILE: pools = (a integer): want [pools.NAME] tables`}},
		{"a pool not a table", "[pools]\nosg = \"x\"\n", []string{`FILE`, `pools.osg`}},
		{"too many pools", manyPools(MaxPools + 1), []string{`FILE: pools = (33 tables): want at most 32 [pools.NAME] tables`}},
		{"bad wait", "[fetch]\nwait = \"2m\"\n", []string{`FILE: fetch.wait = "2m": want "0s" (never wait) up to 1m`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t, absent, tt.file)
			_, err := Load("")
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			for _, w := range tt.want {
				w = strings.ReplaceAll(w, "FILE", e.user)
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func manyPools(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "[pools.p%d]\ntrust_domain = \"t%d\"\n[pools.p%d.fetch]\npool = \"cm\"\n", i, i, i)
	}
	return b.String()
}

// Good pools configurations load.
func TestPoolsValid(t *testing.T) {
	tests := map[string]string{
		"a target by pool":        "[pools.a]\ntrust_domain = \"a\"\n[pools.a.fetch]\npool = \"cm.a\"\n",
		"a target by name":        "[pools.a]\ntrust_domain = \"a\"\n[pools.a.fetch]\nname = \"schedd.a\"\n",
		"a command of its own":    "[pools.a]\ntrust_domain = \"a\"\n[pools.a.fetch]\ncommand = [\"a-fetch\"]\n",
		"request with a target":   "[pools.a]\ntrust_domain = \"a\"\n[pools.a.fetch]\nmethod = \"request\"\npool = \"cm.a\"\n",
		"local with its own keys": "[pools.a]\ntrust_domain = \"a\"\n[pools.a.fetch]\nmethod = \"local\"\n[pools.a.fetch.local]\nkey_dir = \"/k\"\nissuer = \"a\"\n",
		"names":                   "[pools.A-b_9]\ntrust_domain = \"a\"\n[pools.A-b_9.fetch]\npool = \"cm\"\n[pools.x]\ntrust_domain = \"x\"\n[pools.x.fetch]\npool = \"cm\"\n",
		"listed trust domains":    "trust_domain = \"s\"\n[validate]\ntrust_domains = [\"s\", \"a\"]\n[pools.a]\ntrust_domain = \"a\"\n[pools.a.fetch]\npool = \"cm\"\n",
		"verifyds of their own":   "[pools.a]\ntrust_domain = \"a\"\n[pools.a.fetch]\npool = \"cm\"\n[pools.a.validate]\nverifyd = \"/run/a.sock\"\n",
		"no default verifyd":      "[validate]\nverifyd = \"\"\n[pools.a]\ntrust_domain = \"a\"\n[pools.a.fetch]\npool = \"cm\"\n[pools.a.validate]\nverifyd = \"/run/tokend/verify.sock\"\n",
		"an empty pools table":    "[pools]\n",
		"the most pools":          manyPools(MaxPools),
	}
	for name, file := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.toml")
			write(t, path, file)
			if _, err := Load(path); err != nil {
				t.Fatalf("Load: %v", err)
			}
		})
	}
}

// A Config with pools survives toml encoding, unset values staying unset.
func TestPoolsEncodeRoundTrip(t *testing.T) {
	c := Default()
	lifetime := Duration(time.Hour)
	cmd := []string{"a-fetch"}
	c.Pools = map[string]Pool{
		"a": {TrustDomain: "a.example", Fetch: PoolFetch{Lifetime: &lifetime, Command: &cmd}},
		"b": {TrustDomain: "b.example", SessionToken: "bt", Fetch: PoolFetch{Pool: "cm.b"},
			Validate: PoolValidate{KeyDir: "/k", Probe: []string{"p"}}},
	}
	got, text := roundTrip(t, c)
	if !reflect.DeepEqual(got.PoolList(), c.PoolList()) {
		t.Errorf("round trip:\n got %+v\nwant %+v\n%s", got.PoolList(), c.PoolList(), text)
	}
	if a := got.Pools["a"].Fetch; a.Method != nil || a.Timeout != nil || a.Authz != nil {
		t.Errorf("unset values came back set: %+v\n%s", a, text)
	}
}

func TestPoolPattern(t *testing.T) {
	tests := []struct {
		k    toml.Key
		want string
	}{
		{toml.Key{"dir"}, "dir"},
		{toml.Key{"fetch", "timeout"}, "fetch.timeout"},
		{toml.Key{"pools"}, "pools"},
		{toml.Key{"pools", "osg"}, "pools.*"},
		{toml.Key{"pools", "a b", "fetch", "local", "key"}, "pools.*.fetch.local.key"},
		{toml.Key{"pools", "osg", "odd key"}, `pools.*."odd key"`},
	}
	for _, tt := range tests {
		if got := poolPattern(tt.k); got != tt.want {
			t.Errorf("poolPattern(%q) = %q, want %q", tt.k, got, tt.want)
		}
	}
}

func TestPoolTable(t *testing.T) {
	tests := map[string]string{
		"dir":                          "",
		"pools":                        "",
		"pools.a":                      "pools.a",
		"pools.a.fetch.pool":           "pools.a",
		`pools."a.b".fetch`:            `pools."a.b"`,
		`pools."a\".b".trust_domain`:   `pools."a\".b"`,
		poolKey("x\"y.z", "fetch.key"): poolKey("x\"y.z", ""),
	}
	for in, want := range tests {
		if got := poolTable(in); got != want {
			t.Errorf("poolTable(%q) = %q, want %q", in, got, want)
		}
	}
}
