package edge

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
)

// ErrClosed is returned for writes submitted after Close.
var ErrClosed = errors.New("edge: store is closing")

// writeReq is one atomic write: a device batch, a kv-topic message or a
// REST write. seq 0 means the write carries no device seq.
type writeReq struct {
	device string
	seq    uint64
	ops    []iotkv.Op
	usage  usage // what the ops change in the device's counters (set by admit)
	// refused is set for a write that failed validation: it applies
	// nothing but is answered in order with the others.
	refused error
	// expire, set by the sweeper, makes ops deletes of expired keys:
	// expire[i] is the expiry the index holds for ops[i] (expiry.go).
	expire []int64
	// prior lists seqs of this device that ingest refused at once (over
	// its rate) and no status/ack lists yet: recorded before the write.
	prior []iotkv.Refusal
	done  func(commitResult)
}

type commitResult struct {
	records   []iotkv.Record // one per op, in order (deletes carry no value)
	duplicate bool           // seq already applied: nothing applied, acknowledged
	err       error
}

// committed is what one group commit made durable, for the observers.
type committed struct {
	changes    []Change
	acks       map[string]iotkv.AckMessage // device -> its status/ack
	logBytes   int64                       // bytes the changes take in the change log
	indexBytes int64                       // bytes their history index entries take
}

// committer is the single goroutine that owns the write path: it takes the
// writes that queued up while the previous fsync ran, applies them in
// arrival order into one Pebble batch with their seqs and change log
// entries, commits it with one fsync, and then reports every result in the
// same order. Per-device seq state and the change seq live only here.
type committer struct {
	store    *Store
	log      *slog.Logger
	maxGroup int
	onCommit func(committed)
	now      func() time.Time
	metrics  *commitMetrics
	quotas   *quotas
	// hold, when set, runs before each group and may wait (the backup
	// lag gate); it returns when quit is closed.
	hold func(quit <-chan struct{})
	rate *rateLimiter // shared with ingest and REST, which check it

	mu       sync.RWMutex // guards closed against Submit; held shared while sending
	closed   bool
	reqs     chan *writeReq
	syncq    chan *group   // applied groups waiting for their fsync, in order
	quit     chan struct{} // closed by release: a held loop goes on
	quitOnce sync.Once
	done     chan struct{}

	// Owned by the loop goroutine.
	devs    map[string]devState
	cseq    uint64
	scratch []byte // admit's record encoding buffer

	failed atomic.Bool // set by the first failed commit; see loop
}

func newCommitter(store *Store, log *slog.Logger, reg prometheus.Registerer, q QuotaOptions, onCommit func(committed), hold func(quit <-chan struct{})) (*committer, error) {
	c := &committer{
		hold:     hold,
		quotas:   newQuotas(q),
		rate:     newRateLimiter(q.withDefaults().RateOps),
		store:    store,
		log:      log,
		maxGroup: 1024,
		onCommit: onCommit,
		now:      time.Now,
		reqs:     make(chan *writeReq, 4096),
		syncq:    make(chan *group, 8),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		devs:     make(map[string]devState),
	}
	var err error
	if c.metrics, err = newCommitMetrics(reg); err != nil {
		return nil, err
	}
	devs, err := store.Devices()
	if err != nil {
		return nil, err
	}
	for _, d := range devs {
		c.devs[d.Device] = devState{seq: d.LastSeq, lastWrite: d.LastWrite, refused: d.Refused, keys: d.Keys, bytes: d.Bytes}
	}
	if counted, err := store.usageCounted(); err != nil {
		return nil, err
	} else if !counted {
		if err := store.recount(c.devs); err != nil {
			return nil, err
		}
	}
	// Everything on disk at start is durable: reads see it from here on.
	if !store.readsBeforeSync {
		store.view.publish(store.db.NewSnapshot())
	}
	if c.cseq, err = store.lastChangeSeq(); err != nil {
		return nil, err
	}
	go c.loop()
	go c.syncLoop()
	return c, nil
}

