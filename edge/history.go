package edge

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/iotkv/iotkv/rest"
)

// History of a key is not a second copy of its values: the change log
// already holds every applied op (it is the backup stream's source), so
// the edge keeps the log for as long as history needs it and adds a small
// index, written in the same Pebble batch as the op itself:
//
//	h\0{device}\0{key}\0{changeSeq:8 BE} -> at (8 bytes BE, ms)
//
// A history read walks the index of one key in change-seq order and reads
// each op from the change log. Because the index entry and the change are
// in one batch they are both on disk or both not after a crash, and a
// trim removes both in one batch too.
var prefixHistory = []byte("h\x00")

// HistoryOptions bound the history kept per edge. The change log is
// trimmed only when neither the master (BackupOptions) nor history
// needs a change any more.
type HistoryOptions struct {
	// Off disables the history index: the change log is kept for the
	// master only, as before.
	Off bool
	// Retain is how long history is kept; default 7 days.
	Retain time.Duration
	// MaxBytes bounds the bytes of history (change log plus index);
	// default 1 GiB. The oldest changes go first.
	MaxBytes int64
}

func (o *HistoryOptions) setDefaults() {
	if o.Retain <= 0 {
		o.Retain = 7 * 24 * time.Hour
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 1 << 30
	}
}

func historyKeyPrefix(device, key string) []byte {
	b := make([]byte, 0, len(prefixHistory)+len(device)+len(key)+2+8)
	b = append(b, prefixHistory...)
	b = append(b, device...)
	b = append(b, 0)
	b = append(b, key...)
	return append(b, 0)
}

func historyKey(device, key string, cseq uint64) []byte {
	return binary.BigEndian.AppendUint64(historyKeyPrefix(device, key), cseq)
}

// indexBytes is what one index entry costs in the history byte budget.
func indexBytes(device, key string) int64 {
	return int64(len(prefixHistory) + len(device) + len(key) + 2 + 8 + 8)
}

// indexChange adds the history index entry of ch to batch (the commit
// hook: same batch as the change itself).
func indexChange(batch *pebble.Batch, ch *Change) int64 {
	var at [8]byte
	binary.BigEndian.PutUint64(at[:], uint64(ch.UpdatedAt))
	_ = batch.Set(historyKey(ch.Device, ch.Key, ch.Seq), at[:], nil) // Set copies
	return indexBytes(ch.Device, ch.Key)
}

// HistoryItem is one op in a key's history.
type HistoryItem struct {
	Op    string          `json:"op"`
	Value json.RawMessage `json:"value"`
	TS    *int64          `json:"ts"`
	Seq   uint64          `json:"seq"` // the change seq
	At    int64           `json:"at"`  // the edge's clock when committed, ms
}

// HistoryQuery selects a range of one key's history. Zero fields do not
// restrict.
type HistoryQuery struct {
	Since, Until int64  // ms, inclusive, on the edge's commit time (at)
	After        uint64 // change seq to continue after
	Limit        int    // default and maximum 1000
}

// History returns the ops of device/key oldest first, up to durable (the
// newest change seq whose group is fsync'd), and the change seq to pass as
// After for the next page (0 at the end).
func (s *Store) History(device, key string, q HistoryQuery, durable uint64) ([]HistoryItem, uint64, error) {
	if q.Limit <= 0 || q.Limit > 1000 {
		q.Limit = 1000
	}
	pfx := historyKeyPrefix(device, key)
	lo := q.After + 1
	if lo > durable {
		return nil, 0, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: pfx, UpperBound: historyKey(device, key, durable+1)})
	if err != nil {
		return nil, 0, fmt.Errorf("history %s/%s: %w", device, key, err)
	}
	defer it.Close()
	if q.Since > 0 {
		lo = max(lo, seekSince(it, pfx, lo, durable, q.Since))
	}
	var out []HistoryItem
	for ok := it.SeekGE(historyKey(device, key, lo)); ok; ok = it.Next() {
		seq, at, err := decodeIndexEntry(it.Key(), it.Value(), len(pfx))
		if err != nil {
			return nil, 0, err
		}
		if q.Since > 0 && at < q.Since {
			continue // the edge's clock stepped back
		}
		if q.Until > 0 && at > q.Until {
			break
		}
		if len(out) == q.Limit {
			return out, out[len(out)-1].Seq, nil
		}
		v, err := s.get(changeKey(seq))
		if errors.Is(err, pebble.ErrNotFound) {
			continue // trimmed since the index was read
		}
		if err != nil {
			return nil, 0, fmt.Errorf("history %s/%s: read change %d: %w", device, key, seq, err)
		}
		var ch Change
		if err := json.Unmarshal(v, &ch); err != nil {
			return nil, 0, fmt.Errorf("history %s/%s: decode change %d: %w", device, key, seq, err)
		}
		out = append(out, HistoryItem{Op: ch.Op, Value: ch.Value, TS: ch.TS, Seq: seq, At: ch.UpdatedAt})
	}
	if err := it.Error(); err != nil {
		return nil, 0, fmt.Errorf("history %s/%s: %w", device, key, err)
	}
	return out, 0, nil
}

