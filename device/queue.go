package device

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/iotkv/iotkv"
)

const (
	logName = "queue.log"
	tmpName = "queue.log.tmp"
)

// op is one queued put or delete.
type op struct {
	id    uint64
	del   bool
	key   string
	value json.RawMessage
	ts    *int64
	ttl   *int64 // seconds, counted from the edge's commit
	json  []byte // the op as it goes into a batch payload
	size  int64  // bytes it counts against the queue limit
	dead  bool   // coalesced away by a later op on the same key
	at    time.Time
}

// batch is a group of ops with its seq. Its seq is in the log before the
// batch is published; its ops never change after that (renumbering after a
// seq resync changes only the seq).
type batch struct {
	seq uint64
	ops []*op
	// Owned by the client's run goroutine.
	sentGen uint64 // session the batch was last published in
	sentAt  time.Time
}

// payload encodes the batch as the edge expects it.
func (b *batch) payload() []byte {
	n := 32
	for _, o := range b.ops {
		n += len(o.json) + 1
	}
	p := make([]byte, 0, n)
	p = append(p, `{"seq":`...)
	p = strconv.AppendUint(p, b.seq, 10)
	p = append(p, `,"ops":[`...)
	for i, o := range b.ops {
		if i > 0 {
			p = append(p, ',')
		}
		p = append(p, o.json...)
	}
	return append(p, "]}"...)
}

// batchOverhead is the payload bytes of a batch besides its ops.
const batchOverhead = len(`{"seq":18446744073709551615,"ops":[]}`)

// queue is the durable ordered queue: an append-only log file in dir with
// the state it describes held in memory. Appends from many goroutines are
// made durable together: whoever waits first writes and fsyncs everything
// appended so far, and the others find their data already durable (group
// commit without a goroutine of its own).
//
// Lock order: fileMu before mu. mu guards the in-memory state and the
// buffer of records not yet written; fileMu guards the file and is held
// for the write + fsync and for compaction.
type queue struct {
	dir      string
	maxBytes int64
	log      *slog.Logger
	unlock   func() error

	fileMu       sync.Mutex
	f            *os.File
	durable      uint64 // LSN made durable
	sinceRewrite int64  // bytes written since the last snapshot

	mu       sync.Mutex
	err      error // sticky: a failed write or fsync
	closed   bool
	buf      []byte
	appended uint64 // LSN: bytes of records appended so far
	pending  []*op  // ops not in a batch, in order; may hold dead entries
	index    map[string]*op
	pendOps  int // live entries of pending
	pendSize int // payload bytes of the live pending ops
	batches  []*batch
	nextSeq  uint64
	nextOpID uint64
	acked    uint64 // highest seq the edge acknowledged
	synced   bool   // the edge's last seq has been learned at least once
	live     int64  // bytes of live ops (pending and batched)
	liveOps  int
	counters counters
}

// counters are the queue's running totals for Stats.
type counters struct {
	enqueued, coalesced, acked, rejected, rejectedBatches uint64
}

// openQueue opens or creates the queue in dir and replays its log. A torn
// or damaged tail (a crash in the middle of a write) is cut off: nothing in
// it was ever reported durable.
func openQueue(dir string, maxBytes int64, log *slog.Logger) (_ *queue, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("queue: create %s: %w", dir, err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	q := &queue{dir: dir, maxBytes: maxBytes, log: log, unlock: unlock, index: map[string]*op{}, nextSeq: 1, nextOpID: 1}
	defer func() {
		if err != nil {
			if q.f != nil {
				_ = q.f.Close()
			}
			_ = unlock()
		}
	}()
	_ = os.Remove(filepath.Join(dir, tmpName))
	path := filepath.Join(dir, logName)
	_, statErr := os.Stat(path)
	q.f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", path, err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		if err := syncDir(dir); err != nil {
			return nil, err
		}
	}
	data, err := io.ReadAll(q.f)
	if err != nil {
		return nil, fmt.Errorf("queue: read %s: %w", path, err)
	}
	good, err := q.replay(data)
	if err != nil {
		return nil, err
	}
	if good < len(data) {
		log.Warn("queue: cutting off a torn or damaged log tail", "path", path, "offset", good, "dropped_bytes", len(data)-good)
		if err := q.f.Truncate(int64(good)); err != nil {
			return nil, fmt.Errorf("queue: truncate %s: %w", path, err)
		}
		if err := q.f.Sync(); err != nil {
			return nil, fmt.Errorf("queue: fsync %s: %w", path, err)
		}
	}
	if _, err := q.f.Seek(int64(good), io.SeekStart); err != nil {
		return nil, fmt.Errorf("queue: seek %s: %w", path, err)
	}
	q.sinceRewrite = int64(good)
	return q, nil
}

