package s3store

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/iotkv/iotkv"
)

// Manifest is manifest.json: where a restore of one incarnation starts.
// SnapSeq only moves forward (compare-and-swap with If-Match).
type Manifest struct {
	Edge        string `json:"edge"`
	Incarnation string `json:"incarnation"`
	SnapSeq     uint64 `json:"snap_seq"` // 0: no snapshot, the chain starts at seq 1
	// Snapshot names the snapshot object relative to the incarnation:
	// snap/{SnapSeq:020d}.json or .json.zst (zstd). Readers decode by this
	// name; empty with SnapSeq > 0 means the .json.
	Snapshot string `json:"snapshot,omitempty"`
	// Keys is the number of entries (live keys) in the snapshot.
	Keys      int    `json:"keys"`
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
	Writer    string `json:"writer"`
	Rev       uint64 `json:"rev"`
}

func now() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00") }

// ReadManifest returns the manifest and its ETag; ErrNotFound when the
// incarnation has none yet.
func (s *Store) ReadManifest(ctx context.Context, edge, inc string) (Manifest, string, error) {
	var m Manifest
	data, info, err := s.get(ctx, "manifest", s.manifestKey(edge, inc))
	if err != nil {
		return m, "", err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, "", fmt.Errorf("s3store: manifest of %s/%s: %w", edge, inc, err)
	}
	m.Edge, m.Incarnation = edge, inc // where it is stored is what it describes
	return m, info.ETag, nil
}

// AdvanceManifest moves the manifest of edge/inc to snapshot seq (never
// back), creating it when missing; seq > 0 names the snapshot this Store
// writes (.json.zst or .json as it compresses). It retries lost races; a
// manifest already at or past seq is success.
func (s *Store) AdvanceManifest(ctx context.Context, edge, inc string, seq uint64) error {
	return s.advanceManifest(ctx, edge, inc, seq, snapshotName(seq, s.snapExt()), 0)
}

// advanceManifest moves the manifest to snapshot seq stored as name.
func (s *Store) advanceManifest(ctx context.Context, edge, inc string, seq uint64, name string, keys int) error {
	for attempt := 0; attempt < 5; attempt++ {
		m, etag, err := s.ReadManifest(ctx, edge, inc)
		switch {
		case errors.Is(err, ErrNotFound):
			m = Manifest{Edge: edge, Incarnation: inc, CreatedAt: now()}
			etag = "*"
		case err != nil:
			return err
		}
		if etag != "*" && m.SnapSeq >= seq && (seq == 0 || m.Snapshot != "") {
			return nil
		}
		m.SnapSeq, m.UpdatedAt, m.Writer, m.Rev, m.Keys = seq, now(), s.nonce, m.Rev+1, keys
		if seq > 0 {
			m.Snapshot = name
		}
		body, _ := json.Marshal(m)
		_, err = s.put(ctx, "manifest", s.manifestKey(edge, inc), append(body, '\n'), etag, nil)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrConflict) {
			return err
		}
		// Lost, or our own retried write: read again and decide.
		if got, _, rerr := s.ReadManifest(ctx, edge, inc); rerr == nil && got.Writer == s.nonce && got.Rev == m.Rev {
			return nil
		}
	}
	return fmt.Errorf("s3store: manifest of %s/%s: %w (too many lost races)", edge, inc, ErrConflict)
}

// Incarnations lists the incarnations stored for edge.
func (s *Store) Incarnations(ctx context.Context, edge string) ([]string, error) {
	p := s.prefix + "edges/" + edge + "/"
	keys, err := s.list(ctx, p, true)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		if inc, ok := strings.CutSuffix(strings.TrimPrefix(k, p), "/"); ok && inc != "" {
			out = append(out, inc)
		}
	}
	return out, nil
}

// Edges lists the edges with a backup in the store.
func (s *Store) Edges(ctx context.Context) ([]string, error) {
	p := s.prefix + "edges/"
	keys, err := s.list(ctx, p, true)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		if e, ok := strings.CutSuffix(strings.TrimPrefix(k, p), "/"); ok && e != "" {
			out = append(out, e)
		}
	}
	return out, nil
}

