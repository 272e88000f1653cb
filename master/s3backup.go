package master

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/rest"
	"github.com/iotkv/iotkv/s3store"
)

// s3Backup keeps one edge's backup in object storage (--store s3://...):
// the changes not yet stored, the lease and the compactions. The
// follower's worker calls it; a compaction goroutine it starts and waits
// for writes snapshots. mu is a leaf lock for what REST reads.
//
// Changes are buffered and stored as one create-only segment every
// FlushInterval or FlushBytes; only then are they durable (and confirmed
// to the edge). The lease holder stores at once; the other masters, which
// see the same stream, only look (HEAD) for the holder's segment after a
// grace period and write it themselves when it is missing: a dead holder
// costs at most the grace period, never a gap, and a live one is not
// doubled in PUTs.
type s3Backup struct {
	id       string
	log      *slog.Logger
	opts     *Options
	m        *metrics
	sm       *s3Metrics
	st       *s3store.Store
	compactC chan compactResult
	wg       sync.WaitGroup

	mu       sync.Mutex
	inc      string
	stored   uint64 // last change seq stored in S3
	snapSeq  uint64
	snapKeys int // keys in the snapshot at snapSeq
	leader   bool
	s3err    error
	buffered int

	// Worker only.
	lines      [][]byte // changes bufFirst.. not yet stored, one JSON line each
	bufFirst   uint64
	bufBytes   int
	bufSince   time.Time
	bufUpdated int64 // updated_at of the newest buffered change
	lease      *s3store.Lease
	compacting bool
	lastProbe  time.Time
	lastLease  time.Time
	leaseEvery time.Duration // until the next lease tick; 0 at first
	lastSnap   time.Time
	lastFail   time.Time // last request that did not reach S3
}

type compactResult struct {
	seq  uint64
	keys int
	err  error
}

type s3Metrics struct {
	leader  *prometheus.GaugeVec
	confirm prometheus.Histogram
}

func newS3Metrics(reg prometheus.Registerer, st *s3store.Store) (*s3Metrics, error) {
	sm := &s3Metrics{
		leader: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "iotkv_master_lease_held",
			Help: "1 when this master holds the edge's lease (compacts and stores at once), else 0."}, []string{"edge"}),
		confirm: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotkv_master_confirm_lag_seconds",
			Help:    "From the edge's commit of the newest change in a segment to its confirmation after the S3 PUT (edge clock).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 12)}),
	}
	for _, c := range []prometheus.Collector{sm.leader, sm.confirm} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return sm, st.Metrics().Register(reg)
}

func newS3Backup(id string, opts *Options, m *metrics, sm *s3Metrics) *s3Backup {
	m.edgeSeen(id)
	return &s3Backup{
		id: id, log: opts.Logger.With("edge", id), opts: opts, m: m, sm: sm, st: opts.Store,
		compactC: make(chan compactResult, 1), lastSnap: time.Now(),
	}
}

func (sb *s3Backup) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

func (sb *s3Backup) ready() error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.s3err != nil {
		return errors.New("edge " + sb.id + ": object storage unreachable: " + sb.s3err.Error())
	}
	return nil
}

// s3result records whether the last request reached S3.
func (sb *s3Backup) s3result(err error) {
	sb.mu.Lock()
	was := sb.s3err
	sb.s3err = err
	sb.mu.Unlock()
	if err != nil {
		sb.lastFail = time.Now()
	}
	switch {
	case err != nil && was == nil:
		sb.log.Error("object storage unreachable: not confirming", "err", err)
	case err == nil && was != nil:
		sb.log.Info("object storage reachable again")
	}
}

func (sb *s3Backup) close() {
	if sb.compacting {
		sb.finishCompact(<-sb.compactC)
	}
	if sb.opts.crash {
		return
	}
	if len(sb.lines) > 0 && sb.lease != nil && sb.lease.Held() {
		sb.commit(true)
	}
	if sb.lease != nil {
		ctx, cancel := sb.ctx()
		sb.lease.Release(ctx)
		cancel()
	}
	sb.wg.Wait()
}

