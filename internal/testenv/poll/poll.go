// Package poll waits for a condition with a deadline, for the tests and the
// benchmark: neither sleeps a fixed time waiting for something.
package poll

import "time"

// Until calls cond until it returns true or timeout has passed, and reports
// whether it did. It looks again after 1 ms, then ever less often, at most
// every 50 ms.
func Until(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
	}
}
