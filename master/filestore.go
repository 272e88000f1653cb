package master

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotkv/iotkv"
)

// fileStore keeps one edge's backup under DIR/{edge}/ (see files.go): a
// journal fsync'd before a confirm, the changes since latest.json in
// memory, and a merge goroutine that writes each new latest.json. The
// follower's worker calls it; mu guards what REST reads and is never held
// across I/O except the rename that installs a received snapshot.
type fileStore struct {
	id, dir   string
	log       *slog.Logger
	opts      *Options
	m         *metrics
	mergeDone chan mergeResult
	wg        sync.WaitGroup // the merge goroutine

	mu      sync.Mutex
	inc     string // the edge incarnation our state belongs to; "" unknown
	seq     uint64 // journaled (maybe not yet fsync'd)
	baseSeq uint64 // seq of latest.json
	keys    int    // keys in latest.json
	pending iotkv.Overlay
	frozen  []iotkv.OverlayEntry // being merged into a new latest.json
	devices map[string]uint64
	// lastWrite: newest updated_at per device (ms), from the journals and
	// state.json; a received snapshot carries none.
	lastWrite map[string]int64

	// Worker only.
	journal  *journal
	durable  uint64 // fsync'd
	merging  bool
	lastSnap time.Time

	journalFailed atomic.Bool // see failJournal; read by ready() too
}

func newFileStore(id string, opts *Options, m *metrics) (*fileStore, error) {
	fst := &fileStore{
		id: id, dir: filepath.Join(opts.DataDir, id), log: opts.Logger.With("edge", id), opts: opts, m: m,
		mergeDone: make(chan mergeResult, 1), devices: map[string]uint64{}, lastWrite: map[string]int64{}, lastSnap: time.Now(),
	}
	if err := os.MkdirAll(fst.dir, 0o755); err != nil {
		return nil, fmt.Errorf("edge %s: %w", id, err)
	}
	if err := fst.recover(); err != nil {
		return nil, fmt.Errorf("edge %s: recover: %w", id, err)
	}
	return fst, nil
}

// position is what the follower starts from.
func (fst *fileStore) position() (string, uint64) {
	fst.mu.Lock()
	defer fst.mu.Unlock()
	return fst.inc, fst.durable
}

// recover loads latest.json's header, state.json and the journals.
func (fst *fileStore) recover() error {
	_ = os.Remove(filepath.Join(fst.dir, incomingName)) // a transfer cut short starts over
	hdr, _, err := readLatestHeader(fst.dir)
	if err != nil {
		return err
	}
	st, err := readState(fst.dir)
	if err != nil {
		return err
	}
	fst.baseSeq, fst.seq = hdr.Seq, hdr.Seq
	if st.Seq == hdr.Seq && st.TakenAt == hdr.TakenAt {
		fst.inc, fst.keys = st.Incarnation, st.Keys
	} else if hdr.Seq == 0 && hdr.TakenAt == "" {
		fst.inc = st.Incarnation // journals only, no snapshot yet
	} else {
		// A crash between latest.json and state.json: the data is fine
		// but we cannot be sure whose it is; ask the edge for a snapshot.
		fst.log.Warn("state.json does not describe latest.json: will resync from a snapshot")
	}
	for _, d := range st.Devices {
		fst.devices[d.Device] = d.LastSeq
	}
	for d, w := range st.LastWrite {
		fst.lastWrite[d] = w
	}
	replayed := 0
	fst.seq, err = replayJournals(fst.dir, fst.seq, func(c *iotkv.Change, applied bool) {
		if c.DeviceSeq > fst.devices[c.Device] {
			fst.devices[c.Device] = c.DeviceSeq
		}
		fst.lastWrite[c.Device] = max(fst.lastWrite[c.Device], c.UpdatedAt)
		if applied {
			fst.pending.Apply(c)
			replayed++
		}
	})
	if err != nil {
		return err
	}
	fst.durable = fst.seq
	if js, err := listJournals(fst.dir); err == nil {
		for _, j := range js {
			if fi, err := os.Stat(j.path); err == nil && fi.Size() == 0 {
				_ = os.Remove(j.path)
			}
		}
	}
	if fst.journal, err = openJournal(fst.dir, fst.seq+1); err != nil {
		return err
	}
	fst.log.Info("backup state loaded", "incarnation", fst.inc, "seq", fst.seq, "snapshot_seq", fst.baseSeq,
		"keys", fst.keys, "journaled_changes", replayed)
	fst.m.applied.WithLabelValues(fst.id).Set(float64(fst.seq))
	fst.m.edgeSeen(fst.id)
	return nil
}

