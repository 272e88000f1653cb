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

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/rest"
	"github.com/iotkv/iotkv/s3store"
)

// s3Edge follows one edge into object storage (--store s3://...). Its
// worker (run) owns the stream, the buffer of changes not yet stored, the
// lease and the incoming snapshot; a compaction goroutine it starts and
// waits for writes snapshots. mu is a leaf lock for what REST reads.
//
// Changes are buffered and stored as one create-only segment every
// FlushInterval or FlushBytes; only then are they confirmed to the edge.
// The lease holder stores at once; the other masters, which see the same
// stream, only look (HEAD) for the holder's segment after a grace period
// and write it themselves when it is missing: a dead holder costs at most
// the grace period, never a gap, and a live one is not doubled in PUTs.
type s3Edge struct {
	id, addr string
	log      *slog.Logger
	opts     *Options
	m        *metrics
	sm       *s3Metrics
	st       *s3store.Store
	client   paho.Client

	in       chan event
	stop     chan struct{}
	done     chan struct{}
	compactC chan compactResult
	wg       sync.WaitGroup

	mu          sync.Mutex
	inc         string
	stored      uint64 // last change seq stored in S3 (and confirmed)
	snapSeq     uint64
	snapKeys    int // keys in the snapshot at snapSeq
	edgeSeq     uint64
	connected   bool
	leader      bool
	lastContact time.Time
	s3err       error
	buffered    int

	// Worker only.
	lines      [][]byte // changes bufFirst.. not yet stored, one JSON line each
	bufFirst   uint64
	bufBytes   int
	bufSince   time.Time
	bufUpdated int64 // updated_at of the newest buffered change
	lease      *s3store.Lease
	compacting bool
	incoming   *incomingS3
	hello      *iotkv.BackupHello
	lastReq    time.Time
	lastProg   time.Time
	lastProbe  time.Time
	lastLease  time.Time
	leaseEvery time.Duration // until the next lease tick; 0 at first
	lastSnap   time.Time
	lastFail   time.Time // last request that did not reach S3
}

