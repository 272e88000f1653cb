package edge

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/iotkv/iotkv"
)

// QuotaOptions bound what one device may store and how fast it may write.
// A zero field takes its default; a negative one means no limit.
type QuotaOptions struct {
	// Keys is the most live keys per device; default 100,000.
	Keys int64
	// Bytes is the most stored bytes per device (for each live key, its
	// length plus the length of its stored record: the value and ~40
	// bytes of timestamps and seqs); default 256 MiB.
	Bytes int64
	// RateOps is the sustained ops per second per device, a token bucket
	// holding RateBurst seconds of ops; default 5,000.
	RateOps int64
}

// Quota defaults.
const (
	DefaultQuotaKeys  = 100_000
	DefaultQuotaBytes = 256 << 20
	DefaultRateOps    = 5000
	// RateBurst is how many seconds of RateOps a device may write at once.
	RateBurst = 10
)

func (q QuotaOptions) withDefaults() QuotaOptions {
	if q.Keys == 0 {
		q.Keys = DefaultQuotaKeys
	}
	if q.Bytes == 0 {
		q.Bytes = DefaultQuotaBytes
	}
	if q.RateOps == 0 {
		q.RateOps = DefaultRateOps
	}
	return q
}

// quotas is the committer's admission check: the store keeps each
// device's key and byte counts (in its device record, written in the same
// Pebble batch as the ops). Owned by the committer's loop goroutine.
type quotas struct {
	o QuotaOptions
}

func newQuotas(o QuotaOptions) *quotas {
	return &quotas{o: o.withDefaults()}
}

// usage is the change a write makes to its device's counters.
type usage struct{ keys, bytes int64 }

// admit checks a write whose counters change by d, for a device holding
// st. Only a write that grows a count past its limit is refused, so a
// device over a lowered limit can still delete and shrink. (The rate is
// checked before a write reaches the committer: ratelimit.go.)
func (q *quotas) admit(device string, st devState, d usage) error {
	if d.keys > 0 && q.o.Keys > 0 && st.keys+d.keys > q.o.Keys {
		return iotkv.Errorf(iotkv.CodeQuotaExceeded, "device %s would hold %d keys; its quota is %d", device, st.keys+d.keys, q.o.Keys)
	}
	if d.bytes > 0 && q.o.Bytes > 0 && st.bytes+d.bytes > q.o.Bytes {
		return iotkv.Errorf(iotkv.CodeQuotaExceeded, "device %s would store %d bytes; its quota is %d", device, st.bytes+d.bytes, q.o.Bytes)
	}
	return nil
}

// recInfo is what the committer needs of a key's current record.
type recInfo struct {
	exists bool
	size   int64 // len(key) + len(stored record)
	expiry int64 // ms since the epoch; 0: none
}

func infoOf(key string, stored []byte) recInfo {
	return recInfo{exists: true, size: int64(len(key) + len(stored)), expiry: recordExpiry(stored)}
}

// recordExpiry reads the expiry a stored record starts with, without
// decoding the rest (appendRecord and json.Marshal both write it first).
func recordExpiry(stored []byte) int64 {
	rest, ok := bytes.CutPrefix(stored, []byte(`{"x":`))
	if !ok {
		return 0
	}
	end := bytes.IndexByte(rest, ',')
	if end < 0 {
		return 0
	}
	x, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	if err != nil {
		return 0
	}
	return x
}

// prefetch reads into g.recs the stored record of every key the group's
// writes touch, with one iterator seeking in key order. current then finds
// them there. A Pebble Get per key re-opened every level and table for
// each lookup and took most of the committer's time under device ingest;
// sorted seeks on one iterator reuse its position and loaded blocks.
func (c *committer) prefetch(g *group, reqs []*writeReq) error {
	type want struct {
		rk  []byte
		key string
	}
	var ws []want
	for _, r := range reqs {
		if r.refused != nil {
			continue
		}
		for _, op := range r.ops {
			ws = append(ws, want{recordKey(r.device, op.Key), op.Key})
		}
	}
	if len(ws) < 2 {
		return nil // a Get is as cheap
	}
	slices.SortFunc(ws, func(a, b want) int { return bytes.Compare(a.rk, b.rk) })
	it, err := c.store.db.NewIter(&pebble.IterOptions{LowerBound: ws[0].rk, UpperBound: append(slices.Clip(ws[len(ws)-1].rk), 0)})
	if err != nil {
		return fmt.Errorf("prefetch records: %w", err)
	}
	for i, w := range ws {
		if i > 0 && bytes.Equal(w.rk, ws[i-1].rk) {
			continue
		}
		ri := recInfo{}
		if it.SeekGE(w.rk) && bytes.Equal(it.Key(), w.rk) {
			ri = infoOf(w.key, it.Value())
		}
		g.recs[string(w.rk)] = ri
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("prefetch records: %w", err)
	}
	return nil
}

