package edge

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
)

// BackupOptions bound the change log and shape the backup stream.
type BackupOptions struct {
	// Retention: the change log keeps what the master has not confirmed
	// up to these limits; beyond them the oldest changes go anyway (counted
	// and logged) and the master resyncs from a snapshot. Zero: default.
	RetainChanges int64         // default 1,000,000
	RetainBytes   int64         // default 256 MiB
	RetainAge     time.Duration // default 24h

	MaxMessageBytes   int // per published message; default 256 KiB
	MaxMessageChanges int // per changes message; default 2000
	// The window of unconfirmed messages in flight: at most Window
	// messages and WindowBytes bytes. A master on S3 confirms once per
	// flush (about a second), so the window must hold a second of
	// changes at full ingest, however small each message is. Window
	// stays well below the broker's per-client pending writes (1024):
	// the stream is QoS 0 and mochi drops what does not fit.
	Window        int           // default 256
	WindowBytes   int64         // default 8 MiB
	HelloInterval time.Duration // default 1s
	// SessionTimeout ends a session whose master stopped confirming.
	SessionTimeout time.Duration // default 30s
	// MaxLag, when set, slows writers so that the master following the
	// change stream stays within it (lag.go): the committer holds the next
	// group while the oldest unconfirmed change is older. Zero: writers are
	// never slowed; the change log absorbs what the master has not taken.
	MaxLag time.Duration
}

func (o *BackupOptions) setDefaults() {
	if o.RetainChanges <= 0 {
		o.RetainChanges = 1_000_000
	}
	if o.RetainBytes <= 0 {
		o.RetainBytes = 256 << 20
	}
	if o.RetainAge <= 0 {
		o.RetainAge = 24 * time.Hour
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 256 << 10
	}
	if o.MaxMessageChanges <= 0 {
		o.MaxMessageChanges = 2000
	}
	if o.Window <= 0 {
		o.Window = 256
	}
	if o.WindowBytes <= 0 {
		o.WindowBytes = 8 << 20
	}
	if o.HelloInterval <= 0 {
		o.HelloInterval = time.Second
	}
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = 30 * time.Second
	}
}

// backup is the edge's producer of the backup stream. One goroutine (loop)
// owns all of its state except the atomics the committer updates; it reads
// the change log from Pebble, never from the committer, so the committer
// only stores two numbers and never waits on the network.
type backup struct {
	id      string
	inc     string
	store   *Store
	log     *slog.Logger
	opts    BackupOptions
	publish func(topic string, payload []byte) error
	now     func() time.Time
	m       *backupMetrics

	last     atomic.Uint64 // last committed change seq
	logBytes atomic.Int64  // bytes of the change log
	// History: how long the log is kept for it, the bytes of its index,
	// and the oldest change still in the log (loop writes it, readers of
	// history and watch read it).
	hist       HistoryOptions
	indexBytes atomic.Int64
	oldest     atomic.Uint64
	wake       chan struct{} // cap 1: something was committed
	in         chan inbound  // requests and confirms from the master
	stop       chan struct{}
	done       chan struct{}

	// Owned by loop.
	first     uint64 // oldest change in the log; last+1 when empty
	confirmed uint64
	sess      *session
	head      *logEntry // the change at first, when known: trims skip reading it again

	gate *lagGate // nil: no MaxLag
}

type inbound struct {
	req     *iotkv.BackupRequest
	confirm *iotkv.BackupConfirm
}

// session is one master's stream: where it is and what is unconfirmed.
type session struct {
	next        uint64 // next change seq to send
	outstanding []sentMsg
	outBytes    int64 // payload bytes of outstanding
	snap        *snapSender
	lastAck     time.Time
}

type sentMsg struct {
	to    uint64 // changes message: last seq in it
	snap  string // snapshot part: transfer id
	part  int
	bytes int64
}