type incomingS3 struct {
	w        *s3store.SnapshotWriter
	id, inc  string
	seq      uint64
	nextPart int
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

func newS3Edge(id, addr string, opts *Options, m *metrics, sm *s3Metrics) *s3Edge {
	m.edgeSeen(id)
	return &s3Edge{
		id: id, addr: addr, log: opts.Logger.With("edge", id), opts: opts, m: m, sm: sm, st: opts.Store,
		in: make(chan event, 256), stop: make(chan struct{}), done: make(chan struct{}), compactC: make(chan compactResult, 1),
		lastSnap: time.Now(),
	}
}

func (se *s3Edge) edgeID() string          { return se.id }
func (se *s3Edge) edgeAddr() string        { return se.addr }
func (se *s3Edge) logger() *slog.Logger    { return se.log }
func (se *s3Edge) setClient(c paho.Client) { se.client = c }
func (se *s3Edge) mqtt() paho.Client       { return se.client }
func (se *s3Edge) halt()                   { close(se.stop); <-se.done }
func (se *s3Edge) deliver(ev event)        { deliverTo(se.in, se.stop, ev) }
func (se *s3Edge) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

func (se *s3Edge) ready() error {
	se.mu.Lock()
	defer se.mu.Unlock()
	if se.s3err != nil {
		return errors.New("edge " + se.id + ": object storage unreachable: " + se.s3err.Error())
	}
	if !se.connected {
		return errors.New("edge " + se.id + " is not connected")
	}
	return nil
}

// s3result records whether the last request reached S3.
func (se *s3Edge) s3result(err error) {
	se.mu.Lock()
	was := se.s3err
	se.s3err = err
	se.mu.Unlock()
	if err != nil {
		se.lastFail = time.Now()
	}
	switch {
	case err != nil && was == nil:
		se.log.Error("object storage unreachable: not confirming", "err", err)
	case err == nil && was != nil:
		se.log.Info("object storage reachable again")
	}
}

func (se *s3Edge) run() {
	defer close(se.done)
	tick := time.NewTicker(max(20*time.Millisecond, se.opts.FlushInterval/5))
	defer tick.Stop()
	for {
		select {
		case <-se.stop:
			se.shutdown()
			return
		case ev := <-se.in:
			se.handle(ev)
		drain:
			for i := 0; i < 256; i++ {
				select {
				case ev := <-se.in:
					se.handle(ev)
				default:
					break drain
				}
			}
		case r := <-se.compactC:
			se.finishCompact(r)
		case <-tick.C:
			se.periodic()
		}
	}
}

func (se *s3Edge) shutdown() {
	if se.compacting {
		se.finishCompact(<-se.compactC)
	}
	if se.opts.crash {
		return
	}
	if se.incoming != nil {
		se.incoming.w.Abort()
		se.incoming = nil
	}
	if len(se.lines) > 0 && se.lease != nil && se.lease.Held() {
		se.flush(true)
	}
	if se.lease != nil {
		ctx, cancel := se.ctx()
		se.lease.Release(ctx)
		cancel()
	}
	se.wg.Wait()
}

// s3Quiet: while S3 is unreachable, one attempt a second is enough, and
// the worker stays free to follow the stream in between.
func (se *s3Edge) s3Quiet() bool {
	se.mu.Lock()
	down := se.s3err != nil
	se.mu.Unlock()
	return down && time.Since(se.lastFail) < time.Second
}

func (se *s3Edge) periodic() {
	now := time.Now()
	if se.s3Quiet() {
		se.maybeRequest()
		return
	}
	if se.lease != nil && now.Sub(se.lastLease) >= se.leaseEvery {
		se.lastLease = now
		ctx, cancel := se.ctx()
		held, err := se.lease.Tick(ctx)
		cancel()
		// A follower watches (a GET) every TTL/3, and once more the moment
		// the lease it watches may be taken over (TTL + margin need not be
		// a multiple of TTL/3: at the default margin a dead holder's lease
		// was taken TTL/6 late); the holder renews (a billed PUT) every TTL/2, and
		// retries every TTL/10 after a failure until it steps down at TTL.
		switch {
		case err != nil:
			se.s3result(err)
			se.leaseEvery = se.opts.LeaseTTL / 10
		case held:
			se.leaseEvery = se.opts.LeaseTTL / 2
		default:
			se.leaseEvery = se.opts.LeaseTTL / 3
			if at, ok := se.lease.TakeoverAt(); ok {
				se.leaseEvery = min(se.leaseEvery, max(0, at.Sub(se.lastLease)))
			}
		}
		se.mu.Lock()
		changed := held != se.leader
		se.leader = held
		se.mu.Unlock()
		if changed {
			se.log.Info("lease", "held", held, "incarnation", se.inc)
			se.sm.leader.WithLabelValues(se.id).Set(b2f(held))
		}
	}
	if len(se.lines) > 0 {
		se.flush(false)
	}
	if se.isLeader() && !se.compacting && se.incoming == nil && now.Sub(se.lastSnap) >= se.opts.SnapshotInterval {
		se.compact()
	}
	se.maybeRequest()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (se *s3Edge) isLeader() bool { return se.lease != nil && se.lease.Held() }

func (se *s3Edge) handle(ev event) {
	if se.opts.dropHook != nil && se.opts.dropHook(se.id, ev.kind, ev.payload) {
		return
	}
	switch ev.kind {
	case iotkv.BackupKindChanges:
		se.changes(ev.payload)
	case iotkv.BackupKindSnapshot:
		se.snapshotPart(ev.payload)
	case iotkv.BackupKindHello:
		se.onHello(ev.payload)
	case "connected":
		se.setConnected(true)
		if se.inc != "" {
			se.request("connected")
		}
	case "lost":
		se.setConnected(false)
	}
}

func (se *s3Edge) setConnected(v bool) {
	se.mu.Lock()
	se.connected = v
	se.mu.Unlock()
}

// end is the last change seq we hold, stored or buffered.
func (se *s3Edge) end() uint64 {
	if len(se.lines) > 0 {
		return se.bufFirst + uint64(len(se.lines)) - 1
	}
	return se.storedSeq()
}

func (se *s3Edge) storedSeq() uint64 {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.stored
}

func (se *s3Edge) changes(payload []byte) {
	msg, changes, err := iotkv.DecodeBackupChanges(payload)
	if err != nil || msg.Edge != se.id {
		se.m.badMessages.WithLabelValues(se.id).Inc()
		se.log.Warn("bad backup changes message", "err", err)
		return
	}
	se.mu.Lock()
	se.lastContact = time.Now()
	se.mu.Unlock()
	if msg.Inc != se.inc {
		if se.incoming != nil || !se.switchInc(msg.Inc) {
			return
		}
	}
	end := se.end()
	if msg.To <= end {
		return // a resend; our confirm follows the next store
	}
	if msg.From > end+1 {
		if time.Since(se.lastReq) > time.Second {
			se.m.gaps.WithLabelValues(se.id).Inc()
			se.log.Warn("backup gap: asking the edge to replay", "have", end, "got_from", msg.From)
			se.request("gap")
		}
		return
	}
	for i := range changes {
		if changes[i].Seq <= end {
			continue
		}
		var line bytes.Buffer
		if err := json.Compact(&line, msg.Changes[i]); err != nil {
			return
		}
		if len(se.lines) == 0 {
			se.bufFirst, se.bufSince = changes[i].Seq, time.Now()
		}
		se.lines = append(se.lines, line.Bytes())
		se.bufBytes += line.Len() + 1
		se.bufUpdated = changes[i].UpdatedAt
	}
	se.lastProg = time.Now()
	end = se.end()
	se.mu.Lock()
	se.buffered = len(se.lines)
	// The edge has at least what it sent; its next hello may be a second
	// away, and lag must not read 0 while changes wait for their PUT.
	se.edgeSeq = max(se.edgeSeq, end)
	se.mu.Unlock()
	if last := changes[len(changes)-1]; last.UpdatedAt > 0 {
		se.m.lag.Observe(max(0, float64(time.Now().UnixMilli()-last.UpdatedAt)/1000))
	}
	if se.bufBytes >= se.opts.FlushBytes && !se.s3Quiet() {
		se.flush(false)
	}
}

// switchInc follows incarnation inc: it reads what S3 holds of it (the
// manifest, and the chain's end) and asks the edge for the rest. It
// reports whether it could.
func (se *s3Edge) switchInc(inc string) bool {
	ctx, cancel := se.ctx()
	defer cancel()
	m, _, err := se.st.ReadManifest(ctx, se.id, inc)
	if errors.Is(err, s3store.ErrNotFound) {
		err = se.st.AdvanceManifest(ctx, se.id, inc, 0)
	}
	if err != nil {
		se.s3result(err)
		return false
	}
	end, err := se.st.ReadChain(ctx, se.id, inc, m.SnapSeq, func(*iotkv.Change) error { return nil })
	if errors.Is(err, s3store.ErrGap) {
		// Ask the edge for what is missing; the new segment closes the gap.
		se.log.Warn("stored chain has a gap: refilling from the edge", "err", err)
	} else if err != nil {
		se.s3result(err)
		return false
	}
	se.s3result(nil)
	se.lines, se.bufBytes = nil, 0
	se.mu.Lock()
	se.inc, se.stored, se.snapSeq, se.snapKeys, se.buffered = inc, end, m.SnapSeq, m.Keys, 0
	se.leader = false
	se.mu.Unlock()
	if se.lease != nil {
		se.lease.Release(ctx)
	}
	se.lease = se.st.NewLease(se.id, inc, se.opts.Name, se.opts.LeaseTTL, se.opts.LeaseMargin)
	se.lastLease = time.Time{}
	se.m.applied.WithLabelValues(se.id).Set(float64(end))
	se.log.Info("following incarnation", "incarnation", inc, "stored", end, "snapshot_seq", m.SnapSeq)
	se.request("incarnation")
	return true
}

// flush stores the buffer as a segment (the leader; anyone when forced),
// or, on a follower, looks for the leader's segment and fills it in once
// the grace period is over.
func (se *s3Edge) flush(force bool) {
	ctx, cancel := se.ctx()
	defer cancel()
	for len(se.lines) > 0 {
		age := time.Since(se.bufSince)
		full := se.bufBytes >= se.opts.FlushBytes
		write := force || (se.isLeader() && (full || age >= se.opts.FlushInterval)) || age >= se.opts.FollowerGrace
		if !write {
			if !full && age < se.opts.FlushInterval || time.Since(se.lastProbe) < se.opts.FlushInterval/2 {
				return
			}
			se.lastProbe = time.Now()
			last, _, err := se.st.SegmentLast(ctx, se.id, se.inc, se.bufFirst)
			if errors.Is(err, s3store.ErrNotFound) {
				se.s3result(nil)
				return
			}
			if err != nil {
				se.s3result(err)
				return
			}
			se.s3result(nil)
			se.stored_(last)
			continue
		}
		n := len(se.lines)
		if se.bufBytes > se.opts.FlushBytes {
			// One segment holds at most about FlushBytes.
			size := 0
			for n = 0; n < len(se.lines) && (n == 0 || size+len(se.lines[n]) < se.opts.FlushBytes); n++ {
				size += len(se.lines[n]) + 1
			}
		}
		body := bytes.Join(se.lines[:n], []byte{'\n'})
		body = append(body, '\n')
		first, last := se.bufFirst, se.bufFirst+uint64(n)-1
		updated := se.bufUpdated
		stored, _, err := se.st.PutSegment(ctx, se.id, se.inc, first, last, body)
		if err != nil {
			se.s3result(err)
			return
		}
		se.s3result(nil)
		se.stored_(stored)
		if len(se.lines) == 0 && updated > 0 {
			se.sm.confirm.Observe(max(0, float64(time.Now().UnixMilli()-updated)/1000))
		}
	}
}

// stored_ records that S3 holds every change up to last: the buffer drops
// them and the edge gets a confirm.
func (se *s3Edge) stored_(last uint64) {
	if last >= se.bufFirst {
		drop := min(uint64(len(se.lines)), last-se.bufFirst+1)
		for _, l := range se.lines[:drop] {
			se.bufBytes -= len(l) + 1
		}
		se.lines = se.lines[drop:]
		se.bufFirst += drop
		if len(se.lines) == 0 {
			se.lines, se.bufBytes = nil, 0
			se.bufFirst = last + 1
		}
		se.bufSince = time.Now()
	}
	se.mu.Lock()
	if last > se.stored {
		se.stored = last
	}
	stored := se.stored
	se.buffered = len(se.lines)
	se.mu.Unlock()
	se.m.applied.WithLabelValues(se.id).Set(float64(stored))
	se.publish(iotkv.BackupKindConfirm, iotkv.BackupConfirm{Inc: se.inc, Seq: stored})
}

func (se *s3Edge) compact() {
	se.lastSnap = time.Now()
	se.mu.Lock()
	if se.stored <= se.snapSeq {
		se.mu.Unlock()
		return
	}
	se.mu.Unlock()
	se.compacting = true
	inc := se.inc
	se.wg.Add(1)
	go func() {
		defer se.wg.Done()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		seq, keys, err := se.st.Compact(ctx, se.id, inc)
		se.m.snapshotSeconds.Observe(time.Since(start).Seconds())
		if err == nil {
			se.m.snapshotTime.WithLabelValues(se.id).SetToCurrentTime()
		}
		se.compactC <- compactResult{seq: seq, keys: keys, err: err}
	}()
}

func (se *s3Edge) finishCompact(r compactResult) {
	se.compacting = false
	if r.err != nil {
		se.m.snapshotErrors.WithLabelValues(se.id).Inc()
		se.log.Error("compaction failed", "err", r.err)
		return
	}
	se.mu.Lock()
	if r.seq > se.snapSeq {
		se.snapSeq, se.snapKeys = r.seq, r.keys
	}
	se.mu.Unlock()
	se.log.Debug("snapshot stored", "seq", r.seq)
}

func (se *s3Edge) publish(kind string, v any) {
	payload, _ := json.Marshal(v)
	if se.client == nil || !se.client.IsConnectionOpen() {
		return
	}
	se.client.Publish(iotkv.BackupTopic(se.id, kind), 1, false, payload)
}

func (se *s3Edge) request(reason string) {
	se.lastReq = time.Now()
	se.m.requests.WithLabelValues(se.id, reason).Inc()
	// A request also confirms After: only what S3 holds. The edge resends
	// what we buffer; the duplicates are dropped.
	se.publish(iotkv.BackupKindRequest, iotkv.BackupRequest{Inc: se.inc, After: se.storedSeq()})
}

func (se *s3Edge) onHello(payload []byte) {
	h, err := iotkv.DecodeBackupHello(payload)
	if err != nil || h.Edge != se.id {
		se.m.badMessages.WithLabelValues(se.id).Inc()
		return
	}
	se.mu.Lock()
	se.edgeSeq, se.lastContact = h.Seq, time.Now()
	se.mu.Unlock()
	se.hello = &h
	if h.Inc == se.inc && h.Seq >= se.end() {
		se.m.lagChanges.WithLabelValues(se.id).Set(float64(h.Seq - se.end()))
	}
	if se.inc == "" && se.incoming == nil {
		se.switchInc(h.Inc)
		return
	}
	se.maybeRequest()
}

// maybeRequest asks again when the stream is stuck (as the file master).
func (se *s3Edge) maybeRequest() {
	se.mu.Lock()
	connected, unreachable := se.connected, se.s3err != nil
	se.mu.Unlock()
	if !connected || time.Since(se.lastReq) < 2*time.Second {
		return
	}
	h := se.hello
	quiet := time.Since(se.lastProg) > 3*time.Second
	reason := ""
	switch {
	case h == nil:
	case se.inc == "":
		if !unreachable {
			se.switchInc(h.Inc)
		}
		return
	case se.incoming != nil:
		if quiet {
			reason = "snapshot_stalled"
		}
	case h.Inc != se.inc:
		reason = "incarnation"
	case !h.Streaming:
		reason = "no_session"
	case h.Seq > se.end() && quiet:
		reason = "stalled"
	}
	if reason != "" {
		se.request(reason)
	}
}

func (se *s3Edge) snapshotPart(payload []byte) {
	p, err := iotkv.DecodeBackupSnapshotPart(payload)
	if err != nil || p.Edge != se.id {
		se.m.badMessages.WithLabelValues(se.id).Inc()
		return
	}
	in := se.incoming
	if p.Part == 0 {
		if in != nil {
			in.w.Abort()
		}
		w, err := se.st.NewSnapshotWriter(se.id, p.Inc, p.Seq)
		if err != nil {
			se.log.Error("cannot receive snapshot", "err", err)
			return
		}
		in = &incomingS3{w: w, id: p.Snap, inc: p.Inc, seq: p.Seq}
		se.incoming = in
		se.m.resyncs.WithLabelValues(se.id).Inc()
		se.log.Warn("backup resync from a snapshot", "incarnation", p.Inc, "seq", p.Seq, "had_incarnation", se.inc, "had", se.end())
	}
	if in == nil || p.Snap != in.id || p.Part != in.nextPart {
		if in != nil && p.Snap == in.id && time.Since(se.lastReq) > time.Second {
			in.w.Abort()
			se.incoming = nil
			se.request("snapshot_gap")
		}
		return
	}
	err = in.w.Devices(p.Devices)
	for i := 0; err == nil && i < len(p.Entries); i++ {
		err = in.w.Entry(&p.Entries[i])
	}
	if err != nil || p.Inc != in.inc || p.Seq != in.seq {
		se.log.Error("snapshot part refused: starting over", "err", err)
		in.w.Abort()
		se.incoming = nil
		se.request("snapshot_bad")
		return
	}
	in.nextPart++
	se.lastProg = time.Now()
	se.publish(iotkv.BackupKindConfirm, iotkv.BackupConfirm{Inc: p.Inc, Snap: p.Snap, Part: p.Part})
	if !p.Last {
		return
	}
	se.incoming = nil
	ctx, cancel := se.ctx()
	defer cancel()
	if err := in.w.Commit(ctx); err != nil {
		se.s3result(err)
		return // the next hello asks again
	}
	se.s3result(nil)
	if se.inc != in.inc {
		if se.lease != nil {
			se.lease.Release(ctx)
		}
		se.lease = se.st.NewLease(se.id, in.inc, se.opts.Name, se.opts.LeaseTTL, se.opts.LeaseMargin)
		se.lastLease = time.Time{}
	}
	se.lines, se.bufBytes, se.bufFirst = nil, 0, in.seq+1
	se.mu.Lock()
	se.inc, se.stored, se.snapSeq, se.snapKeys, se.buffered = in.inc, in.seq, in.seq, in.w.Entries(), 0
	se.mu.Unlock()
	se.m.applied.WithLabelValues(se.id).Set(float64(in.seq))
	se.log.Info("backup snapshot stored", "incarnation", in.inc, "seq", in.seq)
	se.publish(iotkv.BackupKindConfirm, iotkv.BackupConfirm{Inc: in.inc, Seq: in.seq})
}

// stream serves the state from S3, so every master (and a restore with no
// master) gives the same answer.
func (se *s3Edge) stream(w io.Writer) error {
	se.mu.Lock()
	inc := se.inc
	se.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	lw := &lazyWriter{w: w}
	_, err := se.st.WriteState(ctx, lw, se.id, inc)
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

func (se *s3Edge) status() Status {
	se.mu.Lock()
	defer se.mu.Unlock()
	leader := se.leader
	s := Status{Edge: se.id, Addr: se.addr, Connected: se.connected, Incarnation: se.inc, Seq: se.stored,
		EdgeSeq: se.edgeSeq, Keys: se.snapKeys, SnapshotSeq: se.snapSeq, Pending: se.buffered, Store: se.st.String(), Leader: &leader}
	if se.s3err != nil {
		s.StoreError = se.s3err.Error()
	}
	if se.edgeSeq > se.stored {
		s.Lag = se.edgeSeq - se.stored
	}
	if !se.lastContact.IsZero() {
		t := se.lastContact.UTC()
		s.LastContact = &t
	}
	return s
}
