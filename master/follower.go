package master

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/iotkv/iotkv"
)

// backupStore keeps one edge's backup for a follower: journal files and
// latest.json (fileStore), or segments and snapshots in object storage
// (s3Backup). The follower's worker calls every method but status, ready
// and stream, which REST calls from its own goroutines.
type backupStore interface {
	// follow switches to incarnation inc and returns the last change it
	// holds of it; devices gets the last seq and write of every device
	// the store knows of in it. errNeedSnapshot: the store holds another state and only
	// a full snapshot can replace it; any other error: the store cannot be
	// reached now.
	follow(inc string, devices func(device string, seq uint64, lastWrite int64)) (last uint64, err error)
	// append keeps changes that follow the last one held, contiguous;
	// raw is each change's JSON as received.
	append(changes []iotkv.Change, raw []json.RawMessage) error
	// commit makes durable what its policy says is due (force: all of
	// it) and returns the last durable change: only that is confirmed.
	commit(force bool) uint64
	// receive starts taking a full state of inc at seq, in parts.
	receive(inc string, seq uint64) (snapshotSink, error)
	// tick does the store's background work (latest.json, lease,
	// compaction); close does the last of it, once, after the stream.
	tick()
	close()

	status(s *Status)
	ready() error
	stream(w io.Writer) error
}

// snapshotSink receives a full state; install makes it the store's state,
// durable at its seq.
type snapshotSink interface {
	part(p *iotkv.BackupSnapshotPart) error
	install() error
	abort()
}

var errNeedSnapshot = errors.New("the store holds another state: a snapshot must replace it")

type event struct {
	kind    string // a backup kind, or "connected" / "lost"
	payload []byte
}

// follower is the master's side of one edge's backup stream, whatever the
// connection (the master dials the edge, or the edge dials the master) and
// whatever the store. Its worker goroutine (run) owns the stream position,
// the requests and confirms and the incoming snapshot; mu is a leaf lock
// for what REST reads.
type follower struct {
	id    string
	log   *slog.Logger
	opts  *Options
	m     *metrics
	store backupStore

	// publish sends a request or confirm to the edge over every way the
	// master reaches it (set before run, read only by the worker).
	publish func(topic string, payload []byte)

	in   chan event
	stop chan struct{}
	done chan struct{}

	mu          sync.Mutex
	addr        string // dial-in address, or the address the edge dialled from
	inc         string
	durable     uint64 // last change the store made durable (and we confirmed)
	edgeSeq     uint64
	connected   int // connections open to the edge (dial-in and dial-out)
	lastContact time.Time
	firstSeen   time.Time
	devices     map[string]deviceInfo // the fleet directory's part for this edge

	// startInc, when set, names the incarnation to follow before the edge
	// says (the store's current one), so an edge that is away still has
	// its devices in the fleet directory.
	startInc func() (string, error)

	// Worker only.
	end       uint64 // last change held, durable or not
	reconfirm bool   // a resend came: confirm again so the edge's window moves
	incoming  *incomingSnap
	hello     *iotkv.BackupHello
	lastReq   time.Time
	lastProg  time.Time
	gapSeen   bool // a hole was seen with end == gapAt (counted once)
	gapAt     uint64
}

// deviceInfo is what the master knows of a device from the stream.
type deviceInfo struct {
	lastSeq   uint64
	lastWrite int64 // ms since the epoch, the edge's clock; 0 unknown
}

// noteDevice records a device's seq and last write (under mu).
func (f *follower) noteDeviceLocked(device string, seq uint64, lastWrite int64) {
	d := f.devices[device]
	d.lastSeq = max(d.lastSeq, seq)
	d.lastWrite = max(d.lastWrite, lastWrite)
	f.devices[device] = d
}

// incomingSnap is a snapshot being received.
type incomingSnap struct {
	sink     snapshotSink
	devices  []iotkv.DeviceSeq
	id, inc  string
	seq      uint64
	nextPart int
}

func newFollower(id, addr string, opts *Options, m *metrics, store backupStore, inc string, durable uint64) *follower {
	return &follower{
		id: id, addr: addr, log: opts.Logger.With("edge", id), opts: opts, m: m, store: store,
		publish: func(string, []byte) {},
		in:      make(chan event, 256), stop: make(chan struct{}), done: make(chan struct{}),
		inc: inc, durable: durable, end: durable, firstSeen: time.Now(), devices: map[string]deviceInfo{},
	}
}