func newBackup(id string, store *Store, log *slog.Logger, opts BackupOptions, hist HistoryOptions, reg prometheus.Registerer,
	publish func(string, []byte) error) (*backup, error) {
	opts.setDefaults()
	hist.setDefaults()
	b := &backup{
		id: id, inc: store.Incarnation, store: store, log: log.With("component", "backup"), opts: opts, hist: hist,
		publish: publish, now: time.Now,
		wake: make(chan struct{}, 1), in: make(chan inbound, 256),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	var err error
	if b.m, err = newBackupMetrics(reg); err != nil {
		return nil, err
	}
	if opts.MaxLag > 0 {
		if b.gate, err = newLagGate(opts.MaxLag, reg); err != nil {
			return nil, err
		}
	}
	last, err := store.lastChangeSeq()
	if err != nil {
		return nil, err
	}
	b.last.Store(last)
	b.first = last + 1
	var n int64
	err = store.scan(prefixChange, func(k, v []byte) error {
		if n == 0 {
			b.first = decodeChangeKey(k)
		}
		n++
		b.logBytes.Add(int64(len(v)))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup: read change log: %w", err)
	}
	ib, err := store.historyIndexBytes()
	if err != nil {
		return nil, err
	}
	b.indexBytes.Store(ib)
	b.oldest.Store(b.first)
	b.m.logChanges.Set(float64(n))
	return b, nil
}

func decodeChangeKey(k []byte) uint64 {
	var s uint64
	for _, c := range k[len(prefixChange):] {
		s = s<<8 | uint64(c)
	}
	return s
}

func (b *backup) start() { go b.loop() }

// close stops the loop; safe to call twice.
func (b *backup) close() {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	<-b.done
}

// committed is called by the committer after each durable group: it must
// not block.
func (b *backup) committed(c committed) {
	if len(c.changes) == 0 {
		return
	}
	b.last.Store(c.changes[len(c.changes)-1].Seq)
	if b.gate != nil {
		b.gate.committed(c.changes[len(c.changes)-1].Seq)
	}
	b.logBytes.Add(c.logBytes)
	b.indexBytes.Add(c.indexBytes)
	b.m.logChanges.Add(float64(len(c.changes)))
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// receive is the broker's in-process subscription callback for request and
// confirm; it runs in the publisher's goroutine and must not block.
func (b *backup) receive(topic string, payload []byte) {
	_, kind, ok := iotkv.ParseBackupTopic(topic)
	if !ok {
		return
	}
	var in inbound
	switch kind {
	case iotkv.BackupKindRequest:
		in.req = &iotkv.BackupRequest{}
		if err := iotkv.DecodeStrict(payload, in.req); err != nil {
			b.log.Warn("bad backup request", "err", err)
			return
		}
	case iotkv.BackupKindConfirm:
		in.confirm = &iotkv.BackupConfirm{}
		if err := iotkv.DecodeStrict(payload, in.confirm); err != nil {
			b.log.Warn("bad backup confirm", "err", err)
			return
		}
	default:
		return
	}
	select {
	case b.in <- in:
	default:
		b.m.dropped.Inc() // the master asks again
	}
}

func (b *backup) loop() {
	defer close(b.done)
	defer b.endSession()
	tick := time.NewTicker(b.opts.HelloInterval)
	defer tick.Stop()
	b.hello()
	for {
		select {
		case <-b.stop:
			return
		case <-b.wake:
			b.trim(trimPerPass)
		case in := <-b.in:
			b.handle(in)
		drain:
			for {
				select {
				case in := <-b.in:
					b.handle(in)
				default:
					break drain
				}
			}
		case <-tick.C:
			b.hello()
			for range trimPerTick / trimPerPass {
				if b.trim(trimPerPass) < trimPerPass {
					break
				}
			}
			if s := b.sess; s != nil && len(s.outstanding) > 0 && b.now().Sub(s.lastAck) > b.opts.SessionTimeout {
				b.log.Warn("backup session ended: the master stopped confirming", "next", s.next)
				b.endSession()
			}
		}
		if err := b.pump(); err != nil {
			b.log.Error("backup stream stopped", "err", err)
			b.endSession()
		}
		if b.gate != nil {
			b.gate.confirmed(b.confirmed)
			b.gate.follows.Store(b.sess != nil && b.sess.snap == nil)
		}
	}
}

func (b *backup) handle(in inbound) {
	switch {
	case in.req != nil:
		b.startSession(*in.req)
	case in.confirm != nil:
		c := in.confirm
		s := b.sess
		if c.Inc != b.inc || s == nil {
			return
		}
		if c.Snap == "" && c.Seq > b.confirmed && c.Seq <= b.last.Load() {
			b.confirmed = c.Seq
			b.m.confirmed.Set(float64(c.Seq))
		}
		i := 0
		for ; i < len(s.outstanding); i++ {
			o := s.outstanding[i]
			covered := (o.snap == "" && c.Snap == "" && o.to <= c.Seq) || (o.snap != "" && o.snap == c.Snap && o.part <= c.Part)
			if !covered {
				break
			}
			s.outBytes -= o.bytes
		}
		if i > 0 {
			s.outstanding = s.outstanding[i:]
			s.lastAck = b.now()
		}
	}
}

// startSession (re)starts the stream after req.After, from the change log
// when it still holds After+1 on this incarnation, else from a snapshot.
func (b *backup) startSession(req iotkv.BackupRequest) {
	b.endSession()
	last := b.last.Load()
	sameInc := req.Inc == b.inc || (req.Inc == "" && req.After == 0)
	if req.Inc == b.inc && req.After > b.confirmed && req.After <= last {
		b.confirmed = req.After
		b.m.confirmed.Set(float64(req.After))
	}
	s := &session{next: req.After + 1, lastAck: b.now()}
	b.sess = s
	if sameInc && req.After <= last && req.After+1 >= b.first {
		b.log.Info("backup session: streaming changes", "after", req.After, "last", last)
		return
	}
	b.log.Info("backup session: sending a snapshot", "master_inc", req.Inc, "master_seq", req.After,
		"inc", b.inc, "first", b.first, "last", last)
	if err := b.startSnapshot(s); err != nil {
		b.log.Error("backup snapshot failed", "err", err)
		b.endSession()
	}
}

func (b *backup) startSnapshot(s *session) error {
	var id [6]byte
	_, _ = rand.Read(id[:])
	snap, err := newSnapSender(b.store, hex.EncodeToString(id[:]), b.opts.MaxMessageBytes)
	if err != nil {
		return err
	}
	// Pebble shows a group before its fsync ends (the committer applies
	// with ApplyNoSyncWait), so a snapshot can hold changes that are not
	// durable yet. Sent as backup state, a power loss could then give the
	// edge back a shorter history under the same incarnation than the
	// master holds. The fsync is milliseconds away: wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for snap.seq > b.last.Load() {
		if time.Now().After(deadline) {
			snap.close()
			return fmt.Errorf("snapshot at change %d: not durable after 5s (last durable %d)", snap.seq, b.last.Load())
		}
		time.Sleep(time.Millisecond)
	}
	s.snap = snap
	b.m.snapshots.Inc()
	return nil
}

func (b *backup) endSession() {
	if b.sess != nil && b.sess.snap != nil {
		b.sess.snap.close()
	}
	b.sess = nil
	if b.gate != nil {
		b.gate.follows.Store(false)
	}
}

// pump publishes while the window has room.
func (b *backup) pump() error {
	s := b.sess
	for s != nil && len(s.outstanding) < b.opts.Window && s.outBytes < b.opts.WindowBytes {
		if s.snap != nil {
			part, err := s.snap.next()
			if err != nil {
				return err
			}
			part.Edge, part.Inc = b.id, b.inc
			payload, err := json.Marshal(part)
			if err != nil {
				return fmt.Errorf("encode snapshot part: %w", err)
			}
			if err := b.publish(iotkv.BackupTopic(b.id, iotkv.BackupKindSnapshot), payload); err != nil {
				return err
			}
			s.outstanding = append(s.outstanding, sentMsg{snap: part.Snap, part: part.Part, bytes: int64(len(payload))})
			s.outBytes += int64(len(payload))
			if part.Last {
				b.log.Info("backup snapshot sent", "seq", part.Seq, "parts", part.Part+1, "entries", s.snap.entries)
				s.next = part.Seq + 1
				s.snap.close()
				s.snap = nil
			}
			continue
		}
		last := b.last.Load()
		if s.next > last {
			return nil
		}
		if s.next < b.first {
			b.log.Warn("backup: the change log was trimmed under the session; resending a snapshot", "next", s.next, "first", b.first)
			if err := b.startSnapshot(s); err != nil {
				return err
			}
			continue
		}
		payload, to, err := b.readChanges(s.next, last)
		if err != nil {
			return err
		}
		if err := b.publish(iotkv.BackupTopic(b.id, iotkv.BackupKindChanges), payload); err != nil {
			return err
		}
		b.m.published.Add(float64(to - s.next + 1))
		s.outstanding = append(s.outstanding, sentMsg{to: to, bytes: int64(len(payload))})
		s.outBytes += int64(len(payload))
		s.next = to + 1
	}
	return nil
}

// readChanges builds a changes message from the stored JSON of changes
// from..(at most last), without decoding them.
func (b *backup) readChanges(from, last uint64) ([]byte, uint64, error) {
	it, err := b.store.db.NewIter(&pebble.IterOptions{LowerBound: changeKey(from), UpperBound: changeKey(last + 1)})
	if err != nil {
		return nil, 0, fmt.Errorf("read change log: %w", err)
	}
	defer it.Close()
	head := fmt.Sprintf(`{"edge":%q,"inc":%q,"from":%d,"to":`, b.id, b.inc, from)
	var body, lastRaw []byte
	to, n := from-1, 0
	for ok := it.First(); ok; ok = it.Next() {
		seq := decodeChangeKey(it.Key())
		if seq != to+1 {
			return nil, 0, fmt.Errorf("change log has a hole at %d", to+1)
		}
		if n > 0 && (n >= b.opts.MaxMessageChanges || len(body)+len(it.Value()) > b.opts.MaxMessageBytes) {
			// Never split a device batch across messages: the master
			// counts a batch's seq as applied with its first change,
			// so half a batch on the master would restore as all of it.
			if !sameBatch(lastRaw, it.Value()) {
				break
			}
		}
		lastRaw = append(lastRaw[:0], it.Value()...)
		if n > 0 {
			body = append(body, ',')
		}
		body = append(body, it.Value()...)
		to = seq
		n++
	}
	if err := it.Error(); err != nil {
		return nil, 0, fmt.Errorf("read change log: %w", err)
	}
	if n == 0 {
		return nil, 0, fmt.Errorf("change %d is not in the log", from)
	}
	msg := make([]byte, 0, len(head)+len(body)+40)
	msg = append(msg, head...)
	msg = strconv.AppendUint(msg, to, 10)
	msg = append(msg, `,"changes":[`...)
	msg = append(msg, body...)
	msg = append(msg, "]}"...)
	return msg, to, nil
}

// sameBatch reports whether two stored changes come from the same device
// batch (same device, same non-zero device seq).
func sameBatch(a, b []byte) bool {
	var x, y struct {
		Device string `json:"device"`
		Seq    uint64 `json:"seq"`
	}
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return x.Seq != 0 && x.Seq == y.Seq && x.Device == y.Device
}

func (b *backup) hello() {
	last := b.last.Load()
	first := b.first
	payload, _ := json.Marshal(iotkv.BackupHello{Edge: b.id, Inc: b.inc, Seq: last, First: first, Streaming: b.sess != nil})
	if err := b.publish(iotkv.BackupTopic(b.id, iotkv.BackupKindHello), payload); err != nil {
		b.log.Debug("backup hello not published", "err", err)
	}
}

// Trimming is bounded work: one pass drops at most trimPerPass changes
// (twice the largest group commit, so passes run after each group keep up
// with ingest), and the hello tick runs passes up to trimPerTick.
const (
	trimPerPass = 2 * maxGroupOps
	trimPerTick = 200_000
)

// trim drops the oldest changes that neither the master nor history needs
// any more (retention), with their history index entries, in one batch,
// and returns how many it dropped (at most max). It never runs ahead of
// what the committer wrote.
func (b *backup) trim(max int64) int64 {
	last := b.last.Load()
	if b.first > last {
		return 0
	}
	r := retention{backup: b.opts, history: b.hist, now: b.now(), confirmed: b.confirmed,
		count: int64(last - b.first + 1), logBytes: b.logBytes.Load(), hBytes: b.indexBytes.Load()}
	if b.head != nil {
		if ok, _ := r.drop(b.first, *b.head); !ok {
			return 0 // the oldest change stays: nothing to read
		}
	}
	it, err := b.store.db.NewIter(&pebble.IterOptions{LowerBound: changeKey(b.first), UpperBound: changeKey(last + 1)})
	if err != nil {
		b.log.Error("backup trim", "err", err)
		return 0
	}
	batch := b.store.db.NewBatch()
	defer batch.Close()
	newFirst, dropped := b.first, int64(0)
	var forced uint64
	var droppedBytes, droppedIndex int64
	var head *logEntry
	for ok := it.First(); ok; ok = it.Next() {
		seq := decodeChangeKey(it.Key())
		var e logEntry
		if err := json.Unmarshal(it.Value(), &e); err != nil {
			b.log.Error("backup trim: undecodable change; dropping it", "seq", seq, "err", err)
		} else if ok, f := r.drop(seq, e); !ok || dropped == max {
			head = &e
			break
		} else if f {
			forced++
		}
		if e.Device != "" && (b.store.indexHistory || r.hBytes > 0) {
			_ = batch.Delete(historyKey(e.Device, e.Key, seq), nil)
			n := indexBytes(e.Device, e.Key)
			r.hBytes -= n
			droppedIndex += n
		}
		r.logBytes -= int64(len(it.Value()))
		droppedBytes += int64(len(it.Value()))
		r.count--
		dropped++
		newFirst = seq + 1
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		b.log.Error("backup trim", "err", err)
		return 0
	}
	b.head = head
	if dropped == 0 {
		return 0
	}
	_ = batch.DeleteRange(changeKey(b.first), changeKey(newFirst), nil)
	// Not synced: a trim lost in a crash is done again, and the batch
	// drops changes and their index entries together.
	if err := batch.Commit(pebble.NoSync); err != nil {
		b.log.Error("backup trim", "err", err)
		b.head = nil
		return 0
	}
	if forced > 0 {
		b.m.forcedTrims.Inc()
		b.m.forcedChanges.Add(float64(forced))
		b.log.Warn("backup change log trimmed past what the master confirmed: the master will resync from a snapshot",
			"from", b.first, "to", newFirst-1, "unconfirmed", forced, "confirmed", b.confirmed,
			"retain_changes", b.opts.RetainChanges, "retain_bytes", b.opts.RetainBytes, "retain_age", b.opts.RetainAge)
	}
	// committed adds concurrently: subtract, never Store.
	b.logBytes.Add(-droppedBytes)
	b.indexBytes.Add(-droppedIndex)
	b.first = newFirst
	b.oldest.Store(newFirst)
	b.m.logChanges.Sub(float64(dropped))
	b.m.trimmed.Add(float64(dropped))
	return dropped
}

// snapSender reads a consistent full state from a Pebble snapshot, in
// parts: devices first, then entries in key order.
type snapSender struct {
	id       string
	snap     *pebble.Snapshot
	it       *pebble.Iterator
	seq      uint64
	devices  []iotkv.DeviceSeq
	part     int
	maxBytes int
	entries  int
}

func newSnapSender(store *Store, id string, maxBytes int) (*snapSender, error) {
	snap := store.db.NewSnapshot()
	s := &snapSender{id: id, snap: snap, maxBytes: maxBytes}
	v, closer, err := snap.Get(keyChangeSeq)
	switch {
	case err == nil:
		if len(v) == 8 {
			s.seq = binary.BigEndian.Uint64(v)
		}
		closer.Close()
	case !errors.Is(err, pebble.ErrNotFound):
		snap.Close()
		return nil, fmt.Errorf("snapshot: read change seq: %w", err)
	}
	dit, err := snap.NewIter(&pebble.IterOptions{LowerBound: prefixDevice, UpperBound: prefixEnd(prefixDevice)})
	if err != nil {
		snap.Close()
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	for ok := dit.First(); ok; ok = dit.Next() {
		var m deviceMeta
		if err := json.Unmarshal(dit.Value(), &m); err == nil && m.LastSeq > 0 {
			s.devices = append(s.devices, iotkv.DeviceSeq{Device: string(dit.Key()[len(prefixDevice):]), LastSeq: m.LastSeq})
		}
	}
	if err := errors.Join(dit.Error(), dit.Close()); err != nil {
		snap.Close()
		return nil, fmt.Errorf("snapshot: devices: %w", err)
	}
	s.it, err = snap.NewIter(&pebble.IterOptions{LowerBound: prefixRecord, UpperBound: prefixEnd(prefixRecord)})
	if err != nil {
		snap.Close()
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	s.it.First()
	return s, nil
}

func (s *snapSender) next() (iotkv.BackupSnapshotPart, error) {
	p := iotkv.BackupSnapshotPart{Snap: s.id, Seq: s.seq, Part: s.part}
	s.part++
	size := 0
	for len(s.devices) > 0 && size < s.maxBytes {
		p.Devices = append(p.Devices, s.devices[0])
		size += len(s.devices[0].Device) + 40
		s.devices = s.devices[1:]
	}
	for ; size < s.maxBytes && s.it.Valid(); s.it.Next() {
		k := s.it.Key()[len(prefixRecord):]
		var dev, key string
		for i, c := range k {
			if c == 0 {
				dev, key = string(k[:i]), string(k[i+1:])
				break
			}
		}
		var sr storedRecord
		if err := json.Unmarshal(s.it.Value(), &sr); err != nil {
			return p, fmt.Errorf("snapshot: decode %s/%s: %w", dev, key, err)
		}
		p.Entries = append(p.Entries, iotkv.BackupEntry{Device: dev, Key: key, Value: sr.Value, TS: sr.TS})
		size += len(k) + len(sr.Value) + 48
		s.entries++
	}
	if err := s.it.Error(); err != nil {
		return p, fmt.Errorf("snapshot: %w", err)
	}
	p.Last = len(s.devices) == 0 && !s.it.Valid()
	return p, nil
}

func (s *snapSender) close() {
	if s.it != nil {
		_ = s.it.Close()
		s.it = nil
	}
	if s.snap != nil {
		_ = s.snap.Close()
		s.snap = nil
	}
}

type backupMetrics struct {
	published, trimmed, forcedTrims, forcedChanges, snapshots, dropped prometheus.Counter
	logChanges, confirmed                                              prometheus.Gauge
}

func newBackupMetrics(reg prometheus.Registerer) (*backupMetrics, error) {
	m := &backupMetrics{
		published:     prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_backup_changes_published_total", Help: "Changes published on the backup stream (resends included)."}),
		trimmed:       prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_backup_changes_trimmed_total", Help: "Changes dropped from the change log."}),
		forcedTrims:   prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_backup_forced_trims_total", Help: "Trims that dropped changes the master had not confirmed (retention exceeded)."}),
		forcedChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_backup_forced_trim_changes_total", Help: "Unconfirmed changes dropped because retention was exceeded."}),
		snapshots:     prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_backup_snapshots_sent_total", Help: "Full snapshots started for a master."}),
		dropped:       prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_backup_inbound_dropped_total", Help: "Master requests or confirms dropped because the backup loop was busy."}),
		logChanges:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "iotkv_backup_log_changes", Help: "Changes held in the change log."}),
		confirmed:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "iotkv_backup_confirmed_seq", Help: "Highest change seq the master confirmed."}),
	}
	for _, c := range []prometheus.Collector{m.published, m.trimmed, m.forcedTrims, m.forcedChanges, m.snapshots, m.dropped, m.logChanges, m.confirmed} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register backup metrics: %w", err)
		}
	}
	return m, nil
}
