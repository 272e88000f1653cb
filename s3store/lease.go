package s3store

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// leaseDoc is lease.json.
type leaseDoc struct {
	Holder string `json:"holder"` // the master's name, for people
	Nonce  string `json:"nonce"`  // the holder's Store nonce
	Rev    uint64 `json:"rev"`    // renewals
	TTLms  int64  `json:"ttl_ms"`
}

// Lease decides which master of several compacts one edge incarnation.
// The holder renews lease.json with If-Match (every TTL/2 in the master,
// sooner after a failed renewal). Another master
// takes it over only after it has seen the same ETag for TTL+Margin on its
// own monotonic clock: no wall clocks are compared. The holder counts
// itself leader only until TTL after the start of its last successful
// renewal, so it steps down before anyone may take over.
//
// A Lease is used by one goroutine.
type Lease struct {
	s          *Store
	key        string
	name       string
	ttl, extra time.Duration
	now        func() time.Time

	etag       string    // ours, when held
	validUntil time.Time // monotonic
	rev        uint64
	seen       string // the ETag last observed when not held
	seenAt     time.Time
}

// NewLease makes a lease for edge/inc; margin defaults to TTL/2.
func (s *Store) NewLease(edge, inc, name string, ttl, margin time.Duration) *Lease {
	if margin <= 0 {
		margin = ttl / 2
	}
	return &Lease{s: s, key: s.leaseKey(edge, inc), name: name, ttl: ttl, extra: margin, now: time.Now}
}

// Held reports whether we hold the lease now.
func (l *Lease) Held() bool { return l.etag != "" && l.now().Before(l.validUntil) }

// Tick renews a held lease or watches and takes over an expired one; call
// it well within TTL (the master: TTL/2 when held, TTL/3 when watching).
// It returns whether we hold the lease, and the error of
// S3 if it could not be reached.
func (l *Lease) Tick(ctx context.Context) (bool, error) {
	start := l.now()
	if l.etag != "" {
		doc := leaseDoc{Holder: l.name, Nonce: l.s.nonce, Rev: l.rev + 1, TTLms: l.ttl.Milliseconds()}
		etag, err := l.write(ctx, doc, l.etag)
		switch {
		case err == nil:
			l.etag, l.rev, l.validUntil = etag, doc.Rev, start.Add(l.ttl)
			return true, nil
		case errors.Is(err, ErrConflict):
			l.etag = "" // taken over
			return false, nil
		default:
			if !l.Held() {
				l.etag = ""
			}
			return l.Held(), err
		}
	}
	data, info, err := l.s.get(ctx, "lease", l.key)
	if errors.Is(err, ErrNotFound) {
		return l.take(ctx, start, "*")
	}
	if err != nil {
		return false, err
	}
	var doc leaseDoc
	if json.Unmarshal(data, &doc) == nil && doc.Nonce == l.s.nonce {
		// Ours from before (e.g. a renewal whose answer we lost).
		return l.take(ctx, start, info.ETag)
	}
	if info.ETag != l.seen {
		l.seen, l.seenAt = info.ETag, start
		return false, nil
	}
	if start.Sub(l.seenAt) < l.ttl+l.extra {
		return false, nil
	}
	return l.take(ctx, start, info.ETag)
}

// TakeoverAt is when, on the local monotonic clock, a Tick may take over
// the lease we watch: TTL+Margin after we first saw its current ETag. ok
// is false while we hold the lease or have seen none. A watcher that ticks
// at a fixed period should also tick then, or it takes over up to a period
// late.
func (l *Lease) TakeoverAt() (at time.Time, ok bool) {
	if l.etag != "" || l.seen == "" {
		return time.Time{}, false
	}
	return l.seenAt.Add(l.ttl + l.extra), true
}

func (l *Lease) take(ctx context.Context, start time.Time, cond string) (bool, error) {
	doc := leaseDoc{Holder: l.name, Nonce: l.s.nonce, Rev: 1, TTLms: l.ttl.Milliseconds()}
	etag, err := l.write(ctx, doc, cond)
	if errors.Is(err, ErrConflict) {
		l.seen = ""
		return false, nil
	}
	if err != nil {
		return false, err
	}
	l.etag, l.rev, l.validUntil = etag, doc.Rev, start.Add(l.ttl)
	return true, nil
}

// write puts lease.json conditionally; a 412 that our own retried request
// caused (the stored lease is ours at this rev) is success.
func (l *Lease) write(ctx context.Context, doc leaseDoc, cond string) (string, error) {
	body, _ := json.Marshal(doc)
	etag, err := l.s.put(ctx, "lease", l.key, append(body, '\n'), cond, nil)
	if !errors.Is(err, ErrConflict) {
		return etag, err
	}
	data, info, gerr := l.s.get(ctx, "lease", l.key)
	var got leaseDoc
	if gerr == nil && json.Unmarshal(data, &got) == nil && got.Nonce == doc.Nonce && got.Rev == doc.Rev {
		return info.ETag, nil
	}
	return "", ErrConflict
}

// Release gives the lease up (on a clean shutdown) so that another master
// need not wait for it to expire.
func (l *Lease) Release(ctx context.Context) {
	if !l.Held() {
		return
	}
	_ = l.s.remove(ctx, "lease", l.key)
	l.etag = ""
}
