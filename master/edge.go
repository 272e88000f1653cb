package master

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
)

// edgeBackup is the master's copy of one edge. Its worker goroutine (run)
// owns the stream and the files; a merge goroutine it starts writes each
// new latest.json. mu guards the fields REST reads; the worker holds it
// only to change them, never while doing I/O.
type edgeBackup struct {
	id, addr, dir string
	log           *slog.Logger
	opts          *Options
	m             *metrics
	client        paho.Client

	in        chan event
	stop      chan struct{}
	done      chan struct{}
	mergeDone chan mergeResult
	wg        sync.WaitGroup // the merge goroutine

	mu          sync.Mutex
	inc         string // the edge incarnation our state belongs to; "" unknown
	seq         uint64 // applied, journaled and fsync'd
	baseSeq     uint64 // seq of latest.json
	keys        int    // keys in latest.json
	pending     map[string]pendingEntry
	frozen      []overlayEntry // being merged into a new latest.json
	devices     map[string]uint64
	edgeSeq     uint64
	lastContact time.Time
	connected   bool

	// Worker only.
	journal      *journal
	unsynced     bool
	merging      bool
	incoming     *incomingSnap
	hello        *iotkv.BackupHello
	lastRequest  time.Time
	gapSeen      bool // a hole was seen with eb.seq == gapAt (counted once)
	gapAt        uint64
	lastProgress time.Time

	journalFailed atomic.Bool // see failJournal; read by ready() too
}

type event struct {
	kind    string // a backup kind, or "connected" / "lost"
	payload []byte
}

func newEdgeBackup(id, addr string, opts *Options, m *metrics) (*edgeBackup, error) {
	eb := &edgeBackup{
		id: id, addr: addr, dir: filepath.Join(opts.DataDir, id),
		log: opts.Logger.With("edge", id), opts: opts, m: m,
		in: make(chan event, 256), stop: make(chan struct{}), done: make(chan struct{}),
		mergeDone: make(chan mergeResult, 1),
		pending:   map[string]pendingEntry{}, devices: map[string]uint64{},
	}
	if err := os.MkdirAll(eb.dir, 0o755); err != nil {
		return nil, fmt.Errorf("edge %s: %w", id, err)
	}
	if err := eb.recover(); err != nil {
		return nil, fmt.Errorf("edge %s: recover: %w", id, err)
	}
	return eb, nil
}

// recover loads latest.json's header, state.json and the journals.
func (eb *edgeBackup) recover() error {
	_ = os.Remove(filepath.Join(eb.dir, incomingName)) // a transfer cut short starts over
	hdr, _, err := readLatestHeader(eb.dir)
	if err != nil {
		return err
	}
	st, err := readState(eb.dir)
	if err != nil {
		return err
	}
	eb.baseSeq, eb.seq = hdr.Seq, hdr.Seq
	if st.Seq == hdr.Seq && st.TakenAt == hdr.TakenAt {
		eb.inc, eb.keys = st.Incarnation, st.Keys
	} else if hdr.Seq == 0 && hdr.TakenAt == "" {
		eb.inc = st.Incarnation // journals only, no snapshot yet
	} else {
		// A crash between latest.json and state.json: the data is fine
		// but we cannot be sure whose it is; ask the edge for a snapshot.
		eb.log.Warn("state.json does not describe latest.json: will resync from a snapshot")
	}
	for _, d := range st.Devices {
		eb.devices[d.Device] = d.LastSeq
	}
	replayed := 0
	eb.seq, err = replayJournals(eb.dir, eb.seq, func(c *iotkv.Change, applied bool) {
		if c.DeviceSeq > eb.devices[c.Device] {
			eb.devices[c.Device] = c.DeviceSeq
		}
		if applied {
			eb.applyLocked(c)
			replayed++
		}
	})
	if err != nil {
		return err
	}
	if js, err := listJournals(eb.dir); err == nil {
		for _, j := range js {
			if fi, err := os.Stat(j.path); err == nil && fi.Size() == 0 {
				_ = os.Remove(j.path)
			}
		}
	}
	if eb.journal, err = openJournal(eb.dir, eb.seq+1); err != nil {
		return err
	}
	eb.log.Info("backup state loaded", "incarnation", eb.inc, "seq", eb.seq, "snapshot_seq", eb.baseSeq,
		"keys", eb.keys, "journaled_changes", replayed)
	eb.m.applied.WithLabelValues(eb.id).Set(float64(eb.seq))
	eb.m.edgeSeen(eb.id)
	return nil
}

