package edge

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
)

// historyRig is a store with its committer and backup producer (not
// started: the test calls trim itself, as the backup loop would) and
// clocks the test sets.
type historyRig struct {
	store *Store
	c     *committer
	b     *backup
	clock time.Time // the committer's clock for the next writes
}

func newHistoryRig(t *testing.T, bo BackupOptions, ho HistoryOptions) *historyRig {
	t.Helper()
	store, err := OpenStore(t.TempDir(), StoreOptions{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b, err := newBackup("e1", store, discardLogger(), bo, ho, reg, func(string, []byte) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	r := &historyRig{store: store, b: b, clock: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r.c, err = newCommitter(store, discardLogger(), reg, QuotaOptions{Keys: -1, Bytes: -1, RateOps: -1}, b.committed, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.c.close()
		_ = store.Close()
	})
	return r
}

// put writes device/key = value as one group at the rig's clock.
func (r *historyRig) put(t *testing.T, device, key, value string) {
	t.Helper()
	at := r.clock
	r.c.now = func() time.Time { return at } // read by the loop after submit: ordered by the channel
	before := r.b.last.Load()
	res := make(chan commitResult, 1)
	r.c.submit(&writeReq{device: device, ops: []iotkv.Op{{Op: iotkv.OpPut, Key: key, Value: json.RawMessage(value)}}, done: func(c commitResult) { res <- c }})
	if err := (<-res).err; err != nil {
		t.Fatal(err)
	}
	// The write is acknowledged before the backup hears of its group
	// (same goroutine, just after): wait for the change seq to move.
	for deadline := time.Now().Add(5 * time.Second); r.b.last.Load() == before; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the backup never saw the change of %s/%s", device, key)
		}
	}
}

func (r *historyRig) history(t *testing.T, device, key string) []HistoryItem {
	t.Helper()
	items, next, err := r.store.History(device, key, HistoryQuery{}, r.b.last.Load())
	if err != nil || next != 0 {
		t.Fatalf("history %s/%s: next %d, %v", device, key, next, err)
	}
	return items
}

// recount reads the change log and index sizes from Pebble, to hold the
// running counters to them.
func (r *historyRig) recount(t *testing.T) (logBytes, indexBytes int64, indexEntries int) {
	t.Helper()
	if err := r.store.scan(prefixChange, func(_, v []byte) error { logBytes += int64(len(v)); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := r.store.scan(prefixHistory, func(k, v []byte) error {
		indexBytes += int64(len(k) + len(v))
		indexEntries++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return logBytes, indexBytes, indexEntries
}

func (r *historyRig) checkCounters(t *testing.T) {
	t.Helper()
	lb, ib, _ := r.recount(t)
	if lb != r.b.logBytes.Load() || ib != r.b.indexBytes.Load() {
		t.Fatalf("counters: log %d index %d; on disk log %d index %d", r.b.logBytes.Load(), r.b.indexBytes.Load(), lb, ib)
	}
}

// History is trimmed by age once the master has the changes, with its
// index entries; it keeps what the master confirmed for as long as
// history is retained, and keeps what the master still needs whatever
// history's retention says.
func TestHistoryRetentionByAge(t *testing.T) {
	r := newHistoryRig(t, BackupOptions{}, HistoryOptions{Retain: time.Hour})
	for i := range 5 {
		r.put(t, "d", "temp", fmt.Sprint(i))
	}
	r.clock = r.clock.Add(2 * time.Hour)
	for i := 5; i < 10; i++ {
		r.put(t, "d", "temp", fmt.Sprint(i))
	}
	r.put(t, "d", "other", `true`)
	r.b.now = func() time.Time { return r.clock.Add(time.Minute) }

	// The master has confirmed nothing: every change stays.
	if n := r.b.trim(trimPerPass); n != 0 || len(r.history(t, "d", "temp")) != 10 {
		t.Fatalf("trim with nothing confirmed dropped %d; history has %d", n, len(r.history(t, "d", "temp")))
	}
	// The master confirmed all: the changes older than an hour go.
	r.b.confirmed = r.b.last.Load()
	if n := r.b.trim(trimPerPass); n != 5 {
		t.Fatalf("trim dropped %d, want the 5 changes older than the retention", n)
	}
	items := r.history(t, "d", "temp")
	if len(items) != 5 || string(items[0].Value) != "5" || string(items[4].Value) != "9" {
		t.Fatalf("history after the trim: %+v, want values 5..9", items)
	}
	if _, _, entries := r.recount(t); entries != 6 {
		t.Fatalf("%d index entries after the trim, want 6 (5 of temp, 1 of other)", entries)
	}
	r.checkCounters(t)
	if r.b.first != items[0].Seq || r.b.oldest.Load() != items[0].Seq {
		t.Fatalf("first %d oldest %d, want %d", r.b.first, r.b.oldest.Load(), items[0].Seq)
	}

	// With a week of history, what the master confirmed stays.
	r2 := newHistoryRig(t, BackupOptions{}, HistoryOptions{})
	for i := range 3 {
		r2.put(t, "d", "temp", fmt.Sprint(i))
	}
	r2.b.confirmed = r2.b.last.Load()
	r2.b.now = func() time.Time { return r2.clock.Add(6 * 24 * time.Hour) }
	if n := r2.b.trim(trimPerPass); n != 0 || len(r2.history(t, "d", "temp")) != 3 {
		t.Fatalf("a trim within the week dropped %d", n)
	}
	r2.b.now = func() time.Time { return r2.clock.Add(8 * 24 * time.Hour) }
	if n := r2.b.trim(trimPerPass); n != 3 || len(r2.history(t, "d", "temp")) != 0 {
		t.Fatalf("a trim after the week dropped %d, want 3", n)
	}
	r2.checkCounters(t)
}

// History is trimmed, oldest first, to stay within its byte budget
// (change log plus index), in bounded passes.
func TestHistoryRetentionByBytes(t *testing.T) {
	r := newHistoryRig(t, BackupOptions{}, HistoryOptions{MaxBytes: 1 << 30})
	for i := range 100 {
		r.put(t, "d", fmt.Sprintf("k%d", i%4), fmt.Sprintf(`"value %03d"`, i))
	}
	lb, ib, _ := r.recount(t)
	total := lb + ib
	r.b.confirmed = r.b.last.Load()
	r.b.now = func() time.Time { return r.clock.Add(time.Minute) }
	if n := r.b.trim(trimPerPass); n != 0 {
		t.Fatalf("trim under the budget dropped %d", n)
	}
	r.b.hist.MaxBytes = total / 2
	if n := r.b.trim(7); n != 7 {
		t.Fatalf("a pass bounded to 7 dropped %d", n)
	}
	for r.b.trim(7) > 0 {
	}
	lb, ib, _ = r.recount(t)
	per := total / 100
	if lb+ib > total/2 || lb+ib < total/2-2*per {
		t.Fatalf("history takes %d bytes after the trims; budget %d (one change ~%d)", lb+ib, total/2, per)
	}
	r.checkCounters(t)
	// What is left is the newest, per key, in order, up to the last write.
	items := r.history(t, "d", "k3")
	if len(items) == 0 || string(items[len(items)-1].Value) != `"value 099"` {
		t.Fatalf("history of k3 after the trims: %+v", items)
	}
	for i := 1; i < len(items); i++ {
		if items[i].Seq <= items[i-1].Seq {
			t.Fatalf("history out of order: %+v", items)
		}
	}
	if first := r.history(t, "d", "k0"); len(first) == 25 {
		t.Fatal("the oldest changes were not the ones dropped")
	}
}

// A history read never shows a change past the durable seq it is given,
// and since finds the first op at or after a time without walking from
// the start.
func TestHistoryStopsAtTheDurableSeqAndSeeksSince(t *testing.T) {
	r := newHistoryRig(t, BackupOptions{}, HistoryOptions{})
	var ats []int64
	for i := range 50 {
		r.clock = r.clock.Add(time.Second)
		ats = append(ats, r.clock.UnixMilli())
		r.put(t, "d", "k", fmt.Sprint(i))
	}
	last := r.b.last.Load()
	items, _, err := r.store.History("d", "k", HistoryQuery{}, last-10)
	if err != nil || len(items) != 40 || items[39].Seq != last-10 {
		t.Fatalf("history up to durable %d: %d items, %v", last-10, len(items), err)
	}
	for _, i := range []int{0, 1, 17, 49} {
		items, _, err := r.store.History("d", "k", HistoryQuery{Since: ats[i]}, last)
		if err != nil || len(items) != 50-i || string(items[0].Value) != fmt.Sprint(i) {
			t.Fatalf("since the write %d: %d items starting %+v, %v", i, len(items), items, err)
		}
	}
	items, _, _ = r.store.History("d", "k", HistoryQuery{Since: ats[10], Until: ats[12]}, last)
	if len(items) != 3 {
		t.Fatalf("since/until over 3 writes: %+v", items)
	}
}