// replay applies the records in data and returns the length of the valid
// prefix.
func (q *queue) replay(data []byte) (int, error) {
	off := 0
	for off < len(data) {
		typ, body, size, err := nextRecord(data[off:])
		if err != nil {
			return off, nil
		}
		if err := q.applyRecord(typ, body); err != nil {
			q.log.Warn("queue: record does not apply; treating the rest of the log as damaged", "offset", off, "err", err)
			return off, nil
		}
		off += size
	}
	return off, nil
}

func (q *queue) applyRecord(typ byte, body []byte) error {
	d := &decoder{b: body}
	switch typ {
	case recState:
		q.nextSeq, q.nextOpID, q.acked = d.uvarint(), d.uvarint(), d.uvarint()
		q.synced = d.byte() == 1
	case recOp:
		o := &op{id: d.uvarint()}
		flags := d.byte()
		o.del = flags&flagDel != 0
		if flags&flagTS != 0 {
			ts := d.varint()
			o.ts = &ts
		}
		if flags&flagTTL != 0 {
			ttl := d.varint()
			o.ttl = &ttl
		}
		o.key = string(d.bytes())
		if v := d.bytes(); !o.del {
			o.value = json.RawMessage(append([]byte(nil), v...))
		}
		if d.err != nil {
			return d.err
		}
		if err := o.encode(); err != nil {
			return err
		}
		o.size = int64(headerSize + 1 + len(body))
		o.at = time.Now()
		q.applyOp(o)
	case recBatch:
		seq, last, count := d.uvarint(), d.uvarint(), d.uvarint()
		if d.err != nil {
			return d.err
		}
		if b := q.applyBatch(seq, last); uint64(len(b.ops)) != count {
			return fmt.Errorf("batch %d has %d ops, the log says %d", seq, len(b.ops), count)
		}
	case recAck:
		q.applyAck(d.uvarint())
	case recReject:
		q.applyReject(d.uvarint())
	case recSync:
		q.applySync(d.uvarint())
	default:
		return fmt.Errorf("unknown record type %d", typ)
	}
	return d.err
}

// encode builds the op's batch JSON.
func (o *op) encode() error {
	kind := iotkv.OpPut
	if o.del {
		kind = iotkv.OpDel
	}
	j, err := json.Marshal(iotkv.Op{Op: kind, Key: o.key, Value: o.value, TS: o.ts, TTL: o.ttl})
	if err != nil {
		return fmt.Errorf("encode op %q: %w", o.key, err)
	}
	o.json = j
	return nil
}

func (o *op) body() []byte {
	b := binary.AppendUvarint(nil, o.id)
	var flags byte
	if o.del {
		flags |= flagDel
	}
	if o.ts != nil {
		flags |= flagTS
	}
	if o.ttl != nil {
		flags |= flagTTL
	}
	b = append(b, flags)
	if o.ts != nil {
		b = binary.AppendVarint(b, *o.ts)
	}
	if o.ttl != nil {
		b = binary.AppendVarint(b, *o.ttl)
	}
	b = appendBytes(b, []byte(o.key))
	return appendBytes(b, o.value)
}

// applyOp adds o to the pending ops. An earlier pending op on the same key
// is dropped: o decides the key's final state either way, and the other
// keys are unaffected.
func (q *queue) applyOp(o *op) {
	if prev := q.index[o.key]; prev != nil {
		prev.dead = true
		q.pendOps--
		q.pendSize -= len(prev.json) + 1
		q.live -= prev.size
		q.liveOps--
		q.counters.coalesced++
	}
	q.index[o.key] = o
	q.pending = append(q.pending, o)
	q.pendOps++
	q.pendSize += len(o.json) + 1
	q.live += o.size
	q.liveOps++
	q.nextOpID = max(q.nextOpID, o.id+1)
	q.counters.enqueued++
	if dead := len(q.pending) - q.pendOps; dead > 1024 && dead > q.pendOps {
		live := make([]*op, 0, q.pendOps)
		for _, p := range q.pending {
			if !p.dead {
				live = append(live, p)
			}
		}
		q.pending = live
	}
}

// applyBatch moves the live pending ops with id <= last into batch seq.
func (q *queue) applyBatch(seq, last uint64) *batch {
	b := &batch{seq: seq}
	i := 0
	for ; i < len(q.pending) && q.pending[i].id <= last; i++ {
		o := q.pending[i]
		if o.dead {
			continue
		}
		b.ops = append(b.ops, o)
		delete(q.index, o.key)
		q.pendOps--
		q.pendSize -= len(o.json) + 1
	}
	q.pending = q.pending[i:]
	q.batches = append(q.batches, b)
	q.nextSeq = max(q.nextSeq, seq+1)
	q.synced = true // batches form only once the edge's seq is known
	return b
}