// follow adopts the incarnation of an edge we have nothing of yet; any
// other state is replaced only by a snapshot.
func (fst *fileStore) follow(inc string, devices func(string, uint64, int64)) (uint64, error) {
	fst.mu.Lock()
	same, empty := fst.inc == inc, fst.inc == "" && fst.seq == 0
	seq := fst.seq
	if same {
		for d, s := range fst.devices {
			devices(d, s, fst.lastWrite[d])
		}
	}
	fst.mu.Unlock()
	if same {
		return seq, nil
	}
	if !empty {
		return 0, errNeedSnapshot
	}
	fst.mu.Lock()
	fst.inc = inc
	fst.mu.Unlock()
	if err := writeState(fst.dir, stateFile{Edge: fst.id, Incarnation: inc}); err != nil {
		fst.log.Error("write state", "err", err)
	}
	fst.log.Info("backup stream started", "incarnation", inc)
	return 0, nil
}

func (fst *fileStore) append(changes []iotkv.Change, raw []json.RawMessage) error {
	if fst.journalFailed.Load() {
		return errors.New("the journal failed; restart the master")
	}
	fst.mu.Lock()
	for i := range changes {
		if err := fst.journal.append(raw[i]); err != nil {
			fst.mu.Unlock()
			fst.failJournal(err)
			return err
		}
		fst.pending.Apply(&changes[i])
		if c := &changes[i]; c.DeviceSeq > fst.devices[c.Device] {
			fst.devices[c.Device] = c.DeviceSeq
		}
		fst.lastWrite[changes[i].Device] = max(fst.lastWrite[changes[i].Device], changes[i].UpdatedAt)
		fst.seq = changes[i].Seq
	}
	full := fst.pending.Len() >= fst.opts.MaxPending
	fst.mu.Unlock()
	if full && !fst.merging {
		fst.snapshot()
	}
	return nil
}

// failJournal stops confirming for good: after a failed write or fsync the
// kernel may have dropped the unwritten pages while a retried fsync
// reports success, so nothing after this point can be trusted as stored.
// The edge keeps every unconfirmed change; a restart of the master
// recovers from what is on disk and asks for the rest.
func (fst *fileStore) failJournal(err error) {
	if !fst.journalFailed.Swap(true) {
		fst.log.Error("journal failed: confirming nothing more for this edge until the master restarts", "err", err)
	}
}

// commit fsyncs the journal: everything journaled is due at once.
func (fst *fileStore) commit(bool) uint64 {
	fst.mu.Lock()
	seq := fst.seq
	fst.mu.Unlock()
	if seq == fst.durable || fst.journalFailed.Load() {
		return fst.durable
	}
	start := time.Now()
	if err := fst.journal.sync(); err != nil {
		fst.failJournal(err)
		return fst.durable
	}
	fst.m.fsync.Observe(time.Since(start).Seconds())
	fst.durable = seq
	return seq
}

func (fst *fileStore) tick() {
	if fst.merging {
		select {
		case r := <-fst.mergeDone:
			fst.finishMerge(r)
		default:
		}
	}
	if time.Since(fst.lastSnap) >= fst.opts.SnapshotInterval {
		fst.snapshot()
	}
}

func (fst *fileStore) close() {
	if fst.merging {
		fst.finishMerge(<-fst.mergeDone)
	}
	fst.commit(true)
	if fst.changed() {
		fst.snapshot()
		if fst.merging {
			fst.finishMerge(<-fst.mergeDone)
		}
	}
	if err := fst.journal.close(); err != nil {
		fst.log.Error("close journal", "err", err)
	}
	fst.wg.Wait()
}