func (eb *edgeBackup) applyLocked(c *iotkv.Change) {
	k := pendingKey(c.Device, c.Key)
	if c.Op == iotkv.OpPut {
		eb.pending[k] = pendingEntry{value: c.Value, ts: c.TS}
	} else {
		eb.pending[k] = pendingEntry{}
	}
	if c.DeviceSeq > eb.devices[c.Device] {
		eb.devices[c.Device] = c.DeviceSeq
	}
}

// deliver hands an event to the worker; it blocks (paho keeps order)
// until the worker takes it or the master stops.
func (eb *edgeBackup) deliver(ev event) {
	select {
	case eb.in <- ev:
	case <-eb.stop:
	}
}

func (eb *edgeBackup) run() {
	defer close(eb.done)
	snapTick := time.NewTicker(eb.opts.SnapshotInterval)
	defer snapTick.Stop()
	check := time.NewTicker(500 * time.Millisecond)
	defer check.Stop()
	for {
		select {
		case <-eb.stop:
			eb.shutdown()
			return
		case ev := <-eb.in:
			batch := []event{ev}
		drain:
			for len(batch) < 256 {
				select {
				case ev := <-eb.in:
					batch = append(batch, ev)
				default:
					break drain
				}
			}
			eb.handle(batch)
		case <-snapTick.C:
			eb.snapshot()
		case r := <-eb.mergeDone:
			eb.finishMerge(r)
		case <-check.C:
			eb.maybeRequest()
		}
	}
}

func (eb *edgeBackup) shutdown() {
	if eb.merging {
		eb.finishMerge(<-eb.mergeDone)
	}
	eb.flush()
	if eb.incoming != nil {
		eb.incoming.abort()
		eb.incoming = nil
	}
	if eb.changed() {
		eb.snapshot()
		if eb.merging {
			eb.finishMerge(<-eb.mergeDone)
		}
	}
	if err := eb.journal.close(); err != nil {
		eb.log.Error("close journal", "err", err)
	}
	eb.wg.Wait()
}

// handle applies a run of events; changes are journaled together and
// confirmed after one fsync.
func (eb *edgeBackup) handle(batch []event) {
	for _, ev := range batch {
		if eb.opts.dropHook != nil && eb.opts.dropHook(eb.id, ev.kind, ev.payload) {
			continue
		}
		switch ev.kind {
		case iotkv.BackupKindChanges:
			eb.changes(ev.payload)
			continue
		case iotkv.BackupKindSnapshot:
			eb.flush()
			eb.snapshotPart(ev.payload)
		case iotkv.BackupKindHello:
			eb.flush()
			eb.onHello(ev.payload)
		case "connected":
			eb.setConnected(true)
			eb.request("connected")
		case "lost":
			eb.setConnected(false)
		}
	}
	eb.flush()
	eb.mu.Lock()
	full := len(eb.pending) >= eb.opts.MaxPending
	eb.mu.Unlock()
	if full && !eb.merging {
		eb.snapshot()
	}
}

func (eb *edgeBackup) setConnected(v bool) {
	eb.mu.Lock()
	eb.connected = v
	eb.mu.Unlock()
}

func (eb *edgeBackup) touch() {
	now := time.Now()
	eb.mu.Lock()
	eb.lastContact = now
	eb.mu.Unlock()
}

func (eb *edgeBackup) changes(payload []byte) {
	m, changes, err := iotkv.DecodeBackupChanges(payload)
	if err != nil || m.Edge != eb.id {
		eb.m.badMessages.WithLabelValues(eb.id).Inc()
		eb.log.Warn("bad backup changes message", "err", err)
		return
	}
	eb.touch()
	if m.Inc != eb.inc {
		if eb.inc != "" || eb.seq != 0 || eb.incoming != nil {
			return // another incarnation: the request asked for a snapshot
		}
		eb.adopt(m.Inc)
	}
	if m.To <= eb.seq {
		eb.unsynced = true // re-confirm so the edge's window moves
		return
	}
	if m.From > eb.seq+1 {
		if !eb.gapSeen || eb.gapAt != eb.seq {
			// Counted once per hole, even when a request went out just
			// before (then the replay it asks for is already coming).
			eb.gapSeen, eb.gapAt = true, eb.seq
			eb.m.gaps.WithLabelValues(eb.id).Inc()
			eb.log.Warn("backup gap", "have", eb.seq, "got_from", m.From)
		}
		if time.Since(eb.lastRequest) > time.Second {
			eb.request("gap")
		}
		return
	}
	eb.mu.Lock()
	for i := range changes {
		c := &changes[i]
		if c.Seq <= eb.seq {
			continue
		}
		if err := eb.journal.append(m.Changes[i]); err != nil {
			eb.mu.Unlock()
			eb.failJournal(err)
			return
		}
		eb.applyLocked(c)
		eb.seq = c.Seq
	}
	eb.edgeSeq = max(eb.edgeSeq, eb.seq) // the edge has at least what it sent; the next hello may be late
	eb.mu.Unlock()
	eb.unsynced = true
	eb.lastProgress = time.Now()
	if last := changes[len(changes)-1]; last.UpdatedAt > 0 {
		eb.m.lag.Observe(max(0, float64(time.Now().UnixMilli()-last.UpdatedAt)/1000))
	}
}