// applyAck removes the batches up to seq and returns how many ops left.
func (q *queue) applyAck(seq uint64) int {
	q.acked = max(q.acked, seq)
	n, ops := 0, 0
	for n < len(q.batches) && q.batches[n].seq <= seq {
		ops += q.drop(q.batches[n])
		n++
	}
	q.batches = q.batches[n:]
	q.counters.acked += uint64(ops)
	return ops
}

// applyReject removes batch seq; it returns the batch, or nil.
func (q *queue) applyReject(seq uint64) *batch {
	for i, b := range q.batches {
		if b.seq == seq {
			q.drop(b)
			q.batches = append(q.batches[:i], q.batches[i+1:]...)
			q.counters.rejected += uint64(len(b.ops))
			q.counters.rejectedBatches++
			return b
		}
	}
	return nil
}

func (q *queue) drop(b *batch) int {
	for _, o := range b.ops {
		q.live -= o.size
		q.liveOps--
	}
	return len(b.ops)
}

// applySync records the edge's last seq as seen on connect (or 0 when it
// has none). When the edge is ahead of every seq this queue has given out
// (a new queue dir, a restored one), the unacknowledged batches get new
// seqs above the edge's, or the edge would take them for redeliveries and
// apply nothing. Otherwise it is an ack.
func (q *queue) applySync(seq uint64) (renumbered bool, ackedOps int) {
	q.synced = true
	if seq < q.nextSeq {
		return false, q.applyAck(seq)
	}
	q.acked = seq
	next := seq + 1
	for _, b := range q.batches {
		b.seq = next
		next++
	}
	q.nextSeq = next
	return len(q.batches) > 0, 0
}

// check returns why nothing more can be queued, or nil.
func (q *queue) check() error {
	if q.closed {
		return ErrClosed
	}
	if q.err != nil {
		return fmt.Errorf("queue: an earlier write failed, nothing more can be made durable: %w", q.err)
	}
	return nil
}

// appendOp queues o in memory and in the write buffer; it returns the LSN
// to wait on for durability.
func (q *queue) appendOp(o iotkv.Op) (uint64, error) {
	e := &op{key: o.Key, del: o.Op == iotkv.OpDel, ts: o.TS, ttl: o.TTL, at: time.Now()}
	if !e.del {
		e.value = o.Value
	}
	if err := e.encode(); err != nil {
		return 0, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.check(); err != nil {
		return 0, err
	}
	e.id = q.nextOpID
	body := e.body()
	e.size = int64(headerSize + 1 + len(body))
	freed := int64(0)
	if prev := q.index[e.key]; prev != nil {
		freed = prev.size
	}
	if q.live-freed+e.size > q.maxBytes {
		return 0, fmt.Errorf("%w: %d of %d bytes used by %d unacknowledged ops", ErrQueueFull, q.live, q.maxBytes, q.liveOps)
	}
	q.write(recOp, body)
	q.applyOp(e)
	return q.appended, nil
}

// write appends a record to the buffer. Called with mu held.
func (q *queue) write(typ byte, body []byte) {
	n := len(q.buf)
	q.buf = appendRecord(q.buf, typ, body)
	q.appended += uint64(len(q.buf) - n)
}

// cut forms the next batch from the pending ops, within maxOps ops and
// maxBytes of payload (at least one op). It returns nil when there is
// nothing to send or the edge's seq is not known yet.
func (q *queue) cut(maxOps, maxBytes int) (*batch, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.check() != nil || !q.synced || q.pendOps == 0 {
		return nil, 0
	}
	var last uint64
	count, size := 0, batchOverhead
	for _, o := range q.pending {
		if o.dead {
			continue
		}
		if count > 0 && (count >= maxOps || size+len(o.json)+1 > maxBytes) {
			break
		}
		last = o.id
		count++
		size += len(o.json) + 1
	}
	seq := q.nextSeq
	body := binary.AppendUvarint(nil, seq)
	body = binary.AppendUvarint(body, last)
	body = binary.AppendUvarint(body, uint64(count))
	q.write(recBatch, body)
	return q.applyBatch(seq, last), q.appended
}

// ack records the edge's ack of seq; it returns how many ops left the
// queue and whether batches were renumbered (the edge was ahead).
func (q *queue) ack(seq uint64) (ackedOps int, renumbered bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.check() != nil {
		return 0, false
	}
	if !q.synced || seq >= q.nextSeq {
		q.write(recSync, binary.AppendUvarint(nil, seq))
		renumbered, ackedOps = q.applySync(seq)
		return ackedOps, renumbered
	}
	if seq <= q.acked {
		return 0, false
	}
	q.write(recAck, binary.AppendUvarint(nil, seq))
	return q.applyAck(seq), false
}

// reject removes batch seq after the edge refused it.
func (q *queue) reject(seq uint64) *batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.check() != nil || !q.synced {
		return nil // batches form only once synced: nothing was refused
	}
	b := q.applyReject(seq)
	if b != nil {
		q.write(recReject, binary.AppendUvarint(nil, seq))
	}
	return b
}

