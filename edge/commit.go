package edge

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	// refused is set for a write that failed validation: it applies
	// nothing but is answered in order with the others.
	refused error
	done    func(commitResult)
}

type commitResult struct {
	records   []iotkv.Record // one per op, in order (deletes carry no value)
	duplicate bool           // seq already applied: nothing applied, acknowledged
	err       error
}

// committed is what one group commit made durable, for the observers.
type committed struct {
	changes  []Change
	acks     map[string]uint64 // device -> last applied seq, for status/ack
	logBytes int64             // bytes the changes take in the change log
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

	mu     sync.RWMutex // guards closed against Submit; held shared while sending
	closed bool
	reqs   chan *writeReq
	done   chan struct{}

	// Owned by the loop goroutine.
	lastSeq map[string]uint64
	cseq    uint64

	healthy atomic.Bool // false after a failed commit, until one succeeds
}

func newCommitter(store *Store, log *slog.Logger, reg prometheus.Registerer, onCommit func(committed)) (*committer, error) {
	c := &committer{
		store:    store,
		log:      log,
		maxGroup: 1024,
		onCommit: onCommit,
		now:      time.Now,
		reqs:     make(chan *writeReq, 4096),
		done:     make(chan struct{}),
		lastSeq:  make(map[string]uint64),
	}
	c.healthy.Store(true)
	var err error
	if c.metrics, err = newCommitMetrics(reg); err != nil {
		return nil, err
	}
	devs, err := store.Devices()
	if err != nil {
		return nil, err
	}
	for _, d := range devs {
		c.lastSeq[d.Device] = d.LastSeq
	}
	if c.cseq, err = store.lastChangeSeq(); err != nil {
		return nil, err
	}
	go c.loop()
	return c, nil
}

// submit queues a write; done is always called exactly once.
func (c *committer) submit(r *writeReq) {
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
func (c *committer) close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.reqs)
	}
	c.mu.Unlock()
	<-c.done
}

func (c *committer) loop() {
	defer close(c.done)
	group := make([]*writeReq, 0, c.maxGroup)
	for first := range c.reqs {
		group = append(group[:0], first)
	drain:
		for len(group) < c.maxGroup {
			select {
			case r, ok := <-c.reqs:
				if !ok {
					break drain
				}
				group = append(group, r)
			default:
				break drain
			}
		}
		c.commitGroup(group)
	}
}

func (c *committer) commitGroup(group []*writeReq) {
	start := c.now()
	nowMs := start.UnixMilli()
	batch := c.store.db.NewBatch()
	defer batch.Close()
	results := make([]commitResult, len(group))
	pending := map[string]uint64{}
	cseq := c.cseq
	var changes []Change
	var nops int
	var logBytes int64
	for i, r := range group {
		last := max(c.lastSeq[r.device], pending[r.device])
		if r.refused != nil {
			results[i].err = r.refused
			continue
		}
		if r.seq > 0 && r.seq <= last {
			results[i].duplicate = true
			if _, ok := pending[r.device]; !ok {
				pending[r.device] = last // re-announce the ack
			}
			continue
		}
		recs := make([]iotkv.Record, len(r.ops))
		for j, op := range r.ops {
			cseq++
			nops++
			ch := Change{Seq: cseq, Device: r.device, Key: op.Key, Op: op.Op, UpdatedAt: nowMs, DeviceSeq: r.seq}
			rk := recordKey(r.device, op.Key)
			if op.Op == iotkv.OpPut {
				sr := storedRecord{Value: op.Value, TS: op.TS, UpdatedAt: nowMs, Seq: r.seq, ChangeSeq: cseq}
				enc, _ := json.Marshal(sr) // values are validated JSON: cannot fail
				_ = batch.Set(rk, enc, nil)
				ch.Value, ch.TS = op.Value, op.TS
				recs[j] = sr.record(r.device, op.Key)
			} else {
				_ = batch.Delete(rk, nil)
				recs[j] = iotkv.Record{Device: r.device, Key: op.Key, UpdatedAt: nowMs, Seq: r.seq, ChangeSeq: cseq}
			}
			enc, _ := json.Marshal(ch)
			_ = batch.Set(changeKey(cseq), enc, nil)
			logBytes += int64(len(enc))
			changes = append(changes, ch)
		}
		results[i].records = recs
		seq := r.seq
		if seq == 0 {
			seq = last
		}
		pending[r.device] = seq
		meta, _ := json.Marshal(deviceMeta{LastSeq: seq, LastWrite: nowMs})
		_ = batch.Set(deviceKey(r.device), meta, nil)
	}
	_ = batch.Set(keyChangeSeq, binary.BigEndian.AppendUint64(nil, cseq), nil)
	err := batch.Commit(pebble.Sync)
	elapsed := c.now().Sub(start)
	c.metrics.commitSeconds.Observe(elapsed.Seconds())
	c.metrics.groupSize.Observe(float64(len(group)))
	if err != nil {
		c.metrics.commitErrors.Inc()
		c.log.Error("commit failed: nothing in this group is acknowledged", "writes", len(group), "err", err)
		c.healthy.Store(false)
		for _, r := range group {
			r.done(commitResult{err: fmt.Errorf("commit: %w", err)})
		}
		return
	}
	c.healthy.Store(true)
	c.cseq = cseq
	for d, s := range pending {
		c.lastSeq[d] = s
	}
	c.metrics.ops.Add(float64(nops))
	c.metrics.writes.Add(float64(len(group)))
	for i, r := range group {
		r.done(results[i])
	}
	if c.onCommit != nil {
		c.onCommit(committed{changes: changes, acks: pending, logBytes: logBytes})
	}
}

type commitMetrics struct {
	commitSeconds prometheus.Histogram
	groupSize     prometheus.Histogram
	ops           prometheus.Counter
	writes        prometheus.Counter
	commitErrors  prometheus.Counter
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
	}
	for _, col := range []prometheus.Collector{m.commitSeconds, m.groupSize, m.ops, m.writes, m.commitErrors} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register commit metrics: %w", err)
		}
	}
	return m, nil
}
