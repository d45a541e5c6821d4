package doctor

import (
	"fmt"
	"strings"
	"time"

	"github.com/tokend/tokend/config"
	"github.com/tokend/tokend/fusefs"
)

// fetchWait checks each pool's fetch.wait (how long a tool's first look
// after a key change waits for the fresh token) against the kernel's FUSE
// request timeout: a request held longer aborts the whole mount, so the
// agent holds one at most half of it (fusefs.WaitLimit).
func fetchWait(pools []config.PoolConfig) Check {
	timeout, err := fusefs.RequestTimeout()
	return fetchWaitCheck(pools, timeout, err)
}

func fetchWaitCheck(pools []config.PoolConfig, timeout time.Duration, err error) Check {
	c := Check{Name: "fetch.wait", Status: OK}
	if err != nil {
		c.Status = Warn
		c.Detail = fmt.Sprintf("cannot read the kernel's FUSE request timeout (%v): the agent cannot keep fetch.wait below it", err)
		c.Fix = "check that /proc/sys/fs/fuse is readable"
		return c
	}
	limit := fusefs.WaitLimit(timeout)
	var over, waits []string
	for _, pc := range pools {
		w := pc.Fetch.Wait.Std()
		key := "fetch.wait"
		if pc.Name != config.DefaultPool {
			key = "pools." + pc.Name + ".fetch.wait"
		}
		waits = append(waits, fmt.Sprintf("%s %s", key, w))
		if w > limit {
			over = append(over, fmt.Sprintf("%s (%s)", key, w))
		}
	}
	switch {
	case len(over) > 0:
		c.Status = Warn
		c.Detail = fmt.Sprintf("%s above half the kernel's FUSE request timeout (%s): the agent holds a tool's first look after a key change %s at most",
			strings.Join(over, ", "), timeout, limit)
		c.Fix = fmt.Sprintf("lower fetch.wait to %s or less, or raise /proc/sys/fs/fuse/default_request_timeout (as root)", limit)
	case timeout > 0:
		c.Detail = fmt.Sprintf("%s: below half the kernel's FUSE request timeout (%s)", strings.Join(waits, ", "), timeout)
	default:
		c.Detail = strings.Join(waits, ", ") + ": the kernel has no FUSE request timeout"
	}
	return c
}