// deliver hands an event to the worker; it blocks (the connection keeps
// order) until the worker takes it or the follower stops.
func (f *follower) deliver(ev event) {
	select {
	case f.in <- ev:
	case <-f.stop:
	}
}

// halt stops the worker and waits for it; the store is closed by then.
func (f *follower) halt() {
	close(f.stop)
	<-f.done
}

func (f *follower) run() {
	defer close(f.done)
	if f.startInc != nil && f.inc == "" {
		if inc, err := f.startInc(); err == nil {
			if err := f.follow(inc); err != nil {
				f.log.Warn("cannot read the stored backup yet", "err", err)
			}
		}
	}
	tick := time.NewTicker(min(500*time.Millisecond, max(20*time.Millisecond, f.opts.FlushInterval/5)))
	defer tick.Stop()
	for {
		select {
		case <-f.stop:
			if f.incoming != nil {
				f.incoming.sink.abort()
				f.incoming = nil
			}
			f.store.close()
			return
		case ev := <-f.in:
			f.handle(ev)
		drain:
			for i := 0; i < 256; i++ {
				select {
				case ev := <-f.in:
					f.handle(ev)
				default:
					break drain
				}
			}
			f.commit()
		case <-tick.C:
			f.store.tick()
			f.commit()
			f.maybeRequest()
		}
	}
}

func (f *follower) handle(ev event) {
	if f.opts.dropHook != nil && f.opts.dropHook(f.id, ev.kind, ev.payload) {
		return
	}
	switch ev.kind {
	case iotkv.BackupKindChanges:
		f.changes(ev.payload)
	case iotkv.BackupKindSnapshot:
		f.commit()
		f.snapshotPart(ev.payload)
	case iotkv.BackupKindHello:
		f.commit()
		f.onHello(ev.payload)
	case "connected":
		f.setConnected(+1)
		if f.inc != "" {
			f.request("connected")
		}
	case "resubscribed": // another connection of a dial-out edge
		if f.inc != "" {
			f.request("connected")
		}
	case "lost":
		f.setConnected(-1)
	}
}

func (f *follower) setConnected(d int) {
	f.mu.Lock()
	f.connected = max(0, f.connected+d)
	f.mu.Unlock()
}

func (f *follower) isConnected() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.connected > 0
}

func (f *follower) touch() {
	now := time.Now()
	f.mu.Lock()
	f.lastContact = now
	f.mu.Unlock()
}

// commit asks the store to make what is due durable and confirms it.
func (f *follower) commit() {
	d := f.store.commit(false)
	f.mu.Lock()
	moved := d > f.durable
	if moved {
		f.durable = d
	}
	f.mu.Unlock()
	if moved || f.reconfirm {
		f.reconfirm = false
		f.m.applied.WithLabelValues(f.id).Set(float64(d))
		f.send(iotkv.BackupKindConfirm, iotkv.BackupConfirm{Inc: f.inc, Seq: d})
	}
}

func (f *follower) durableSeq() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.durable
}

func (f *follower) send(kind string, v any) {
	payload, _ := json.Marshal(v)
	f.publish(iotkv.BackupTopic(f.id, kind), payload) // not waited: the next message repeats it
}

// request asks the edge for everything after the last durable change,
// which it also confirms.
func (f *follower) request(reason string) {
	f.lastReq = time.Now()
	f.m.requests.WithLabelValues(f.id, reason).Inc()
	after := f.durableSeq()
	f.log.Debug("backup request", "after", after, "incarnation", f.inc, "reason", reason)
	f.send(iotkv.BackupKindRequest, iotkv.BackupRequest{Inc: f.inc, After: after})
}

// follow makes inc the followed incarnation, at what the store holds.
func (f *follower) follow(inc string) error {
	seen := map[string]deviceInfo{}
	last, err := f.store.follow(inc, func(device string, seq uint64, lastWrite int64) {
		d := seen[device]
		seen[device] = deviceInfo{lastSeq: max(d.lastSeq, seq), lastWrite: max(d.lastWrite, lastWrite)}
	})
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.inc, f.durable = inc, last
	f.devices = seen
	f.mu.Unlock()
	f.end, f.gapSeen = last, false
	f.m.applied.WithLabelValues(f.id).Set(float64(last))
	f.log.Info("following incarnation", "incarnation", inc, "stored", last)
	return nil
}