// Current finds the incarnation a restore of edge uses: the one whose
// manifest was created last (an edge makes a new incarnation only when
// its store is rebuilt, minutes apart at least).
func (s *Store) Current(ctx context.Context, edge string) (Manifest, error) {
	incs, err := s.Incarnations(ctx, edge)
	if err != nil {
		return Manifest{}, err
	}
	var best Manifest
	found := false
	for _, inc := range incs {
		m, _, err := s.ReadManifest(ctx, edge, inc)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return Manifest{}, err
		}
		if !found || m.CreatedAt > best.CreatedAt {
			best, found = m, true
		}
	}
	if !found {
		return Manifest{}, fmt.Errorf("no backup of edge %s in %s: %w", edge, s, ErrNotFound)
	}
	return best, nil
}

// ListSegments returns the first seqs of the stored segments, sorted.
func (s *Store) ListSegments(ctx context.Context, edge, inc string) ([]uint64, error) {
	p := s.incDir(edge, inc) + "seg/"
	keys, err := s.list(ctx, p, false)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, k := range keys {
		n, ok := strings.CutSuffix(strings.TrimPrefix(k, p), ".jsonl")
		if first, err := strconv.ParseUint(n, 10, 64); ok && err == nil {
			out = append(out, first)
		}
	}
	slices.Sort(out)
	return out, nil
}

// readSegment calls fn for every change of seg/{first}, checking that the
// seqs run first, first+1, ...
func (s *Store) readSegment(ctx context.Context, edge, inc string, first uint64, fn func(c *iotkv.Change, raw []byte) error) error {
	key := s.SegmentKey(edge, inc, first)
	ctx, cancel := context.WithTimeout(ctx, 3*s.timeout)
	defer cancel()
	rc, _, err := s.open(ctx, "segment", key)
	if err != nil {
		return fmt.Errorf("segment %d: %w", first, err)
	}
	defer rc.Close()
	r := bufio.NewReaderSize(rc, 256<<10)
	want := first
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			if line[len(line)-1] != '\n' {
				return fmt.Errorf("s3store: %s: torn last line", key)
			}
			var c iotkv.Change
			if err := json.Unmarshal(line, &c); err != nil {
				return fmt.Errorf("s3store: %s: %w", key, err)
			}
			if err := c.Validate(); err != nil {
				return fmt.Errorf("s3store: %s: %w", key, err)
			}
			if c.Seq != want {
				return fmt.Errorf("s3store: %s: change %d where %d was due", key, c.Seq, want)
			}
			want++
			if err := fn(&c, line[:len(line)-1]); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			if want == first {
				return fmt.Errorf("s3store: %s is empty", key)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("s3store: read %s: %w", key, err)
		}
	}
}

// ReadChain calls fn for every stored change after `after`, in seq order,
// and returns the last seq of the chain. Segments may overlap (written by
// different masters); a segment that starts beyond the chain's end is a
// gap: ErrGap.
func (s *Store) ReadChain(ctx context.Context, edge, inc string, after uint64, fn func(c *iotkv.Change) error) (uint64, error) {
	firsts, err := s.ListSegments(ctx, edge, inc)
	if err != nil {
		return after, err
	}
	cur := after
	for _, first := range firsts {
		if first > cur+1 {
			return cur, fmt.Errorf("%w: edge %s incarnation %s: changes %d..%d are missing (next segment starts at %d)",
				ErrGap, edge, inc, cur+1, first-1, first)
		}
		if first <= after {
			// Probably wholly before the start: ask its metadata first.
			last, _, err := s.SegmentLast(ctx, edge, inc, first)
			if err != nil {
				return cur, fmt.Errorf("segment %d: %w", first, err)
			}
			if last <= cur {
				continue
			}
		}
		err := s.readSegment(ctx, edge, inc, first, func(c *iotkv.Change, _ []byte) error {
			if c.Seq <= cur {
				return nil
			}
			cur = c.Seq
			return fn(c)
		})
		if err != nil {
			return cur, err
		}
	}
	return cur, nil
}

// WriteState writes the full state of edge (the incarnation Current finds,
// or inc when given) as a backup document with incarnation and devices:
// snapshot from the manifest, then every segment after it, in order. It
// fails on a gap. It returns the document's header.
func (s *Store) WriteState(ctx context.Context, w io.Writer, edge, inc string) (iotkv.BackupHeader, error) {
	var m Manifest
	var err error
	if inc == "" {
		m, err = s.Current(ctx, edge)
	} else {
		m, _, err = s.ReadManifest(ctx, edge, inc)
		if errors.Is(err, ErrNotFound) {
			m, err = Manifest{Edge: edge, Incarnation: inc}, nil // segments only, no snapshot yet
		}
	}
	if err != nil {
		return iotkv.BackupHeader{}, err
	}
	return s.writeState(ctx, w, m)
}