// lsn is the position after the last record appended.
func (q *queue) lsn() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.appended
}

// waitDurable returns once every record up to lsn is fsync'd.
func (q *queue) waitDurable(lsn uint64) error {
	q.fileMu.Lock()
	defer q.fileMu.Unlock()
	if q.durable >= lsn {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.err
	}
	return q.flushLocked()
}

// flushLocked writes and fsyncs the buffer; fileMu is held.
func (q *queue) flushLocked() error {
	q.mu.Lock()
	if q.err != nil {
		err := q.err
		q.mu.Unlock()
		return err
	}
	buf, end := q.buf, q.appended
	q.buf = nil
	q.mu.Unlock()
	if len(buf) == 0 {
		q.durable = end
		return nil
	}
	_, err := q.f.Write(buf)
	if err == nil {
		err = q.f.Sync()
	}
	if err != nil {
		// After a failed fsync the page cache cannot be trusted: stop.
		err = fmt.Errorf("queue: write %s: %w", filepath.Join(q.dir, logName), err)
		q.mu.Lock()
		q.err = err
		q.mu.Unlock()
		return err
	}
	q.durable = end
	q.sinceRewrite += int64(len(buf))
	q.maybeRewriteLocked()
	return nil
}

// maybeRewriteLocked replaces the log with a snapshot of the live state
// when it has grown to more than twice that (and at least 1 MiB): acked,
// rejected and coalesced records are then dropped from disk. fileMu is
// held.
func (q *queue) maybeRewriteLocked() {
	q.mu.Lock()
	live := q.live
	q.mu.Unlock()
	if q.sinceRewrite < 1<<20 || q.sinceRewrite < 2*live {
		return
	}
	if err := q.rewriteLocked(); err != nil {
		// The old log is intact and still valid: keep appending to it.
		q.log.Warn("queue: compaction failed; the log keeps growing", "err", err)
		q.sinceRewrite = 0
	}
}

func (q *queue) rewriteLocked() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	var buf []byte
	state := binary.AppendUvarint(nil, q.nextSeq)
	state = binary.AppendUvarint(state, q.nextOpID)
	state = binary.AppendUvarint(state, q.acked)
	synced := byte(0)
	if q.synced {
		synced = 1
	}
	buf = appendRecord(buf, recState, append(state, synced))
	for _, b := range q.batches {
		for _, o := range b.ops {
			buf = appendRecord(buf, recOp, o.body())
		}
		body := binary.AppendUvarint(nil, b.seq)
		body = binary.AppendUvarint(body, b.ops[len(b.ops)-1].id)
		buf = appendRecord(buf, recBatch, binary.AppendUvarint(body, uint64(len(b.ops))))
	}
	for _, o := range q.pending {
		if !o.dead {
			buf = appendRecord(buf, recOp, o.body())
		}
	}
	tmp, path := filepath.Join(q.dir, tmpName), filepath.Join(q.dir, logName)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	if _, err := f.Write(buf); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = f.Close()
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	if err := syncDir(q.dir); err != nil {
		// The rename may or may not survive a crash; both files hold the
		// same state, so either is fine. Keep using the new one.
		q.log.Warn("queue: fsync of the directory after compaction failed", "err", err)
	}
	_ = q.f.Close()
	q.f = f
	// The snapshot holds everything buffered so far.
	q.buf = nil
	q.durable = q.appended
	q.sinceRewrite = int64(len(buf))
	return nil
}

// close makes everything buffered durable and releases the directory.
func (q *queue) close() error {
	q.fileMu.Lock()
	defer q.fileMu.Unlock()
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.mu.Unlock()
	err := q.flushLocked()
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	return errors.Join(err, q.f.Close(), q.unlock())
}

// oldestLive is the id of the oldest op still queued, or nextOpID when
// none is.
func (q *queue) oldestLive() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.batches) > 0 {
		return q.batches[0].ops[0].id
	}
	for _, o := range q.pending {
		if !o.dead {
			return o.id
		}
	}
	return q.nextOpID
}

// pendingInfo reports the unbatched ops: count, payload bytes and the time
// the oldest was appended.
func (q *queue) pendingInfo() (ops, size int, oldest time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, o := range q.pending {
		if !o.dead {
			oldest = o.at
			break
		}
	}
	return q.pendOps, q.pendSize, oldest
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("queue: open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("queue: fsync dir %s: %w", dir, err)
	}
	return nil
}
