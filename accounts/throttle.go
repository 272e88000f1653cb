package accounts

import (
	"sync"
	"time"
)

// Throttle slows down repeated failed logins. Failures are counted per
// (name, address) and per address; after Free failures in a row, each
// further attempt from that key must wait a delay that doubles per failure
// up to Max. A success clears the (name, address) key, so a correct login
// from another address is never blocked by someone guessing elsewhere.
type Throttle struct {
	Free  int           // failures allowed before delays start; default 5
	Base  time.Duration // first delay; default 1s
	Max   time.Duration // longest delay; default 5m
	Limit int           // keys tracked; default 100,000 (oldest dropped first)

	mu      sync.Mutex
	entries map[string]*throttleEntry
	now     func() time.Time
}

type throttleEntry struct {
	failures int
	until    time.Time
	last     time.Time
}

// NewThrottle returns a Throttle with the defaults.
func NewThrottle() *Throttle {
	return &Throttle{Free: 5, Base: time.Second, Max: 5 * time.Minute, Limit: 100_000, entries: map[string]*throttleEntry{}, now: time.Now}
}

func keys(name, addr string) [2]string {
	return [2]string{"u\x00" + name + "\x00" + addr, "a\x00" + addr}
}

// Wait reports how long the caller must wait before (name, addr) may try
// again; 0 means now.
func (t *Throttle) Wait(name, addr string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var wait time.Duration
	for _, k := range keys(name, addr) {
		if e := t.entries[k]; e != nil && e.until.After(now) {
			wait = max(wait, e.until.Sub(now))
		}
	}
	return wait
}

// Fail records a failed attempt and returns the delay now in force.
func (t *Throttle) Fail(name, addr string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var wait time.Duration
	for i, k := range keys(name, addr) {
		e := t.entries[k]
		if e == nil {
			if len(t.entries) >= t.Limit {
				t.evictOldest()
			}
			e = &throttleEntry{}
			t.entries[k] = e
		}
		e.failures++
		e.last = now
		free := t.Free
		if i == 1 {
			free *= 4 // an address may hold several accounts (a gateway)
		}
		if over := e.failures - free; over > 0 {
			d := t.Base << min(over-1, 20)
			if d > t.Max || d <= 0 {
				d = t.Max
			}
			e.until = now.Add(d)
			wait = max(wait, d)
		}
	}
	return wait
}

// Success clears the failures of (name, addr).
func (t *Throttle) Success(name, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.entries, keys(name, addr)[0])
}

func (t *Throttle) evictOldest() {
	var oldestKey string
	var oldest time.Time
	for k, e := range t.entries {
		if oldestKey == "" || e.last.Before(oldest) {
			oldestKey, oldest = k, e.last
		}
	}
	delete(t.entries, oldestKey)
}
