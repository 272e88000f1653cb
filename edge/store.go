package edge

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/iotkv/iotkv"
)

// Key layout in Pebble. Names and keys cannot hold NUL (names are plain,
// keys have no control characters), so NUL separates them.
//
//	r\0{device}\0{key}  -> storedRecord (JSON)
//	d\0{device}         -> deviceMeta (JSON)
//	c\0{changeSeq:8 BE} -> Change (JSON): the change log the backup stream and history read
//	h\0{device}\0{key}\0{changeSeq:8 BE} -> at: the history index (history.go)
//	x\0{expiry ms:8 BE}{device}\0{key} -> empty: the expiry index (expiry.go)
//	m\0...              -> edge metadata (incarnation, change seq, usage marker)
var (
	prefixRecord    = []byte("r\x00")
	prefixDevice    = []byte("d\x00")
	prefixChange    = []byte("c\x00")
	prefixExpiry    = []byte("x\x00")
	keyIncarn       = []byte("m\x00incarnation")
	keyChangeSeq    = []byte("m\x00cseq")
	keyUsageCounted = []byte("m\x00usage") // present: device records hold exact key and byte counts
)

func recordKey(device, key string) []byte {
	b := make([]byte, 0, len(prefixRecord)+len(device)+1+len(key))
	b = append(b, prefixRecord...)
	b = append(b, device...)
	b = append(b, 0)
	return append(b, key...)
}

func deviceRecordPrefix(device string) []byte {
	return append(append(append([]byte{}, prefixRecord...), device...), 0)
}

func deviceKey(device string) []byte { return append(append([]byte{}, prefixDevice...), device...) }

func changeKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte{}, prefixChange...), seq)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte{}, p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

type storedRecord struct {
	// Expiry (ms since the epoch, 0: none) comes first so the committer
	// reads it without decoding the record (recordExpiry).
	Expiry    int64           `json:"x,omitempty"`
	Value     json.RawMessage `json:"v"`
	TS        *int64          `json:"ts,omitempty"`
	UpdatedAt int64           `json:"u"`
	Seq       uint64          `json:"s,omitempty"`
	ChangeSeq uint64          `json:"c"`
}

func (s storedRecord) record(device, key string) iotkv.Record {
	return iotkv.Record{Device: device, Key: key, Value: s.Value, TS: s.TS, UpdatedAt: s.UpdatedAt, Seq: s.Seq, ChangeSeq: s.ChangeSeq}
}

type deviceMeta struct {
	LastSeq   uint64          `json:"last_seq"`
	LastWrite int64           `json:"last_write"` // ms
	Refused   []iotkv.Refusal `json:"refused,omitempty"`
	Keys      int64           `json:"keys,omitempty"`  // live keys
	Bytes     int64           `json:"bytes,omitempty"` // see QuotaOptions.Bytes
}

// Change is one entry of the change log: the backup stream's unit. The
// type lives in the root package, which the master shares.
type Change = iotkv.Change

// Store is the edge's durable state in Pebble. Reads go straight to
// Pebble; every write goes through the committer (commit.go), which owns
// the seq state.
type Store struct {
	db  *pebble.DB
	dir string
	log *slog.Logger
	// Incarnation is a random id made when the store is created, so a
	// rebuilt edge whose seqs restart never collides with its past.
	Incarnation string
	// view is what reads see: the store as of the last durable group
	// (durable.go). Until the committer publishes one, reads go to Pebble.
	view durableView
	now  func() time.Time // the clock reads check expiry against
	// indexHistory: the committer writes the history index.
	indexHistory bool
	// readsBeforeSync: no durable view (StoreOptions.ReadsBeforeSync).
	readsBeforeSync bool
}

// StoreOptions configure OpenStore.
type StoreOptions struct {
	// FS replaces the file system (tests inject errors); default the OS.
	FS     vfs.FS
	Logger *slog.Logger
	// MemTableSize is Pebble's memtable size in bytes; default
	// DefaultMemTableSize. Pebble keeps up to two (and grows the first
	// from 256 KiB), so memory stays small on an idle edge.
	MemTableSize uint64
	// NoHistory: the committer writes no history index (HistoryOptions.Off).
	NoHistory bool
	// ReadsBeforeSync makes reads go straight to Pebble, so they can see
	// a group before its fsync (durable.go): only for measuring what
	// durable reads cost. The iotkv command never sets it.
	ReadsBeforeSync bool
}

// DefaultMemTableSize is 32 MiB. Pebble's default (4 MiB) flushes so
// often under device ingest that compactions took over half the CPU: with
// 32 MiB `BenchmarkApply` commits 1.6x the key-ops per second (64 MiB
// measured no better).
const DefaultMemTableSize = 32 << 20