// seekSince binary-searches the index of one key for the first change
// seq in [lo, hi] committed at or after since: commit times grow with
// change seqs (up to clock steps, which the caller's filter absorbs), so
// a read of the last hour of a busy key does not walk its whole week.
func seekSince(it *pebble.Iterator, pfx []byte, lo, hi uint64, since int64) uint64 {
	for lo < hi {
		mid := lo + (hi-lo)/2
		k := binary.BigEndian.AppendUint64(append([]byte{}, pfx...), mid)
		if !it.SeekGE(k) {
			hi = mid
			continue
		}
		seq, at, err := decodeIndexEntry(it.Key(), it.Value(), len(pfx))
		if err != nil {
			return lo
		}
		if at >= since {
			hi = mid
		} else {
			lo = seq + 1
		}
	}
	return lo
}

func decodeIndexEntry(k, v []byte, pfxLen int) (seq uint64, at int64, err error) {
	if len(k) != pfxLen+8 || len(v) != 8 {
		return 0, 0, fmt.Errorf("history index entry %q: bad length", k)
	}
	return binary.BigEndian.Uint64(k[pfxLen:]), int64(binary.BigEndian.Uint64(v)), nil
}

// historyIndexBytes counts the bytes the history index takes, at start.
func (s *Store) historyIndexBytes() (int64, error) {
	var n int64
	err := s.scan(prefixHistory, func(k, v []byte) error {
		n += int64(len(k) + len(v))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read history index: %w", err)
	}
	return n, nil
}

// logEntry is what the trim reads of each change.
type logEntry struct {
	Device    string `json:"device"`
	Key       string `json:"key"`
	UpdatedAt int64  `json:"updated_at"`
}

// retention decides, oldest change first, whether the change log may drop
// a change: only when both the master's retention and history's let it go.
type retention struct {
	backup  BackupOptions
	history HistoryOptions
	now     time.Time
	// The log as it stands before this change is dropped.
	confirmed        uint64
	count            int64
	logBytes, hBytes int64
}

func (r *retention) drop(seq uint64, e logEntry) (ok, forced bool) {
	masterDone := seq <= r.confirmed || r.count > r.backup.RetainChanges || r.logBytes > r.backup.RetainBytes ||
		e.UpdatedAt < r.now.Add(-r.backup.RetainAge).UnixMilli()
	if !masterDone {
		return false, false
	}
	if !r.history.Off && e.UpdatedAt >= r.now.Add(-r.history.Retain).UnixMilli() && r.logBytes+r.hBytes <= r.history.MaxBytes {
		return false, false
	}
	return true, seq > r.confirmed
}

// historyReader serves REST history reads, never past the durable seq.
type historyReader struct {
	store   *Store
	durable func() uint64
}

func (h *historyReader) History(_ context.Context, device, key string, q rest.HistoryQuery) ([]rest.HistoryItem, uint64, error) {
	items, next, err := h.store.History(device, key, HistoryQuery(q), h.durable())
	if err != nil {
		return nil, 0, err
	}
	out := make([]rest.HistoryItem, len(items))
	for i, it := range items {
		out[i] = rest.HistoryItem(it)
	}
	return out, next, nil
}