func (f *follower) changes(payload []byte) {
	msg, changes, err := iotkv.DecodeBackupChanges(payload)
	if err != nil || msg.Edge != f.id {
		f.m.badMessages.WithLabelValues(f.id).Inc()
		f.log.Warn("bad backup changes message", "err", err)
		return
	}
	f.touch()
	if msg.Inc != f.inc {
		// Another incarnation: a store that can take it follows it at
		// once; otherwise the snapshot the request asks for replaces it.
		if f.incoming != nil || f.follow(msg.Inc) != nil {
			return
		}
	}
	if msg.To <= f.end {
		f.reconfirm = true
		return
	}
	if msg.From > f.end+1 {
		if !f.gapSeen || f.gapAt != f.end {
			// Counted once per hole, even when a request went out just
			// before (then the replay it asks for is already coming).
			f.gapSeen, f.gapAt = true, f.end
			f.m.gaps.WithLabelValues(f.id).Inc()
			f.log.Warn("backup gap: asking the edge to replay", "have", f.end, "got_from", msg.From)
		}
		if time.Since(f.lastReq) > time.Second {
			f.request("gap")
		}
		return
	}
	skip := int(f.end + 1 - msg.From)
	if err := f.store.append(changes[skip:], msg.Changes[skip:]); err != nil {
		f.log.Error("backup store refused changes: not confirming them", "err", err)
		return
	}
	f.end = msg.To
	f.lastProg = time.Now()
	f.mu.Lock()
	for i := skip; i < len(changes); i++ {
		f.noteDeviceLocked(changes[i].Device, changes[i].DeviceSeq, changes[i].UpdatedAt)
	}
	// The edge has at least what it sent; its next hello may be a second
	// away, and lag must not read 0 while changes wait to be stored.
	f.edgeSeq = max(f.edgeSeq, f.end)
	f.mu.Unlock()
	if last := changes[len(changes)-1]; last.UpdatedAt > 0 {
		f.m.lag.Observe(max(0, float64(time.Now().UnixMilli()-last.UpdatedAt)/1000))
	}
}

func (f *follower) onHello(payload []byte) {
	h, err := iotkv.DecodeBackupHello(payload)
	if err != nil || h.Edge != f.id {
		f.m.badMessages.WithLabelValues(f.id).Inc()
		return
	}
	f.mu.Lock()
	f.edgeSeq, f.lastContact = h.Seq, time.Now()
	f.mu.Unlock()
	f.hello = &h
	if h.Inc == f.inc && h.Seq >= f.end {
		f.m.lagChanges.WithLabelValues(f.id).Set(float64(h.Seq - f.end))
	}
	f.maybeRequest()
}

// maybeRequest asks again when the stream is stuck: a lost request, a
// lost last message, a new incarnation, a stalled snapshot.
func (f *follower) maybeRequest() {
	if !f.isConnected() || time.Since(f.lastReq) < 2*time.Second {
		return
	}
	quiet := time.Since(f.lastProg) > 3*time.Second
	reason := ""
	h := f.hello
	switch {
	case f.incoming != nil:
		if quiet {
			reason = "snapshot_stalled"
		}
	case h == nil:
		if quiet && time.Since(f.lastReq) > 5*time.Second {
			reason = "no_hello"
		}
	case f.inc == "":
		if err := f.follow(h.Inc); err != nil && !errors.Is(err, errNeedSnapshot) {
			return // the store is unreachable: try again at the next tick
		}
		reason = "incarnation"
	case h.Inc != f.inc:
		reason = "incarnation"
	case !h.Streaming:
		reason = "no_session"
	case h.Seq > f.end && quiet:
		reason = "stalled"
	}
	if reason != "" {
		f.request(reason)
	}
}