// s3Quiet: while S3 is unreachable, one attempt a second is enough, and
// the worker stays free to follow the stream in between.
func (sb *s3Backup) s3Quiet() bool {
	sb.mu.Lock()
	down := sb.s3err != nil
	sb.mu.Unlock()
	return down && time.Since(sb.lastFail) < time.Second
}

func (sb *s3Backup) tick() {
	select {
	case r := <-sb.compactC:
		sb.finishCompact(r)
	default:
	}
	now := time.Now()
	if sb.s3Quiet() {
		return
	}
	if sb.lease != nil && now.Sub(sb.lastLease) >= sb.leaseEvery {
		sb.lastLease = now
		ctx, cancel := sb.ctx()
		held, err := sb.lease.Tick(ctx)
		cancel()
		// A follower watches (a GET) every TTL/3, and once more the moment
		// the lease it watches may be taken over (TTL + margin need not be
		// a multiple of TTL/3: at the default margin a dead holder's lease
		// was taken TTL/6 late); the holder renews (a billed PUT) every TTL/2, and
		// retries every TTL/10 after a failure until it steps down at TTL.
		switch {
		case err != nil:
			sb.s3result(err)
			sb.leaseEvery = sb.opts.LeaseTTL / 10
		case held:
			sb.leaseEvery = sb.opts.LeaseTTL / 2
		default:
			sb.leaseEvery = sb.opts.LeaseTTL / 3
			if at, ok := sb.lease.TakeoverAt(); ok {
				sb.leaseEvery = min(sb.leaseEvery, max(0, at.Sub(sb.lastLease)))
			}
		}
		sb.mu.Lock()
		changed := held != sb.leader
		sb.leader = held
		sb.mu.Unlock()
		if changed {
			sb.log.Info("lease", "held", held, "incarnation", sb.inc)
			sb.sm.leader.WithLabelValues(sb.id).Set(b2f(held))
		}
	}
	if sb.isLeader() && !sb.compacting && now.Sub(sb.lastSnap) >= sb.opts.SnapshotInterval {
		sb.compact()
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (sb *s3Backup) isLeader() bool { return sb.lease != nil && sb.lease.Held() }

func (sb *s3Backup) storedSeq() uint64 {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.stored
}

func (sb *s3Backup) append(changes []iotkv.Change, raw []json.RawMessage) error {
	for i := range changes {
		var line bytes.Buffer
		if err := json.Compact(&line, raw[i]); err != nil {
			return err
		}
		if len(sb.lines) == 0 {
			sb.bufFirst, sb.bufSince = changes[i].Seq, time.Now()
		}
		sb.lines = append(sb.lines, line.Bytes())
		sb.bufBytes += line.Len() + 1
		sb.bufUpdated = changes[i].UpdatedAt
	}
	sb.mu.Lock()
	sb.buffered = len(sb.lines)
	sb.mu.Unlock()
	return nil
}

// follow follows incarnation inc: it reads what S3 holds of it (the
// manifest, and the chain's end); the follower asks the edge for the rest.
func (sb *s3Backup) follow(inc string, devices func(string, uint64, int64)) (uint64, error) {
	ctx, cancel := sb.ctx()
	defer cancel()
	m, _, err := sb.st.ReadManifest(ctx, sb.id, inc)
	if errors.Is(err, s3store.ErrNotFound) {
		err = sb.st.AdvanceManifest(ctx, sb.id, inc, 0)
	}
	if err != nil {
		sb.s3result(err)
		return 0, err
	}
	snapDevices, err := sb.st.SnapshotDevices(ctx, m)
	if err != nil {
		sb.s3result(err)
		return 0, err
	}
	for _, d := range snapDevices {
		devices(d.Device, d.LastSeq, 0)
	}
	end, err := sb.st.ReadChain(ctx, sb.id, inc, m.SnapSeq, func(c *iotkv.Change) error {
		devices(c.Device, c.DeviceSeq, c.UpdatedAt)
		return nil
	})
	if errors.Is(err, s3store.ErrGap) {
		// Ask the edge for what is missing; the new segment closes the gap.
		sb.log.Warn("stored chain has a gap: refilling from the edge", "err", err)
	} else if err != nil {
		sb.s3result(err)
		return 0, err
	}
	sb.s3result(nil)
	sb.lines, sb.bufBytes, sb.bufFirst = nil, 0, end+1
	sb.mu.Lock()
	sb.inc, sb.stored, sb.snapSeq, sb.snapKeys, sb.buffered = inc, end, m.SnapSeq, m.Keys, 0
	sb.leader = false
	sb.mu.Unlock()
	sb.newLease(ctx, inc)
	return end, nil
}

func (sb *s3Backup) newLease(ctx context.Context, inc string) {
	if sb.lease != nil {
		sb.lease.Release(ctx)
	}
	sb.lease = sb.st.NewLease(sb.id, inc, sb.opts.Name, sb.opts.LeaseTTL, sb.opts.LeaseMargin)
	sb.lastLease = time.Time{}
}

// commit stores the buffer as a segment (the leader; anyone when forced),
// or, on a follower, looks for the leader's segment and fills it in once
// the grace period is over. It returns the last change stored.
func (sb *s3Backup) commit(force bool) uint64 {
	if len(sb.lines) == 0 || (!force && sb.s3Quiet()) {
		return sb.storedSeq()
	}
	ctx, cancel := sb.ctx()
	defer cancel()
	for len(sb.lines) > 0 {
		age := time.Since(sb.bufSince)
		full := sb.bufBytes >= sb.opts.FlushBytes
		write := force || (sb.isLeader() && (full || age >= sb.opts.FlushInterval)) || age >= sb.opts.FollowerGrace
		if !write {
			if !full && age < sb.opts.FlushInterval || time.Since(sb.lastProbe) < sb.opts.FlushInterval/2 {
				break
			}
			sb.lastProbe = time.Now()
			last, _, err := sb.st.SegmentLast(ctx, sb.id, sb.inc, sb.bufFirst)
			if errors.Is(err, s3store.ErrNotFound) {
				sb.s3result(nil)
				break
			}
			if err != nil {
				sb.s3result(err)
				break
			}
			sb.s3result(nil)
			sb.storedUpTo(last)
			continue
		}
		n := len(sb.lines)
		if sb.bufBytes > sb.opts.FlushBytes {
			// One segment holds at most about FlushBytes.
			size := 0
			for n = 0; n < len(sb.lines) && (n == 0 || size+len(sb.lines[n]) < sb.opts.FlushBytes); n++ {
				size += len(sb.lines[n]) + 1
			}
		}
		body := bytes.Join(sb.lines[:n], []byte{'\n'})
		body = append(body, '\n')
		first, last := sb.bufFirst, sb.bufFirst+uint64(n)-1
		updated := sb.bufUpdated
		stored, _, err := sb.st.PutSegment(ctx, sb.id, sb.inc, first, last, body)
		if err != nil {
			sb.s3result(err)
			break
		}
		sb.s3result(nil)
		sb.storedUpTo(stored)
		if len(sb.lines) == 0 && updated > 0 {
			sb.sm.confirm.Observe(max(0, float64(time.Now().UnixMilli()-updated)/1000))
		}
	}
	return sb.storedSeq()
}

// storedUpTo records that S3 holds every change up to last: the buffer
// drops them.
func (sb *s3Backup) storedUpTo(last uint64) {
	if last >= sb.bufFirst {
		drop := min(uint64(len(sb.lines)), last-sb.bufFirst+1)
		for _, l := range sb.lines[:drop] {
			sb.bufBytes -= len(l) + 1
		}
		sb.lines = sb.lines[drop:]
		sb.bufFirst += drop
		if len(sb.lines) == 0 {
			sb.lines, sb.bufBytes = nil, 0
			sb.bufFirst = last + 1
		}
		sb.bufSince = time.Now()
	}
	sb.mu.Lock()
	if last > sb.stored {
		sb.stored = last
	}
	sb.buffered = len(sb.lines)
	sb.mu.Unlock()
}

func (sb *s3Backup) compact() {
	sb.lastSnap = time.Now()
	sb.mu.Lock()
	if sb.stored <= sb.snapSeq {
		sb.mu.Unlock()
		return
	}
	sb.mu.Unlock()
	sb.compacting = true
	inc := sb.inc
	sb.wg.Add(1)
	go func() {
		defer sb.wg.Done()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		seq, keys, err := sb.st.Compact(ctx, sb.id, inc)
		sb.m.snapshotSeconds.Observe(time.Since(start).Seconds())
		if err == nil {
			sb.m.snapshotTime.WithLabelValues(sb.id).SetToCurrentTime()
		}
		sb.compactC <- compactResult{seq: seq, keys: keys, err: err}
	}()
}

func (sb *s3Backup) finishCompact(r compactResult) {
	sb.compacting = false
	if r.err != nil {
		sb.m.snapshotErrors.WithLabelValues(sb.id).Inc()
		sb.log.Error("compaction failed", "err", r.err)
		return
	}
	sb.mu.Lock()
	if r.seq > sb.snapSeq {
		sb.snapSeq, sb.snapKeys = r.seq, r.keys
	}
	sb.mu.Unlock()
	sb.log.Debug("snapshot stored", "seq", r.seq)
}

// s3Snap is a snapshot being received into a temporary file, then stored.
type s3Snap struct {
	sb  *s3Backup
	w   *s3store.SnapshotWriter
	inc string
	seq uint64
}

func (sb *s3Backup) receive(inc string, seq uint64) (snapshotSink, error) {
	w, err := sb.st.NewSnapshotWriter(sb.id, inc, seq)
	if err != nil {
		return nil, err
	}
	return &s3Snap{sb: sb, w: w, inc: inc, seq: seq}, nil
}

func (in *s3Snap) abort() { in.w.Abort() }

func (in *s3Snap) part(p *iotkv.BackupSnapshotPart) error {
	if err := in.w.Devices(p.Devices); err != nil {
		return err
	}
	for i := range p.Entries {
		if err := in.w.Entry(&p.Entries[i]); err != nil {
			return err
		}
	}
	return nil
}

func (in *s3Snap) install() error {
	sb := in.sb
	ctx, cancel := sb.ctx()
	defer cancel()
	if err := in.w.Commit(ctx); err != nil {
		sb.s3result(err)
		return err
	}
	sb.s3result(nil)
	if sb.inc != in.inc {
		sb.newLease(ctx, in.inc)
	}
	sb.lines, sb.bufBytes, sb.bufFirst = nil, 0, in.seq+1
	sb.mu.Lock()
	sb.inc, sb.stored, sb.snapSeq, sb.snapKeys, sb.buffered = in.inc, in.seq, in.seq, in.w.Entries(), 0
	sb.mu.Unlock()
	return nil
}

// stream serves the state from S3, so every master (and a restore with no
// master) gives the same answer.
func (sb *s3Backup) stream(w io.Writer) error {
	sb.mu.Lock()
	inc := sb.inc
	sb.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	lw := &lazyWriter{w: w}
	_, err := sb.st.WriteState(ctx, lw, sb.id, inc)
	if err != nil && !lw.wrote {
		if rw, ok := w.(http.ResponseWriter); ok {
			code, status := iotkv.CodeUnavailable, http.StatusServiceUnavailable
			if errors.Is(err, s3store.ErrNotFound) {
				code, status = iotkv.CodeNotFound, http.StatusNotFound
			}
			rest.WriteError(rw, status, code, err.Error())
			return nil
		}
	}
	return err
}

type lazyWriter struct {
	w     io.Writer
	wrote bool
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	l.wrote = true
	return l.w.Write(p)
}

func (sb *s3Backup) status(s *Status) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	leader := sb.leader
	s.Keys, s.SnapshotSeq, s.Pending, s.Store, s.Leader = sb.snapKeys, sb.snapSeq, sb.buffered, sb.st.String(), &leader
	if sb.s3err != nil {
		s.StoreError = sb.s3err.Error()
	}
}