// writeState is writeStateAt from manifest m, started again from the
// manifest as it is now when something it named went away while we were
// reading it (a segment or snapshot gone, or a gap where one was): another
// master's compaction trims what an older manifest needed, and a segment
// listed a moment ago may be gone by the time it is read. Nothing is
// written before the chain and snapshot are found, so a restart never
// repeats output; after three attempts the error stands (a real gap).
func (s *Store) writeState(ctx context.Context, w io.Writer, m Manifest) (iotkv.BackupHeader, error) {
	cw := &countingWriter{w: w}
	for attempt := 1; ; attempt++ {
		h, err := s.writeStateAt(ctx, cw, m, nil, nil)
		if !(errors.Is(err, ErrNotFound) || errors.Is(err, ErrGap)) || cw.n > 0 || attempt == 3 {
			return h, err
		}
		select {
		case <-ctx.Done():
			return h, err
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
		next, _, merr := s.ReadManifest(ctx, m.Edge, m.Incarnation)
		if errors.Is(merr, ErrNotFound) {
			next, merr = Manifest{Edge: m.Edge, Incarnation: m.Incarnation}, nil
		}
		if merr != nil {
			return h, err
		}
		s.log.Info("s3store: what the backup named went away while it was read; starting again from the manifest",
			"edge", m.Edge, "from", m.SnapSeq, "to", next.SnapSeq, "attempt", attempt, "err", err)
		m = next
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeStateAt merges the snapshot manifest m names (none when its SnapSeq
// is 0) with the chain after it. When end is given, it reports the last
// seq of the chain there.
func (s *Store) writeStateAt(ctx context.Context, w io.Writer, m Manifest, end *uint64, keys *int) (iotkv.BackupHeader, error) {
	edge, inc, snapSeq := m.Edge, m.Incarnation, m.SnapSeq
	snapKey, err := s.snapshotKey(m)
	if err != nil {
		return iotkv.BackupHeader{}, err
	}
	var pend iotkv.Overlay
	last, err := s.ReadChain(ctx, edge, inc, snapSeq, func(c *iotkv.Change) error { pend.Apply(c); return nil })
	if err != nil {
		return iotkv.BackupHeader{}, err
	}
	if end != nil {
		*end = last
	}
	var base *iotkv.BackupReader
	devices := map[string]uint64{}
	var firstEntry *iotkv.BackupEntry
	if snapKey != "" {
		rc, err := s.openSnapshot(ctx, snapKey)
		if err != nil {
			return iotkv.BackupHeader{}, fmt.Errorf("snapshot %d named by the manifest: %w", snapSeq, err)
		}
		defer rc.Close()
		if base, err = iotkv.NewBackupReader(bufio.NewReaderSize(rc, 256<<10)); err != nil {
			return iotkv.BackupHeader{}, fmt.Errorf("snapshot %d: %w", snapSeq, err)
		}
		// Devices come before entries in our snapshots: read up to the
		// first entry.
		for {
			kind, err := base.Next()
			if errors.Is(err, io.EOF) {
				base = nil
				break
			}
			if err != nil {
				return iotkv.BackupHeader{}, fmt.Errorf("snapshot %d: %w", snapSeq, err)
			}
			if kind == iotkv.BackupItemDevice {
				devices[base.Device.Device] = base.Device.LastSeq
				continue
			}
			e := base.Entry
			firstEntry = &e
			break
		}
	}
	for d, seq := range pend.Devices() {
		if seq > devices[d] {
			devices[d] = seq
		}
	}
	hdr := iotkv.BackupHeader{Edge: edge, Incarnation: inc, Seq: last, TakenAt: now()}
	bw, err := iotkv.NewBackupWriter(w, hdr, iotkv.DeviceList(devices))
	if err != nil {
		return hdr, err
	}
	next := func() (*iotkv.BackupEntry, error) {
		if firstEntry != nil {
			e := firstEntry
			firstEntry = nil
			return e, nil
		}
		e, err := base.NextEntry()
		if err != nil {
			return nil, fmt.Errorf("snapshot %d: %w", snapSeq, err)
		}
		return e, nil
	}
	if err := iotkv.MergeEntries(bw, next, pend.Sorted()); err != nil {
		return hdr, err
	}
	if keys != nil {
		*keys = bw.Entries()
	}
	return hdr, bw.Close()
}

// Compact writes a new snapshot of edge/inc at the end of its chain and
// moves the manifest to it, then deletes segments and snapshots the
// previous manifest made unnecessary (one generation is kept so that a
// restore already reading them finishes). It returns the new snapshot seq
// and its number of keys (unchanged when there was nothing after it).
func (s *Store) Compact(ctx context.Context, edge, inc string) (uint64, int, error) {
	m, _, err := s.ReadManifest(ctx, edge, inc)
	if errors.Is(err, ErrNotFound) {
		m = Manifest{Edge: edge, Incarnation: inc}
	} else if err != nil {
		return 0, 0, err
	}
	sf, err := s.newSnapFile("iotkv-snap-*")
	if err != nil {
		return 0, 0, fmt.Errorf("s3store: compact: %w", err)
	}
	defer sf.remove()
	var end uint64
	var keys int
	if _, err := s.writeStateAt(ctx, sf, m, &end, &keys); err != nil {
		return m.SnapSeq, m.Keys, err
	}
	if end <= m.SnapSeq {
		return m.SnapSeq, m.Keys, nil
	}
	name, err := s.storeSnapshot(ctx, sf, edge, inc, end)
	if err != nil {
		return m.SnapSeq, m.Keys, fmt.Errorf("s3store: compact: %w", err)
	}
	if err := s.advanceManifest(ctx, edge, inc, end, name, keys); err != nil {
		return m.SnapSeq, m.Keys, err
	}
	s.trim(ctx, edge, inc, m.SnapSeq)
	return end, keys, nil
}

// trim deletes segments wholly at or below keep and snapshots older than
// keep: what no manifest since the previous one can need.
func (s *Store) trim(ctx context.Context, edge, inc string, keep uint64) {
	if keep == 0 {
		return
	}
	firsts, err := s.ListSegments(ctx, edge, inc)
	if err != nil {
		return
	}
	for _, first := range firsts {
		if first > keep {
			break
		}
		last, _, err := s.SegmentLast(ctx, edge, inc, first)
		if err != nil || last > keep {
			continue
		}
		if err := s.remove(ctx, "segment", s.SegmentKey(edge, inc, first)); err != nil {
			s.log.Warn("s3store: trim segment", "edge", edge, "first", first, "err", err)
		}
	}
	p := s.incDir(edge, inc) + "snap/"
	keys, err := s.list(ctx, p, false)
	if err != nil {
		return
	}
	for _, k := range keys {
		if seq, _, ok := parseSnapshotName(strings.TrimPrefix(k, s.incDir(edge, inc))); ok && seq < keep {
			_ = s.remove(ctx, "snapshot", k)
		}
	}
}

// storeSnapshot ends the document spooled in sf and stores it create-only
// as snapshot seq of edge/inc; it returns the name the manifest records.
// An object already there (another master's) is as good as ours.
func (s *Store) storeSnapshot(ctx context.Context, sf *snapFile, edge, inc string, seq uint64) (string, error) {
	ext, size, err := sf.finish()
	if err != nil {
		return "", err
	}
	name := snapshotName(seq, ext)
	if _, err := s.putFile(ctx, "snapshot", s.incDir(edge, inc)+name, sf.f, size, map[string]string{metaWriter: s.nonce}); err != nil {
		return "", err
	}
	s.log.Debug("s3store: snapshot stored", "edge", edge, "incarnation", inc, "seq", seq,
		"object", name, "bytes", size, "document_bytes", sf.plain)
	return name, nil
}

// SnapshotWriter receives a full state from an edge (a resync) into a
// temporary file, then stores it create-only and moves the manifest to it.
type SnapshotWriter struct {
	s         *Store
	edge, inc string
	seq       uint64
	sf        *snapFile
	bw        *iotkv.BackupWriter
	devices   []iotkv.DeviceSeq
	last      iotkv.BackupEntry
}

// NewSnapshotWriter starts a snapshot of edge/inc at seq.
func (s *Store) NewSnapshotWriter(edge, inc string, seq uint64) (*SnapshotWriter, error) {
	sf, err := s.newSnapFile("iotkv-incoming-*")
	if err != nil {
		return nil, err
	}
	return &SnapshotWriter{s: s, edge: edge, inc: inc, seq: seq, sf: sf}, nil
}

// Devices adds devices' last seqs; only before the first Entry.
func (w *SnapshotWriter) Devices(d []iotkv.DeviceSeq) error {
	if w.bw != nil && len(d) > 0 {
		return errors.New("snapshot: devices after entries")
	}
	w.devices = append(w.devices, d...)
	return nil
}

func (w *SnapshotWriter) start() error {
	if w.bw != nil {
		return nil
	}
	if w.sf == nil {
		return errors.New("snapshot: already committed or aborted")
	}
	slices.SortFunc(w.devices, func(a, b iotkv.DeviceSeq) int { return strings.Compare(a.Device, b.Device) })
	if w.devices == nil {
		w.devices = []iotkv.DeviceSeq{}
	}
	var err error
	w.bw, err = iotkv.NewBackupWriter(w.sf, iotkv.BackupHeader{Edge: w.edge, Incarnation: w.inc, Seq: w.seq, TakenAt: now()}, w.devices)
	return err
}

// Entry appends one entry, in CompareEntries order.
func (w *SnapshotWriter) Entry(e *iotkv.BackupEntry) error {
	if err := w.start(); err != nil {
		return err
	}
	if w.bw.Entries() > 0 && iotkv.CompareEntries(w.last.Device, w.last.Key, e.Device, e.Key) >= 0 {
		return fmt.Errorf("entry %s/%s out of order", e.Device, e.Key)
	}
	w.last.Device, w.last.Key = e.Device, e.Key
	return w.bw.Entry(e)
}

// Entries is the number of entries written so far.
func (w *SnapshotWriter) Entries() int {
	if w.bw == nil {
		return 0
	}
	return w.bw.Entries()
}

// Commit stores the snapshot and moves the manifest to it.
func (w *SnapshotWriter) Commit(ctx context.Context) error {
	defer w.Abort()
	if err := w.start(); err != nil {
		return err
	}
	if err := w.bw.Close(); err != nil {
		return err
	}
	if w.seq == 0 {
		return w.s.AdvanceManifest(ctx, w.edge, w.inc, 0)
	}
	name, err := w.s.storeSnapshot(ctx, w.sf, w.edge, w.inc, w.seq)
	if err != nil {
		return fmt.Errorf("s3store: snapshot of %s/%s at %d: %w", w.edge, w.inc, w.seq, err)
	}
	return w.s.advanceManifest(ctx, w.edge, w.inc, w.seq, name, w.bw.Entries())
}

// Abort drops the temporary file; safe after Commit.
func (w *SnapshotWriter) Abort() {
	if w.sf != nil {
		w.sf.remove()
		w.sf = nil
	}
}

// OpenState streams WriteState of edge's current incarnation; a failure
// (a gap included) surfaces as the reader's error, so a restore reading it
// fails loudly instead of loading half a backup.
func (s *Store) OpenState(ctx context.Context, edge string) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		_, err := s.WriteState(ctx, pw, edge, "")
		pw.CloseWithError(err)
	}()
	return pr
}

// SnapshotDevices returns the devices' last seqs recorded in the snapshot
// manifest m names (none when it names none), reading only the head of the
// snapshot: devices come before entries.
func (s *Store) SnapshotDevices(ctx context.Context, m Manifest) ([]iotkv.DeviceSeq, error) {
	key, err := s.snapshotKey(m)
	if err != nil || key == "" {
		return nil, err
	}
	rc, err := s.openSnapshot(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("snapshot %d: %w", m.SnapSeq, err)
	}
	defer rc.Close()
	r, err := iotkv.NewBackupReader(bufio.NewReaderSize(rc, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("snapshot %d: %w", m.SnapSeq, err)
	}
	var out []iotkv.DeviceSeq
	for {
		kind, err := r.Next()
		if errors.Is(err, io.EOF) || (err == nil && kind != iotkv.BackupItemDevice) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot %d: %w", m.SnapSeq, err)
		}
		out = append(out, r.Device)
	}
}