// submit queues a write; done is always called exactly once.
func (c *committer) submit(r *writeReq) {
	compactOps(r.ops)
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		r.done(commitResult{err: ErrClosed})
		return
	}
	c.reqs <- r
	c.mu.RUnlock()
}

// close stops taking writes, commits and reports every queued one, and
// waits for the loop to end. Safe to call twice.
// release makes the loop stop holding groups (the backup lag gate), so
// that writers waiting on it finish and close can take its lock. Safe to
// call more than once.
func (c *committer) release() { c.quitOnce.Do(func() { close(c.quit) }) }

func (c *committer) close() {
	c.release()
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.reqs)
	}
	c.mu.Unlock()
	<-c.done
}

// group is one group commit on its way through the pipeline.
type group struct {
	reqs       []*writeReq
	batch      *pebble.Batch // nil when the group failed before reaching Pebble
	err        error         // set: every write of the group fails
	results    []commitResult
	pending    map[string]devState // the devices this group touches
	changes    []Change
	logBytes   int64
	indexBytes int64
	nops       int
	start      time.Time
	recs       map[string]recInfo // records this group wrote, by record key
	snap       *pebble.Snapshot   // the store just after this group: published once it is durable
}

// loop builds each group and applies it to Pebble without waiting for the
// fsync; syncLoop waits for the fsyncs in order and only then reports. So
// the next group is encoded and written to the WAL while the previous one
// is being synced, and Pebble folds their syncs together.
//
// The seq state moves on as soon as a group is applied. If an fsync fails,
// that state may count writes that are not durable, so the committer stops
// for good (failed): every later write fails, nothing more is
// acknowledged, /readyz reports it, and a restart reloads the state from
// what is on disk.
func (c *committer) loop() {
	defer close(c.syncq)
	for first := range c.reqs {
		if c.hold != nil {
			c.hold(c.quit)
		}
		reqs := []*writeReq{first}
		ops := len(first.ops)
	drain:
		// A group ends when nothing more is waiting, or at maxGroup
		// writes or maxGroupOps ops: bigger groups would only make
		// every PUBACK in them wait longer, since the next group's WAL
		// write overlaps this one's fsync anyway.
		for len(reqs) < c.maxGroup && ops < maxGroupOps {
			select {
			case r, ok := <-c.reqs:
				if !ok {
					break drain
				}
				reqs = append(reqs, r)
				ops += len(r.ops)
			default:
				break drain
			}
		}
		c.syncq <- c.apply(reqs)
	}
}