// OpenStore opens (creating if needed) the store in dir.
func OpenStore(dir string, o StoreOptions) (*Store, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MemTableSize == 0 {
		o.MemTableSize = DefaultMemTableSize
	}
	opts := &pebble.Options{Logger: pebbleLogger{o.Logger}, MemTableSize: o.MemTableSize}
	if o.FS != nil {
		opts.FS = o.FS
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	s := &Store{db: db, dir: dir, log: o.Logger, now: time.Now, indexHistory: !o.NoHistory, readsBeforeSync: o.ReadsBeforeSync}
	inc, err := s.get(keyIncarn)
	switch {
	case err == nil:
		s.Incarnation = string(inc)
	case errors.Is(err, pebble.ErrNotFound):
		var b [8]byte
		_, _ = rand.Read(b[:])
		s.Incarnation = hex.EncodeToString(b[:])
		if err := db.Set(keyIncarn, []byte(s.Incarnation), pebble.Sync); err != nil {
			db.Close()
			return nil, fmt.Errorf("open store %s: write incarnation: %w", dir, err)
		}
	default:
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return s, nil
}

// Close closes Pebble.
func (s *Store) Close() error {
	s.view.close()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %s: %w", s.dir, err)
	}
	return nil
}

func (s *Store) get(k []byte) ([]byte, error) {
	v, closer, err := s.db.Get(k)
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return bytes.Clone(v), nil
}

// ErrNotFound is returned by Get for a missing key.
var ErrNotFound = iotkv.ErrNotFound

// Get reads one record as of the last durable group. An expired record
// reads as not found, whether or not the sweeper has deleted it yet.
func (s *Store) Get(device, key string) (iotkv.Record, error) {
	r, release := s.view.acquire(s.db)
	defer release()
	v, closer, err := r.Get(recordKey(device, key))
	if errors.Is(err, pebble.ErrNotFound) {
		return iotkv.Record{}, ErrNotFound
	}
	if err != nil {
		return iotkv.Record{}, fmt.Errorf("get %s/%s: %w", device, key, err)
	}
	defer closer.Close()
	var sr storedRecord
	if err := json.Unmarshal(v, &sr); err != nil {
		return iotkv.Record{}, fmt.Errorf("decode %s/%s: %w", device, key, err)
	}
	if sr.expired(s.now()) {
		return iotkv.Record{}, ErrNotFound
	}
	return sr.record(device, key), nil
}

func (sr *storedRecord) expired(now time.Time) bool {
	return sr.Expiry != 0 && now.UnixMilli() >= sr.Expiry
}

// List returns up to limit records of device whose keys start with prefix
// and sort after `after`, and the key to continue after ("" at the end).
func (s *Store) List(device, prefix, after string, limit int) ([]iotkv.Record, string, error) {
	base := deviceRecordPrefix(device)
	lower := append(append([]byte{}, base...), prefix...)
	if after != "" {
		if a := append(append(append([]byte{}, base...), after...), 0); bytes.Compare(a, lower) > 0 {
			lower = a
		}
	}
	upper := prefixEnd(append(append([]byte{}, base...), prefix...))
	r, release := s.view.acquire(s.db)
	defer release()
	now := s.now()
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, "", fmt.Errorf("list %s: %w", device, err)
	}
	defer it.Close()
	var out []iotkv.Record
	for ok := it.First(); ok; ok = it.Next() {
		if len(out) == limit {
			return out, out[len(out)-1].Key, nil
		}
		var sr storedRecord
		if err := json.Unmarshal(it.Value(), &sr); err != nil {
			return nil, "", fmt.Errorf("decode %q: %w", it.Key(), err)
		}
		if sr.expired(now) {
			continue
		}
		out = append(out, sr.record(device, string(it.Key()[len(base):])))
	}
	if err := it.Error(); err != nil {
		return nil, "", fmt.Errorf("list %s: %w", device, err)
	}
	return out, "", nil
}

// DeviceInfo describes a device the edge has stored writes of.
type DeviceInfo struct {
	Device    string
	LastSeq   uint64
	LastWrite int64
	Refused   []iotkv.Refusal // the most recent refused batches, oldest first
	Keys      int64           // live keys (expired ones count until swept)
	Bytes     int64           // stored bytes, see QuotaOptions.Bytes
}

// Devices lists every device that has written.
func (s *Store) Devices() ([]DeviceInfo, error) {
	var out []DeviceInfo
	err := s.scan(prefixDevice, func(k, v []byte) error {
		var m deviceMeta
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("decode device %q: %w", k, err)
		}
		out = append(out, DeviceInfo{Device: string(k[len(prefixDevice):]), LastSeq: m.LastSeq, LastWrite: m.LastWrite, Refused: m.Refused, Keys: m.Keys, Bytes: m.Bytes})
		return nil
	})
	return out, err
}

func (s *Store) scan(prefix []byte, fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		if err := fn(it.Key(), it.Value()); err != nil {
			return err
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	return nil
}

// lastChangeSeq returns the highest change seq committed, 0 when none.
func (s *Store) lastChangeSeq() (uint64, error) {
	v, err := s.get(keyChangeSeq)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read change seq: %w", err)
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("read change seq: %d bytes, want 8", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// pebbleLogger sends Pebble's logs through slog.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf(format, args...)) // pebble's contract: Fatalf does not return
}

var _ io.Closer = (*Store)(nil)