// current returns the record of rk as the group being built sees it: this
// group's own writes first, then what Pebble holds (earlier groups are
// visible in Pebble once applied).
func (c *committer) current(g *group, local map[string]recInfo, key string, rk []byte) (recInfo, error) {
	if ri, ok := local[string(rk)]; ok {
		return ri, nil
	}
	if ri, ok := g.recs[string(rk)]; ok {
		return ri, nil
	}
	v, closer, err := c.store.db.Get(rk)
	if errors.Is(err, pebble.ErrNotFound) {
		return recInfo{}, nil
	}
	if err != nil {
		return recInfo{}, fmt.Errorf("read %q: %w", rk, err)
	}
	ri := infoOf(key, v)
	_ = closer.Close()
	return ri, nil
}

// recount walks every record and sets each device's key and byte counts
// from what is stored, in one synced batch with the marker that says the
// counts are kept. It runs at start when the marker is missing: a store
// from before the counts existed, or one a restore just wrote.
func (s *Store) recount(devs map[string]devState) error {
	counts, err := s.countUsage()
	if err != nil {
		return err
	}
	batch := s.db.NewBatch()
	defer batch.Close()
	for d, st := range devs {
		u := counts[d]
		delete(counts, d)
		st.keys, st.bytes = u.keys, u.bytes
		devs[d] = st
		_ = batch.Set(deviceKey(d), st.meta(), nil)
	}
	for d, u := range counts {
		st := devState{keys: u.keys, bytes: u.bytes}
		devs[d] = st
		_ = batch.Set(deviceKey(d), st.meta(), nil)
	}
	_ = batch.Set(keyUsageCounted, []byte("1"), nil)
	if err := batch.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("store %s: write recounted usage: %w", s.dir, err)
	}
	return nil
}

// countUsage counts every device's keys and bytes from its records.
func (s *Store) countUsage() (map[string]usage, error) {
	counts := map[string]usage{}
	err := s.scan(prefixRecord, func(k, v []byte) error {
		rest := k[len(prefixRecord):]
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return fmt.Errorf("record key %q has no device", k)
		}
		d := string(rest[:i])
		u := counts[d]
		u.keys++
		u.bytes += int64(len(rest)-i-1) + int64(len(v))
		counts[d] = u
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count usage: %w", err)
	}
	return counts, nil
}

// StoreUsage opens the store in dir, which no edge may have open, on fs
// (nil: the OS), and returns each device's {keys, bytes} as the store
// keeps them and as a recount of its records finds them. They are equal
// unless the counters are wrong.
func StoreUsage(dir string, fs vfs.FS) (stored, counted map[string][2]int64, err error) {
	s, err := OpenStore(dir, StoreOptions{FS: fs})
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	if stored, err = storedUsage(s); err != nil {
		return nil, nil, err
	}
	counts, err := s.countUsage()
	if err != nil {
		return nil, nil, err
	}
	counted = map[string][2]int64{}
	for d, u := range counts {
		counted[d] = [2]int64{u.keys, u.bytes}
	}
	return stored, counted, nil
}

// storedUsage returns the counters the store keeps for every device that
// holds anything.
func storedUsage(s *Store) (map[string][2]int64, error) {
	devs, err := s.Devices()
	if err != nil {
		return nil, err
	}
	out := map[string][2]int64{}
	for _, d := range devs {
		if d.Keys != 0 || d.Bytes != 0 {
			out[d.Device] = [2]int64{d.Keys, d.Bytes}
		}
	}
	return out, nil
}

// usageCounted reports whether the device records hold exact counts.
func (s *Store) usageCounted() (bool, error) {
	_, err := s.get(keyUsageCounted)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store %s: %w", s.dir, err)
	}
	return true, nil
}

// admit works out what r changes in its device's counters (r.usage) and
// checks it against the quotas. cseq and nowMs are what apply will give
// r's ops, so each record is sized exactly as it will be stored. It
// caches every key's record as it was before r in g.recs, which apply
// then reads.
func (c *committer) admit(g *group, r *writeReq, st devState, cseq uint64, nowMs int64) error {
	var d usage
	var local map[string]recInfo // r's own earlier ops, when it has several
	if len(r.ops) > 1 {
		local = make(map[string]recInfo, len(r.ops))
	}
	for _, op := range r.ops {
		cseq++
		rk := recordKey(r.device, op.Key)
		old, err := c.current(g, local, op.Key, rk)
		if err != nil {
			return fmt.Errorf("check quota of %s: %w", r.device, err)
		}
		if _, ok := g.recs[string(rk)]; !ok {
			g.recs[string(rk)] = old
		}
		var nw recInfo
		if op.Op == iotkv.OpPut {
			sr := storedRecord{Value: op.Value, TS: op.TS, UpdatedAt: nowMs, Seq: r.seq, ChangeSeq: cseq}
			if op.TTL != nil {
				sr.Expiry = nowMs + *op.TTL*1000
			}
			c.scratch = appendRecord(c.scratch[:0], sr)
			nw = infoOf(op.Key, c.scratch)
		}
		if local != nil {
			local[string(rk)] = nw
		}
		d.keys += b2i(nw.exists) - b2i(old.exists)
		d.bytes += nw.size - old.size
	}
	r.usage = d
	return c.quotas.admit(r.device, st, d)
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