func (c *committer) apply(reqs []*writeReq) *group {
	g := &group{reqs: reqs, start: c.now(), results: make([]commitResult, len(reqs)), pending: map[string]devState{}, recs: map[string]recInfo{}}
	if c.failed.Load() {
		g.err = errFailed
		return g
	}
	if err := c.prefetch(g, reqs); err != nil {
		g.err = err
		return g
	}
	nowMs := g.start.UnixMilli()
	batch := c.store.db.NewBatch()
	cseq := c.cseq
	var buf []byte
	for i, r := range reqs {
		st, touched := g.pending[r.device]
		if !touched {
			st = c.devs[r.device]
		}
		last := st.seq
		if r.expire != nil {
			var err error
			if cseq, err = c.applyExpiry(g, batch, r, &st, cseq, nowMs); err != nil {
				g.results[i].err = err
				continue
			}
			g.pending[r.device] = st
			_ = batch.Set(deviceKey(r.device), st.meta(), nil)
			continue
		}
		if len(r.prior) > 0 {
			refused := st.refused
			for _, p := range r.prior {
				if p.Seq > last {
					st.refused = withRefusal(st.refused, p.Seq, p.Code)
				}
			}
			if !slices.Equal(refused, st.refused) {
				g.pending[r.device] = st
				_ = batch.Set(deviceKey(r.device), st.meta(), nil)
			}
		}
		if r.refused == nil && !(r.seq > 0 && r.seq <= last) {
			r.refused = c.admit(g, r, st, cseq, nowMs)
		}
		if r.refused != nil {
			g.results[i].err = r.refused
			c.metrics.refused.WithLabelValues(iotkv.CodeOf(r.refused)).Inc()
			if r.seq > last {
				// Every later status/ack lists it: a device that missed
				// the status/error must not count the batch as applied
				// when a later ack covers its seq. The seq is not used
				// up: a corrected batch may be sent under it.
				st.refused = withRefusal(st.refused, r.seq, iotkv.CodeOf(r.refused))
				g.pending[r.device] = st
				_ = batch.Set(deviceKey(r.device), st.meta(), nil)
			}
			continue
		}
		if r.seq > 0 && r.seq <= last {
			g.results[i].duplicate = true
			g.pending[r.device] = st // re-announce the ack
			continue
		}
		recs := make([]iotkv.Record, len(r.ops))
		for j, op := range r.ops {
			cseq++
			g.nops++
			ch := Change{Seq: cseq, Device: r.device, Key: op.Key, Op: op.Op, UpdatedAt: nowMs, DeviceSeq: r.seq}
			rk := recordKey(r.device, op.Key)
			old := g.recs[string(rk)] // admit looked every key up
			if old.expiry != 0 {
				_ = batch.Delete(expiryKey(old.expiry, r.device, op.Key), nil)
			}
			if op.Op == iotkv.OpPut {
				sr := storedRecord{Value: op.Value, TS: op.TS, UpdatedAt: nowMs, Seq: r.seq, ChangeSeq: cseq}
				if op.TTL != nil {
					sr.Expiry = nowMs + *op.TTL*1000
					_ = batch.Set(expiryKey(sr.Expiry, r.device, op.Key), nil, nil)
				}
				buf = appendRecord(buf[:0], sr)
				_ = batch.Set(rk, buf, nil) // Set copies
				g.recs[string(rk)] = infoOf(op.Key, buf)

				ch.Value, ch.TS = op.Value, op.TS
				recs[j] = sr.record(r.device, op.Key)
			} else {
				_ = batch.Delete(rk, nil)
				g.recs[string(rk)] = recInfo{}
				recs[j] = iotkv.Record{Device: r.device, Key: op.Key, UpdatedAt: nowMs, Seq: r.seq, ChangeSeq: cseq}
			}
			buf = appendChange(buf[:0], ch)
			_ = batch.Set(changeKey(cseq), buf, nil)
			g.logBytes += int64(len(buf))
			if c.store.indexHistory {
				g.indexBytes += indexChange(batch, &ch)
			}
			g.changes = append(g.changes, ch)
		}
		g.results[i].records = recs
		if r.seq > 0 {
			st.seq = r.seq
			st.refused = withRefusal(st.refused, r.seq, "") // applied now, under a refused seq
		}
		st.lastWrite = nowMs
		st.keys += r.usage.keys
		st.bytes += r.usage.bytes
		g.pending[r.device] = st
		_ = batch.Set(deviceKey(r.device), st.meta(), nil)
	}
	_ = batch.Set(keyChangeSeq, binary.BigEndian.AppendUint64(nil, cseq), nil)
	// ApplyNoSyncWait is marked experimental in Pebble; it is what
	// CockroachDB's own write pipeline uses, and the one way to have a
	// group in the WAL while the previous group's fsync runs.
	if err := c.store.db.ApplyNoSyncWait(batch, pebble.Sync); err != nil {
		_ = batch.Close()
		c.fail(err)
		g.err = fmt.Errorf("commit: %w", err)
		return g
	}
	g.batch = batch
	if !c.store.readsBeforeSync {
		g.snap = c.store.db.NewSnapshot() // before the next group is applied
	}
	c.cseq = cseq
	for d, s := range g.pending {
		c.devs[d] = s
	}
	return g
}

// devState is what the committer knows of one device: its last applied
// seq, its last write, and its recent refusals.
type devState struct {
	seq         uint64
	lastWrite   int64
	refused     []iotkv.Refusal // never modified in place: acks share it
	keys, bytes int64           // exact: kept in the same batch as the records
}

func (s devState) meta() []byte {
	b, _ := json.Marshal(deviceMeta{LastSeq: s.seq, LastWrite: s.lastWrite, Refused: s.refused, Keys: s.keys, Bytes: s.bytes})
	return b
}