func (fst *fileStore) ready() error {
	if fst.journalFailed.Load() {
		return fmt.Errorf("edge %s: the journal failed; restart the master", fst.id)
	}
	return nil
}

func (fst *fileStore) status(s *Status) {
	fst.mu.Lock()
	defer fst.mu.Unlock()
	s.Keys, s.SnapshotSeq, s.Pending = fst.keys, fst.baseSeq, fst.pending.Len()+len(fst.frozen)
}

// fileSnap is a snapshot being received into incoming.json.
type fileSnap struct {
	fst     *fileStore
	inc     string
	seq     uint64
	takenAt string
	f       *os.File
	bw      *iotkv.BackupWriter
	devices map[string]uint64
}

func (fst *fileStore) receive(inc string, seq uint64) (snapshotSink, error) {
	f, err := os.Create(filepath.Join(fst.dir, incomingName))
	if err != nil {
		return nil, fmt.Errorf("create incoming snapshot: %w", err)
	}
	in := &fileSnap{fst: fst, inc: inc, seq: seq, takenAt: now(), f: f, devices: map[string]uint64{}}
	in.bw, err = iotkv.NewBackupWriter(f, iotkv.BackupHeader{Edge: fst.id, Seq: seq, TakenAt: in.takenAt}, nil)
	if err != nil {
		f.Close()
		return nil, err
	}
	return in, nil
}

func (in *fileSnap) abort() {
	_ = in.f.Close()
	_ = os.Remove(in.f.Name())
}

func (in *fileSnap) part(p *iotkv.BackupSnapshotPart) error {
	for _, d := range p.Devices {
		in.devices[d.Device] = d.LastSeq
	}
	for i := range p.Entries {
		if err := in.bw.Entry(&p.Entries[i]); err != nil {
			return err
		}
	}
	return nil
}

