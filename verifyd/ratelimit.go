package verifyd

import (
	"math"
	"sync"
	"time"
)

// limiter is a token bucket per peer uid: each uid may make burst requests
// at once and rate requests per second after that. Buckets that have refilled
// are forgotten, so memory stays bounded by the uids active in the last
// burst/rate seconds.
type limiter struct {
	rate  float64 // tokens per second
	burst float64

	mu        sync.Mutex
	buckets   map[uint32]*bucket
	lastPrune time.Time
}

type bucket struct {
	tokens  float64
	last    time.Time
	logged  time.Time // when a refusal was last reported
	refused int       // refusals since then
}

// logEvery is how often refusals to one uid are reported at most.
const logEvery = 10 * time.Second

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: map[uint32]*bucket{}}
}

// allow takes one token from uid's bucket. When it cannot, it says how long
// until one is there and, at most every logEvery per uid, how many requests
// were refused since the last report (report > 0: worth a log line).
func (l *limiter) allow(uid uint32, now time.Time) (ok bool, retry time.Duration, report int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prune(now)
	b := l.buckets[uid]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[uid] = b
	}
	l.refill(b, now)
	if b.tokens >= 1 {
		b.tokens--
		return true, 0, 0
	}
	b.refused++
	if b.logged.IsZero() || now.Sub(b.logged) >= logEvery {
		report, b.refused, b.logged = b.refused, 0, now
	}
	secs := (1 - b.tokens) / l.rate
	return false, time.Duration(math.Ceil(secs * float64(time.Second))), report
}

func (l *limiter) refill(b *bucket, now time.Time) {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(l.burst, b.tokens+el*l.rate)
	}
	b.last = now
}

// prune forgets full buckets, at most once a minute.
func (l *limiter) prune(now time.Time) {
	if now.Sub(l.lastPrune) < time.Minute {
		return
	}
	l.lastPrune = now
	for uid, b := range l.buckets {
		l.refill(b, now)
		if b.tokens >= l.burst && now.Sub(b.logged) >= logEvery {
			delete(l.buckets, uid)
		}
	}
}
