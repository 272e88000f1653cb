package edge

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/iotkv/iotkv"
)

// Expiry. A put with a ttl stores its expiry in the record and an entry
// x\0{expiry}{device}\0{key} in the expiry index, both in the op's batch;
// overwriting or deleting the key removes the entry. Reads treat a record
// past its expiry as missing (store.go), so the sweeper's lag is never
// visible. The sweeper walks the index in expiry order and submits the
// expired keys to the committer as deletes, like any other delete: they
// go to the change log, the master and the device's counters. The index
// is in the store, so expiry survives restarts.

func expiryKey(expiry int64, device, key string) []byte {
	b := make([]byte, 0, len(prefixExpiry)+8+len(device)+1+len(key))
	b = append(b, prefixExpiry...)
	b = binary.BigEndian.AppendUint64(b, uint64(expiry))
	b = append(b, device...)
	b = append(b, 0)
	return append(b, key...)
}

func parseExpiryKey(k []byte) (expiry int64, device, key string, ok bool) {
	rest := k[len(prefixExpiry):]
	if len(rest) < 9 {
		return 0, "", "", false
	}
	expiry = int64(binary.BigEndian.Uint64(rest))
	rest = rest[8:]
	for i, c := range rest {
		if c == 0 {
			return expiry, string(rest[:i]), string(rest[i+1:]), true
		}
	}
	return 0, "", "", false
}

// applyExpiry deletes, within group g, each key of r (a sweeper write)
// whose record still carries the expiry the index gave and is past it.
// It returns the new change seq.
func (c *committer) applyExpiry(g *group, batch *pebble.Batch, r *writeReq, st *devState, cseq uint64, nowMs int64) (uint64, error) {
	olds := make([]recInfo, len(r.ops))
	for j, op := range r.ops {
		old, err := c.current(g, nil, op.Key, recordKey(r.device, op.Key))
		if err != nil {
			return cseq, fmt.Errorf("expire %s/%s: %w", r.device, op.Key, err)
		}
		olds[j] = old
	}
	var buf []byte
	for j, op := range r.ops {
		exp, old := r.expire[j], olds[j]
		if exp > nowMs {
			continue // not yet (the clock moved back): a later sweep
		}
		_ = batch.Delete(expiryKey(exp, r.device, op.Key), nil)
		if !old.exists || old.expiry != exp {
			continue // rewritten or deleted since: only the stale entry goes
		}
		cseq++
		g.nops++
		rk := recordKey(r.device, op.Key)
		_ = batch.Delete(rk, nil)
		g.recs[string(rk)] = recInfo{}
		ch := Change{Seq: cseq, Device: r.device, Key: op.Key, Op: iotkv.OpDel, UpdatedAt: nowMs}
		buf = appendChange(buf[:0], ch)
		_ = batch.Set(changeKey(cseq), buf, nil)
		g.logBytes += int64(len(buf))
		if c.store.indexHistory {
			g.indexBytes += indexChange(batch, &ch)
		}
		g.changes = append(g.changes, ch)
		st.keys--
		st.bytes -= old.size
	}
	return cseq, nil
}

// sweeper deletes expired keys through the committer. Owned by the Edge:
// started by Open, stopped by Close before the committer.
type sweeper struct {
	c     *committer
	store *Store
	log   *slog.Logger
	now   func() time.Time
	stop  chan struct{}
	done  chan struct{}
}

// sweepChunk bounds the deletes one sweep submits before waiting for them:
// at most this many ops of any group commit come from the sweeper, so it
// never holds the committer more than a few milliseconds.
const sweepChunk = 256

// sweepIdle is the longest the sweeper sleeps: a key written with a ttl
// shorter than that is swept at most this late (reads hide it anyway).
const sweepIdle = time.Second

func newSweeper(c *committer, store *Store, log *slog.Logger) *sweeper {
	s := &sweeper{c: c, store: store, log: log, now: time.Now, stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

// close stops the sweeper and waits for it. Safe to call twice.
func (s *sweeper) close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

func (s *sweeper) run() {
	defer close(s.done)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		wait, err := s.sweep()
		if err != nil {
			s.log.Warn("expiry sweep", "err", err)
			wait = sweepIdle
		}
		t.Reset(wait)
	}
}

// sweep deletes every key expired by now, a chunk at a time, and returns
// how long to sleep before the next sweep.
func (s *sweeper) sweep() (time.Duration, error) {
	for {
		select {
		case <-s.stop:
			return sweepIdle, nil
		default:
		}
		now := s.now().UnixMilli()
		reqs, next, err := s.expired(now)
		if err != nil {
			return 0, err
		}
		if len(reqs) == 0 {
			if next == 0 {
				return sweepIdle, nil
			}
			return min(sweepIdle, time.Duration(next-now)*time.Millisecond), nil
		}
		results := make(chan error, len(reqs))
		for _, r := range reqs {
			r.done = func(cr commitResult) { results <- cr.err }
			s.c.submit(r)
		}
		for range reqs {
			if err := <-results; err != nil {
				return 0, err
			}
		}
	}
}

// expired reads up to sweepChunk index entries due by now, as one write
// per device; when none is due, next is the earliest expiry (0: none).
func (s *sweeper) expired(now int64) (reqs []*writeReq, next int64, err error) {
	upper := binary.BigEndian.AppendUint64(append([]byte{}, prefixExpiry...), uint64(now+1))
	it, err := s.store.db.NewIter(&pebble.IterOptions{LowerBound: prefixExpiry, UpperBound: prefixEnd(prefixExpiry)})
	if err != nil {
		return nil, 0, fmt.Errorf("expiry index: %w", err)
	}
	defer it.Close()
	byDev := map[string]*writeReq{}
	n := 0
	for ok := it.First(); ok && n < sweepChunk; ok = it.Next() {
		exp, dev, key, valid := parseExpiryKey(it.Key())
		if !valid {
			continue
		}
		if string(it.Key()) >= string(upper) {
			next = exp
			break
		}
		r := byDev[dev]
		if r == nil {
			r = &writeReq{device: dev}
			byDev[dev] = r
			reqs = append(reqs, r)
		}
		r.ops = append(r.ops, iotkv.Op{Op: iotkv.OpDel, Key: key})
		r.expire = append(r.expire, exp)
		n++
	}
	if err := it.Error(); err != nil {
		return nil, 0, fmt.Errorf("expiry index: %w", err)
	}
	return reqs, next, nil
}