// adopt takes the incarnation of an edge we have nothing of yet.
func (eb *edgeBackup) adopt(inc string) {
	eb.mu.Lock()
	eb.inc = inc
	eb.mu.Unlock()
	if err := writeState(eb.dir, stateFile{Edge: eb.id, Incarnation: inc}); err != nil {
		eb.log.Error("write state", "err", err)
	}
	eb.log.Info("backup stream started", "incarnation", inc)
}

// flush makes the journal durable, then confirms.
// failJournal stops confirming for good: after a failed write or fsync the
// kernel may have dropped the unwritten pages while a retried fsync
// reports success, so nothing after this point can be trusted as stored.
// The edge keeps every unconfirmed change; a restart of the master
// recovers from what is on disk and asks for the rest.
func (eb *edgeBackup) failJournal(err error) {
	if !eb.journalFailed.Swap(true) {
		eb.log.Error("journal failed: confirming nothing more for this edge until the master restarts", "err", err)
	}
}

func (eb *edgeBackup) flush() {
	if !eb.unsynced {
		return
	}
	start := time.Now()
	if eb.journalFailed.Load() {
		return
	}
	if err := eb.journal.sync(); err != nil {
		eb.failJournal(err)
		return
	}
	eb.m.fsync.Observe(time.Since(start).Seconds())
	eb.unsynced = false
	eb.m.applied.WithLabelValues(eb.id).Set(float64(eb.seq))
	eb.publish(iotkv.BackupKindConfirm, iotkv.BackupConfirm{Inc: eb.inc, Seq: eb.seq})
}

func (eb *edgeBackup) publish(kind string, v any) {
	payload, _ := json.Marshal(v)
	if eb.client == nil || !eb.client.IsConnectionOpen() {
		return
	}
	eb.client.Publish(iotkv.BackupTopic(eb.id, kind), 1, false, payload) // not waited: the next message repeats it
}

func (eb *edgeBackup) request(reason string) {
	// The edge takes a request as a confirmation of everything up to
	// After: only what the journal has fsync'd may be confirmed.
	eb.flush()
	if eb.unsynced || eb.journalFailed.Load() {
		return
	}
	eb.lastRequest = time.Now()
	eb.m.requests.WithLabelValues(eb.id, reason).Inc()
	eb.log.Debug("backup request", "after", eb.seq, "incarnation", eb.inc, "reason", reason)
	eb.publish(iotkv.BackupKindRequest, iotkv.BackupRequest{Inc: eb.inc, After: eb.seq})
}

func (eb *edgeBackup) onHello(payload []byte) {
	h, err := iotkv.DecodeBackupHello(payload)
	if err != nil || h.Edge != eb.id {
		eb.m.badMessages.WithLabelValues(eb.id).Inc()
		return
	}
	now := time.Now()
	eb.mu.Lock()
	eb.edgeSeq, eb.lastContact = h.Seq, now
	eb.mu.Unlock()
	eb.hello = &h
	if h.Inc == eb.inc && h.Seq >= eb.seq {
		eb.m.lagChanges.WithLabelValues(eb.id).Set(float64(h.Seq - eb.seq))
	}
	eb.maybeRequest()
}

