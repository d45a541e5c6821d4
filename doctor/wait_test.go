package doctor

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/config"
)

func TestFetchWait(t *testing.T) {
	cfg := config.Default()
	forty := config.Duration(40 * time.Second)
	cfg.Pools = map[string]config.Pool{"osg": {TrustDomain: "osg.example", Fetch: config.PoolFetch{Pool: "cm.osg", Wait: &forty}}}
	if err := cfg.Check(); err != nil {
		t.Fatal(err)
	}
	pools := cfg.PoolList()
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		err     error
		status  string
		detail  string
		fix     string
	}{
		{"no kernel timeout", 0, nil, OK, "fetch.wait 2s, pools.osg.fetch.wait 40s: the kernel has no FUSE request timeout", ""},
		{"below", 120 * time.Second, nil, OK, "fetch.wait 2s, pools.osg.fetch.wait 40s: below half the kernel's FUSE request timeout (2m0s)", ""},
		{"above", 60 * time.Second, nil, Warn, "pools.osg.fetch.wait (40s) above half the kernel's FUSE request timeout (1m0s): the agent holds a tool's first look after a key change 30s at most",
			"lower fetch.wait to 30s or less"},
		{"unreadable", 0, errors.New("permission denied"), Warn, "cannot read the kernel's FUSE request timeout (permission denied)", "/proc/sys/fs/fuse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fetchWaitCheck(pools, tc.timeout, tc.err)
			if c.Status != tc.status || !strings.Contains(c.Detail, tc.detail) || (tc.fix == "") != (c.Fix == "") || !strings.Contains(c.Fix, tc.fix) {
				t.Fatalf("got %+v\nwant status %s, detail %q, fix %q", c, tc.status, tc.detail, tc.fix)
			}
		})
	}
}
