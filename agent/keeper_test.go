package agent

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	for failures, want := range map[int][2]time.Duration{
		1:   {500 * time.Millisecond, time.Second},
		2:   {time.Second, 2 * time.Second},
		5:   {8 * time.Second, 16 * time.Second},
		100: {backoffMax / 2, backoffMax},
	} {
		for range 100 {
			if d := backoff(failures); d < want[0] || d > want[1] {
				t.Fatalf("backoff(%d) = %v, want within %v", failures, d, want)
			}
		}
	}
}

// Refresh is about two thirds into the life, jittered, and always before
// the expiry margin.
func TestRefreshTime(t *testing.T) {
	iat := time.Now().Unix()
	for _, c := range []struct {
		life, margin time.Duration
	}{
		{time.Hour, 30 * time.Second},
		{6 * time.Second, time.Second},
		{10 * time.Second, 30 * time.Second}, // margin longer than the life
	} {
		exp := iat + int64(c.life/time.Second)
		lo := time.Unix(iat, 0).Add(c.life*2/3 - c.life/20)
		hi := time.Unix(iat, 0).Add(c.life*2/3 + c.life/20)
		deadline := time.Unix(exp, 0).Add(-c.margin)
		seen := map[time.Time]bool{}
		for range 50 {
			at := refreshTime(iat, exp, c.margin)
			if c.margin >= c.life && at.After(time.Unix(iat, 0)) {
				t.Fatalf("life %v margin %v: refresh at %v, want at once: the token is within its margin from the start", c.life, c.margin, at)
			}
			if at.After(deadline) && c.margin < c.life {
				t.Fatalf("life %v margin %v: refresh at %v is after exp-margin %v", c.life, c.margin, at, deadline)
			}
			if c.margin < c.life/3 && (at.Before(lo) || at.After(hi)) {
				t.Fatalf("life %v: refresh at %v, want within [%v, %v]", c.life, at, lo, hi)
			}
			seen[at] = true
		}
		if c.margin < c.life/3 && len(seen) < 10 {
			t.Errorf("life %v: only %d distinct refresh times in 50: no jitter", c.life, len(seen))
		}
	}
}