// maybeRequest asks again when the stream is stuck: a lost request, a
// lost last message, a new incarnation, a stalled snapshot.
func (eb *edgeBackup) maybeRequest() {
	eb.mu.Lock()
	connected := eb.connected
	eb.mu.Unlock()
	if !connected || time.Since(eb.lastRequest) < 2*time.Second {
		return
	}
	quiet := time.Since(eb.lastProgress) > 3*time.Second
	reason := ""
	h := eb.hello
	switch {
	case eb.incoming != nil:
		if quiet {
			reason = "snapshot_stalled"
		}
	case h == nil:
		if quiet && time.Since(eb.lastRequest) > 5*time.Second {
			reason = "no_hello"
		}
	case h.Inc != eb.inc:
		reason = "incarnation"
	case !h.Streaming:
		reason = "no_session"
	case h.Seq > eb.seq && quiet:
		reason = "stalled"
	}
	if reason != "" {
		eb.request(reason)
	}
}

// incomingSnap is a snapshot being received into incoming.json.
type incomingSnap struct {
	id       string
	inc      string
	seq      uint64
	takenAt  string
	f        *os.File
	bw       *iotkv.BackupWriter
	devices  map[string]uint64
	nextPart int
	last     iotkv.BackupEntry
}

func (in *incomingSnap) abort() {
	_ = in.f.Close()
	_ = os.Remove(in.f.Name())
}

func (eb *edgeBackup) snapshotPart(payload []byte) {
	p, err := iotkv.DecodeBackupSnapshotPart(payload)
	if err != nil || p.Edge != eb.id {
		eb.m.badMessages.WithLabelValues(eb.id).Inc()
		eb.log.Warn("bad backup snapshot part", "err", err)
		return
	}
	eb.touch()
	in := eb.incoming
	if p.Part == 0 {
		if in != nil {
			in.abort()
		}
		if in, err = eb.startIncoming(p); err != nil {
			eb.log.Error("cannot receive snapshot", "err", err)
			return
		}
		eb.incoming = in
		eb.m.resyncs.WithLabelValues(eb.id).Inc()
		eb.log.Warn("backup resync from a snapshot", "incarnation", p.Inc, "seq", p.Seq, "had_incarnation", eb.inc, "had_seq", eb.seq)
	}
	if in == nil || p.Snap != in.id || p.Part != in.nextPart {
		if in != nil && p.Snap == in.id && time.Since(eb.lastRequest) > time.Second {
			eb.log.Warn("snapshot part lost: starting over", "want", in.nextPart, "got", p.Part)
			in.abort()
			eb.incoming = nil
			eb.request("snapshot_gap")
		}
		return
	}
	if err := eb.receivePart(in, &p); err != nil {
		eb.log.Error("snapshot part refused: starting over", "err", err)
		in.abort()
		eb.incoming = nil
		eb.request("snapshot_bad")
		return
	}
	in.nextPart++
	eb.lastProgress = time.Now()
	eb.publish(iotkv.BackupKindConfirm, iotkv.BackupConfirm{Inc: p.Inc, Snap: p.Snap, Part: p.Part})
	if p.Last {
		if err := eb.install(in); err != nil {
			eb.log.Error("snapshot install failed", "err", err)
			in.abort()
			eb.incoming = nil
			return
		}
	}
}

func (eb *edgeBackup) startIncoming(p iotkv.BackupSnapshotPart) (*incomingSnap, error) {
	f, err := os.Create(filepath.Join(eb.dir, incomingName))
	if err != nil {
		return nil, fmt.Errorf("create incoming snapshot: %w", err)
	}
	in := &incomingSnap{id: p.Snap, inc: p.Inc, seq: p.Seq, takenAt: now(), f: f, devices: map[string]uint64{}}
	in.bw, err = iotkv.NewBackupWriter(f, iotkv.BackupHeader{Edge: eb.id, Seq: p.Seq, TakenAt: in.takenAt}, nil)
	if err != nil {
		f.Close()
		return nil, err
	}
	return in, nil
}

func (eb *edgeBackup) receivePart(in *incomingSnap, p *iotkv.BackupSnapshotPart) error {
	if p.Inc != in.inc || p.Seq != in.seq {
		return errors.New("incarnation or seq changed within one snapshot")
	}
	for _, d := range p.Devices {
		in.devices[d.Device] = d.LastSeq
	}
	for i := range p.Entries {
		e := &p.Entries[i]
		if in.bw.Entries() > 0 && iotkv.CompareEntries(in.last.Device, in.last.Key, e.Device, e.Key) >= 0 {
			return fmt.Errorf("entry %s/%s out of order", e.Device, e.Key)
		}
		if err := in.bw.Entry(e); err != nil {
			return err
		}
		in.last.Device, in.last.Key = e.Device, e.Key
	}
	return nil
}