// withRefusal returns a new list: old without seq, then {seq, code} unless
// code is empty, keeping the last MaxRefusals. old is never modified (acks
// share it); when nothing changes (the usual applied batch) it is returned
// as is, without allocating.
func withRefusal(old []iotkv.Refusal, seq uint64, code string) []iotkv.Refusal {
	if code == "" && !slices.ContainsFunc(old, func(r iotkv.Refusal) bool { return r.Seq == seq }) {
		return old
	}
	out := make([]iotkv.Refusal, 0, len(old)+1)
	for _, r := range old {
		if r.Seq != seq {
			out = append(out, r)
		}
	}
	if code != "" {
		out = append(out, iotkv.Refusal{Seq: seq, Code: code})
	}
	if len(out) == 0 {
		return nil
	}
	return out[max(0, len(out)-iotkv.MaxRefusals):]
}

// maxGroupOps bounds the ops of one group commit.
const maxGroupOps = 8192

// errFailed is the error of writes after a failed commit.
var errFailed = errors.New("the store failed to make a commit durable; restart the edge once the disk is fixed")

func (c *committer) fail(err error) {
	if !c.failed.Swap(true) {
		c.metrics.commitErrors.Inc()
		c.log.Error("commit failed: nothing more is acknowledged until the edge restarts", "err", err)
	}
}

func (c *committer) syncLoop() {
	defer close(c.done)
	for g := range c.syncq {
		if g.batch != nil {
			err := g.batch.SyncWait()
			_ = g.batch.Close()
			if err != nil {
				c.fail(err)
				g.err = fmt.Errorf("commit: %w", err)
			} else if c.failed.Load() {
				g.err = errFailed // an earlier group failed: this one's seq state is suspect
			}
			switch {
			case g.snap == nil: // reads before sync
			case g.err == nil:
				c.store.view.publish(g.snap) // before any PUBACK: a reader after it sees the write
			default:
				_ = g.snap.Close() // never readable
			}
		}
		c.metrics.commitSeconds.Observe(c.now().Sub(g.start).Seconds())
		c.metrics.groupSize.Observe(float64(len(g.reqs)))
		if g.err != nil {
			for _, r := range g.reqs {
				r.done(commitResult{err: g.err})
			}
			continue
		}
		c.metrics.ops.Add(float64(g.nops))
		c.metrics.writes.Add(float64(len(g.reqs)))
		for i, r := range g.reqs {
			r.done(g.results[i])
		}
		if c.onCommit != nil {
			acks := make(map[string]iotkv.AckMessage, len(g.pending))
			for d, st := range g.pending {
				acks[d] = iotkv.AckMessage{Seq: st.seq, Refused: st.refused}
			}
			c.onCommit(committed{changes: g.changes, acks: acks, logBytes: g.logBytes, indexBytes: g.indexBytes})
		}
	}
}

type commitMetrics struct {
	commitSeconds prometheus.Histogram
	groupSize     prometheus.Histogram
	ops           prometheus.Counter
	writes        prometheus.Counter
	commitErrors  prometheus.Counter
	refused       *prometheus.CounterVec
}

func newCommitMetrics(reg prometheus.Registerer) (*commitMetrics, error) {
	m := &commitMetrics{
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "iotkv_commit_seconds", Help: "Time of one group commit, fsync included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		groupSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "iotkv_commit_group_writes", Help: "Writes (batches, messages, REST writes) per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		ops:          prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_ops_applied_total", Help: "Ops (puts and deletes) applied."}),
		writes:       prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_writes_committed_total", Help: "Writes (batches, messages, REST writes) committed or acknowledged as duplicates."}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_commit_errors_total", Help: "Group commits that failed; none of their writes were acknowledged."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotkv_writes_refused_total",
			Help: "Writes (batches, messages, REST writes) refused whole, by error code (quota_exceeded, rate_limited, invalid_batch, ...)."}, []string{"code"}),
	}
	for _, col := range []prometheus.Collector{m.commitSeconds, m.groupSize, m.ops, m.writes, m.commitErrors, m.refused} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register commit metrics: %w", err)
		}
	}
	return m, nil
}