// install makes a received snapshot the state: journals of the old state
// go first, then incoming.json becomes latest.json, then state.json names
// the new incarnation. A crash in between leaves an older but consistent
// state (and a state.json that does not match, which forces a resync).
func (in *fileSnap) install() error {
	fst := in.fst
	if fst.merging {
		fst.finishMerge(<-fst.mergeDone)
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
	if err := fst.journal.close(); err != nil {
		return err
	}
	if err := removeJournals(fst.dir, ^uint64(0)); err != nil {
		return err
	}
	// The rename and the new in-memory state change together under mu,
	// so a backup streamed meanwhile is the old state or the new one,
	// never the new file with the old incarnation's changes and seqs.
	fst.mu.Lock()
	if err := os.Rename(in.f.Name(), filepath.Join(fst.dir, latestName)); err != nil {
		fst.mu.Unlock()
		return fmt.Errorf("install snapshot: %w", err)
	}
	fst.inc, fst.seq, fst.baseSeq, fst.keys = in.inc, in.seq, in.seq, in.bw.Entries()
	fst.pending, fst.frozen, fst.devices = iotkv.Overlay{}, nil, in.devices
	for d := range fst.lastWrite {
		if _, ok := in.devices[d]; !ok {
			delete(fst.lastWrite, d)
		}
	}
	fst.mu.Unlock()
	fst.durable = in.seq
	st := stateFile{Edge: fst.id, Incarnation: in.inc, Seq: in.seq, TakenAt: in.takenAt, Keys: in.bw.Entries(), Devices: iotkv.DeviceList(in.devices)}
	if err := writeState(fst.dir, st); err != nil {
		return err
	}
	j, err := openJournal(fst.dir, in.seq+1)
	if err != nil {
		return err
	}
	fst.journal = j
	fst.log.Info("backup snapshot installed", "incarnation", in.inc, "seq", in.seq, "keys", st.Keys)
	return nil
}

func (fst *fileStore) changed() bool {
	fst.mu.Lock()
	defer fst.mu.Unlock()
	return fst.pending.Len() > 0 || fst.seq != fst.baseSeq
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
// into a fresh journal and a fresh overlay.
func (fst *fileStore) snapshot() {
	fst.lastSnap = time.Now()
	if fst.merging || !fst.changed() {
		return
	}
	fst.commit(true)
	if fst.journal.lines > 0 {
		if err := fst.journal.close(); err != nil {
			fst.log.Error("rotate journal", "err", err)
			return
		}
		j, err := openJournal(fst.dir, fst.seq+1)
		if err != nil {
			fst.log.Error("rotate journal", "err", err)
			return
		}
		fst.journal = j
	}
	fst.mu.Lock()
	frozen := fst.pending.Sorted()
	fst.frozen = frozen
	fst.pending = iotkv.Overlay{}
	seq, inc := fst.seq, fst.inc
	devices := iotkv.DeviceList(fst.devices)
	lastWrite := maps.Clone(fst.lastWrite)
	fst.mu.Unlock()
	fst.merging = true
	fst.wg.Add(1)
	go func() {
		defer fst.wg.Done()
		fst.mergeDone <- fst.writeLatest(seq, inc, frozen, devices, lastWrite)
	}()
}

func (fst *fileStore) writeLatest(seq uint64, inc string, overlay []iotkv.OverlayEntry, devices []iotkv.DeviceSeq, lastWrite map[string]int64) mergeResult {
	start := time.Now()
	r := mergeResult{seq: seq, takenAt: now()}
	path := filepath.Join(fst.dir, latestName)
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
	r.err = writeLatestFile(path, fst.id, seq, r.takenAt, in, overlay, &r.keys)
	if r.err == nil {
		r.err = writeState(fst.dir, stateFile{Edge: fst.id, Incarnation: inc, Seq: seq, TakenAt: r.takenAt, Keys: r.keys, Devices: devices, LastWrite: lastWrite})
	}
	r.took = time.Since(start)
	return r
}

func (fst *fileStore) finishMerge(r mergeResult) {
	fst.merging = false
	if r.err != nil {
		fst.m.snapshotErrors.WithLabelValues(fst.id).Inc()
		fst.log.Error("latest.json not written; keeping the journals", "err", r.err)
		fst.mu.Lock()
		// The frozen changes go back under the newer ones.
		var back iotkv.Overlay
		for _, o := range iotkv.CombineOverlays(fst.frozen, fst.pending.Sorted()) {
			back.Set(o)
		}
		fst.pending, fst.frozen = back, nil
		fst.mu.Unlock()
		return
	}
	fst.mu.Lock()
	fst.frozen = nil
	fst.baseSeq, fst.keys = r.seq, r.keys
	fst.mu.Unlock()
	fst.m.snapshotSeconds.Observe(r.took.Seconds())
	fst.m.snapshotTime.WithLabelValues(fst.id).SetToCurrentTime()
	fst.log.Debug("latest.json written", "seq", r.seq, "keys", r.keys, "took", r.took)
	if err := removeJournals(fst.dir, fst.journal.first); err != nil {
		fst.log.Error("prune journals", "err", err)
	}
}

// stream writes the full state (latest.json merged with the changes after
// it), with the incarnation and the devices' last seqs, for a restore.
func (fst *fileStore) stream(w io.Writer) error {
	fst.mu.Lock()
	if fst.inc == "" && fst.baseSeq > 0 {
		// Recovered files that do not match each other: the edge is
		// asked for a snapshot; until it lands there is nothing
		// consistent to restore from.
		fst.mu.Unlock()
		return errors.New("the backup is being resynchronised from the edge; retry shortly")
	}
	base, err := os.Open(filepath.Join(fst.dir, latestName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		fst.mu.Unlock()
		return fmt.Errorf("open latest: %w", err)
	}
	overlay := iotkv.CombineOverlays(fst.frozen, fst.pending.Sorted())
	devices := iotkv.DeviceList(fst.devices)
	hdr := iotkv.BackupHeader{Edge: fst.id, Incarnation: fst.inc, Seq: fst.seq, TakenAt: now()}
	fst.mu.Unlock()
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

func now() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00") }