// install makes a received snapshot the state: journals of the old state
// go first, then incoming.json becomes latest.json, then state.json names
// the new incarnation. A crash in between leaves an older but consistent
// state (and a state.json that does not match, which forces a resync).
func (eb *edgeBackup) install(in *incomingSnap) error {
	if eb.merging {
		eb.finishMerge(<-eb.mergeDone)
	}
	if err := in.bw.Close(); err != nil {
		return err
	}
	if err := in.f.Sync(); err != nil {
		return fmt.Errorf("sync incoming snapshot: %w", err)
	}
	if err := in.f.Close(); err != nil {
		return fmt.Errorf("close incoming snapshot: %w", err)
	}
	if err := eb.journal.close(); err != nil {
		return err
	}
	if err := removeJournals(eb.dir, ^uint64(0)); err != nil {
		return err
	}
	// The rename and the new in-memory state change together under mu,
	// so a backup streamed meanwhile is the old state or the new one,
	// never the new file with the old incarnation's changes and seqs.
	eb.mu.Lock()
	if err := os.Rename(in.f.Name(), filepath.Join(eb.dir, latestName)); err != nil {
		eb.mu.Unlock()
		return fmt.Errorf("install snapshot: %w", err)
	}
	eb.inc, eb.seq, eb.baseSeq, eb.keys = in.inc, in.seq, in.seq, in.bw.Entries()
	eb.pending, eb.frozen, eb.devices = map[string]pendingEntry{}, nil, in.devices
	eb.mu.Unlock()
	devices := make([]iotkv.DeviceSeq, 0, len(in.devices))
	for d, s := range in.devices {
		devices = append(devices, iotkv.DeviceSeq{Device: d, LastSeq: s})
	}
	sortDevices(devices)
	st := stateFile{Edge: eb.id, Incarnation: in.inc, Seq: in.seq, TakenAt: in.takenAt, Keys: in.bw.Entries(), Devices: devices}
	if err := writeState(eb.dir, st); err != nil {
		return err
	}
	j, err := openJournal(eb.dir, in.seq+1)
	if err != nil {
		return err
	}
	eb.journal = j
	eb.incoming = nil
	eb.m.applied.WithLabelValues(eb.id).Set(float64(in.seq))
	eb.log.Info("backup snapshot installed", "incarnation", in.inc, "seq", in.seq, "keys", st.Keys)
	eb.publish(iotkv.BackupKindConfirm, iotkv.BackupConfirm{Inc: in.inc, Seq: in.seq})
	return nil
}

func sortDevices(d []iotkv.DeviceSeq) {
	slices.SortFunc(d, func(a, b iotkv.DeviceSeq) int { return strings.Compare(a.Device, b.Device) })
}

func (eb *edgeBackup) changed() bool {
	eb.mu.Lock()
	defer eb.mu.Unlock()
	return len(eb.pending) > 0 || eb.seq != eb.baseSeq
}

type mergeResult struct {
	seq     uint64
	takenAt string
	keys    int
	err     error
	took    time.Duration
}

// snapshot freezes the changes since latest.json and merges them into a
// new latest.json in another goroutine; changes keep arriving meanwhile
// into a fresh journal and a fresh pending map.
func (eb *edgeBackup) snapshot() {
	if eb.merging || eb.incoming != nil || !eb.changed() {
		return
	}
	eb.flush()
	if eb.journal.lines > 0 {
		if err := eb.journal.close(); err != nil {
			eb.log.Error("rotate journal", "err", err)
			return
		}
		j, err := openJournal(eb.dir, eb.seq+1)
		if err != nil {
			eb.log.Error("rotate journal", "err", err)
			return
		}
		eb.journal = j
	}
	eb.mu.Lock()
	frozen := sortedOverlay(eb.pending)
	eb.frozen = frozen
	eb.pending = map[string]pendingEntry{}
	seq, inc := eb.seq, eb.inc
	devices := make([]iotkv.DeviceSeq, 0, len(eb.devices))
	for d, s := range eb.devices {
		devices = append(devices, iotkv.DeviceSeq{Device: d, LastSeq: s})
	}
	eb.mu.Unlock()
	sortDevices(devices)
	eb.merging = true
	eb.wg.Add(1)
	go func() {
		defer eb.wg.Done()
		eb.mergeDone <- eb.writeLatest(seq, inc, frozen, devices)
	}()
}

