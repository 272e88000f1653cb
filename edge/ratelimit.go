package edge

import (
	"sync"
	"time"
)

// rateLimiter holds one token bucket per device, shared by every write
// path (MQTT ingest and REST). Writes are checked here before they are
// decoded or queued, so a device over its rate costs the edge a map
// lookup, not a JSON decode and a place in a group commit.
//
// Every attempt is charged, refused or not: a write that needs more tokens
// than the bucket holds takes them anyway, into debt down to one full
// bucket, and an attempt made while the bucket is empty or in debt is
// refused unread and takes as many tokens as the device's last batch had
// ops. A device that keeps writing faster
// than its rate is refused until it slows down; one that stops is back at
// zero within RateBurst seconds.
type rateLimiter struct {
	rate  float64 // tokens per second; 0: no limit
	burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(opsPerSecond int64) *rateLimiter {
	l := &rateLimiter{buckets: map[string]*bucket{}}
	if opsPerSecond > 0 {
		l.rate = float64(opsPerSecond)
		l.burst = float64(opsPerSecond * RateBurst)
	}
	return l
}

// refill returns device's bucket as of now. Called with mu held.
func (l *rateLimiter) refill(device string, now time.Time) *bucket {
	b := l.buckets[device]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[device] = b
		return b
	}
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(l.burst, b.tokens+dt*l.rate)
		b.last = now
	}
	return b
}

// open reports whether device may attempt a write now: its bucket holds
// at least one token. A refused attempt takes guess tokens (its op count
// is not read); wait is how long the bucket then needs to hold one again.
func (l *rateLimiter) open(device string, guess int, now time.Time) (ok bool, wait time.Duration) {
	if l.rate == 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(device, now)
	if b.tokens >= 1 {
		return true, 0
	}
	return false, l.charge(b, guess)
}

// take charges n ops to device's bucket and reports whether it held them;
// when not, wait is how long the bucket needs to hold one token again.
func (l *rateLimiter) take(device string, n int, now time.Time) (ok bool, wait time.Duration) {
	if l.rate == 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(device, now)
	if b.tokens >= float64(n) {
		b.tokens -= float64(n)
		return true, 0
	}
	return false, l.charge(b, n)
}

// charge takes n tokens from b for a refused attempt, into debt down to
// one full bucket, and returns how long b needs to hold one token again.
func (l *rateLimiter) charge(b *bucket, n int) time.Duration {
	b.tokens = max(-l.burst, b.tokens-float64(n))
	return time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}