func (f *follower) snapshotPart(payload []byte) {
	p, err := iotkv.DecodeBackupSnapshotPart(payload)
	if err != nil || p.Edge != f.id {
		f.m.badMessages.WithLabelValues(f.id).Inc()
		f.log.Warn("bad backup snapshot part", "err", err)
		return
	}
	f.touch()
	in := f.incoming
	if p.Part == 0 {
		if in != nil {
			in.sink.abort()
			f.incoming = nil
		}
		sink, err := f.store.receive(p.Inc, p.Seq)
		if err != nil {
			f.log.Error("cannot receive snapshot", "err", err)
			return
		}
		in = &incomingSnap{sink: sink, id: p.Snap, inc: p.Inc, seq: p.Seq}
		f.incoming = in
		f.m.resyncs.WithLabelValues(f.id).Inc()
		f.log.Warn("backup resync from a snapshot", "incarnation", p.Inc, "seq", p.Seq, "had_incarnation", f.inc, "had", f.end)
	}
	if in == nil || p.Snap != in.id || p.Part != in.nextPart {
		if in != nil && p.Snap == in.id && time.Since(f.lastReq) > time.Second {
			f.log.Warn("snapshot part lost: starting over", "want", in.nextPart, "got", p.Part)
			in.sink.abort()
			f.incoming = nil
			f.request("snapshot_gap")
		}
		return
	}
	if p.Inc != in.inc || p.Seq != in.seq {
		err = errors.New("incarnation or seq changed within one snapshot")
	} else {
		err = in.sink.part(&p)
	}
	if err != nil {
		f.log.Error("snapshot part refused: starting over", "err", err)
		in.sink.abort()
		f.incoming = nil
		f.request("snapshot_bad")
		return
	}
	in.nextPart++
	for _, d := range p.Devices {
		in.devices = append(in.devices, d)
	}
	f.lastProg = time.Now()
	f.send(iotkv.BackupKindConfirm, iotkv.BackupConfirm{Inc: p.Inc, Snap: p.Snap, Part: p.Part})
	if !p.Last {
		return
	}
	f.incoming = nil
	if err := in.sink.install(); err != nil {
		f.log.Error("snapshot install failed", "err", err)
		in.sink.abort()
		return // the next hello asks again
	}
	f.mu.Lock()
	f.inc, f.durable = in.inc, in.seq
	old := f.devices
	f.devices = map[string]deviceInfo{}
	for _, d := range in.devices {
		// A snapshot carries no write times: keep what we knew.
		f.devices[d.Device] = deviceInfo{lastSeq: d.LastSeq, lastWrite: old[d.Device].lastWrite}
	}
	f.mu.Unlock()
	f.end, f.gapSeen = in.seq, false
	f.m.applied.WithLabelValues(f.id).Set(float64(in.seq))
	f.log.Info("backup snapshot installed", "incarnation", in.inc, "seq", in.seq)
	f.send(iotkv.BackupKindConfirm, iotkv.BackupConfirm{Inc: in.inc, Seq: in.seq})
}

// Status is one edge in GET /v1/backups.
type Status struct {
	Edge        string     `json:"edge"`
	Addr        string     `json:"addr"`
	Connected   bool       `json:"connected"`
	Incarnation string     `json:"incarnation"`
	Seq         uint64     `json:"seq"`
	EdgeSeq     uint64     `json:"edge_seq"`
	Lag         uint64     `json:"lag"`
	Keys        int        `json:"keys"` // in latest.json (with --store s3://: in the newest snapshot)
	SnapshotSeq uint64     `json:"snapshot_seq"`
	Pending     int        `json:"pending"` // keys changed since latest.json (S3: changes not stored yet)
	LastContact *time.Time `json:"last_contact"`
	LastSeen    *time.Time `json:"last_seen"`
	// With --store s3://: the store, its last error, and whether this
	// master holds the edge's lease.
	Store      string `json:"store,omitempty"`
	StoreError string `json:"store_error,omitempty"`
	Leader     *bool  `json:"leader,omitempty"`
}

func (f *follower) status() Status {
	f.mu.Lock()
	s := Status{Edge: f.id, Addr: f.addr, Connected: f.connected > 0, Incarnation: f.inc, Seq: f.durable, EdgeSeq: f.edgeSeq}
	if f.edgeSeq > f.durable {
		s.Lag = f.edgeSeq - f.durable
	}
	if !f.lastContact.IsZero() {
		t := f.lastContact.UTC()
		s.LastContact, s.LastSeen = &t, &t
	}
	f.mu.Unlock()
	f.store.status(&s)
	return s
}

func (f *follower) ready() error {
	if err := f.store.ready(); err != nil {
		return err
	}
	if !f.isConnected() {
		return errors.New("edge " + f.id + " is not connected")
	}
	return nil
}