func (eb *edgeBackup) writeLatest(seq uint64, inc string, overlay []overlayEntry, devices []iotkv.DeviceSeq) mergeResult {
	start := time.Now()
	r := mergeResult{seq: seq, takenAt: now()}
	path := filepath.Join(eb.dir, latestName)
	base, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		base = nil
	} else if err != nil {
		r.err = fmt.Errorf("open latest: %w", err)
		return r
	}
	var in io.Reader
	if base != nil {
		defer base.Close()
		in = base
	}
	r.err = writeLatestFile(path, eb.id, seq, r.takenAt, in, overlay, &r.keys)
	if r.err == nil {
		r.err = writeState(eb.dir, stateFile{Edge: eb.id, Incarnation: inc, Seq: seq, TakenAt: r.takenAt, Keys: r.keys, Devices: devices})
	}
	r.took = time.Since(start)
	return r
}

func (eb *edgeBackup) finishMerge(r mergeResult) {
	eb.merging = false
	if r.err != nil {
		eb.m.snapshotErrors.WithLabelValues(eb.id).Inc()
		eb.log.Error("latest.json not written; keeping the journals", "err", r.err)
		eb.mu.Lock()
		back := combineOverlays(eb.frozen, sortedOverlay(eb.pending))
		eb.pending = make(map[string]pendingEntry, len(back))
		for _, o := range back {
			eb.pending[pendingKey(o.device, o.key)] = o.pendingEntry
		}
		eb.frozen = nil
		eb.mu.Unlock()
		return
	}
	eb.mu.Lock()
	eb.frozen = nil
	eb.baseSeq, eb.keys = r.seq, r.keys
	eb.mu.Unlock()
	eb.m.snapshotSeconds.Observe(r.took.Seconds())
	eb.m.snapshotTime.WithLabelValues(eb.id).SetToCurrentTime()
	eb.log.Debug("latest.json written", "seq", r.seq, "keys", r.keys, "took", r.took)
	if err := removeJournals(eb.dir, eb.journal.first); err != nil {
		eb.log.Error("prune journals", "err", err)
	}
}

// stream writes the full state (latest.json merged with the changes after
// it), with the incarnation and the devices' last seqs, for a restore.
func (eb *edgeBackup) stream(w io.Writer) error {
	eb.mu.Lock()
	if eb.inc == "" && eb.baseSeq > 0 {
		// Recovered files that do not match each other: the edge is
		// asked for a snapshot; until it lands there is nothing
		// consistent to restore from.
		eb.mu.Unlock()
		return errors.New("the backup is being resynchronised from the edge; retry shortly")
	}
	base, err := os.Open(filepath.Join(eb.dir, latestName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		eb.mu.Unlock()
		return fmt.Errorf("open latest: %w", err)
	}
	overlay := combineOverlays(eb.frozen, sortedOverlay(eb.pending))
	devices := make([]iotkv.DeviceSeq, 0, len(eb.devices))
	for d, s := range eb.devices {
		devices = append(devices, iotkv.DeviceSeq{Device: d, LastSeq: s})
	}
	hdr := iotkv.BackupHeader{Edge: eb.id, Incarnation: eb.inc, Seq: eb.seq, TakenAt: now()}
	eb.mu.Unlock()
	sortDevices(devices)
	var r io.Reader
	if base != nil {
		defer base.Close()
		r = base
	}
	bw, err := iotkv.NewBackupWriter(w, hdr, devices)
	if err != nil {
		return err
	}
	if err := mergeTo(bw, r, overlay); err != nil {
		return err
	}
	return bw.Close()
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
	Pending     int        `json:"pending"` // keys changed since latest.json
	LastContact *time.Time `json:"last_contact"`
	// With --store s3://: the store, its last error, and whether this
	// master holds the edge's lease.
	Store      string `json:"store,omitempty"`
	StoreError string `json:"store_error,omitempty"`
	Leader     *bool  `json:"leader,omitempty"`
}

func (eb *edgeBackup) status() Status {
	eb.mu.Lock()
	defer eb.mu.Unlock()
	s := Status{Edge: eb.id, Addr: eb.addr, Connected: eb.connected, Incarnation: eb.inc, Seq: eb.seq,
		EdgeSeq: eb.edgeSeq, Keys: eb.keys, SnapshotSeq: eb.baseSeq, Pending: len(eb.pending) + len(eb.frozen)}
	if eb.edgeSeq > eb.seq {
		s.Lag = eb.edgeSeq - eb.seq
	}
	if !eb.lastContact.IsZero() {
		t := eb.lastContact.UTC()
		s.LastContact = &t
	}
	return s
}

func now() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00") }
