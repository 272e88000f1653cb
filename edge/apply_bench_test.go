package edge

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
)

// BenchmarkApply measures the edge's write path, the group committer,
// against raw Pebble in the same run: 50 concurrent publishers, each
// sending batches of 100 puts and waiting for each to be durable before the
// next (one batch in flight per publisher, as a device waiting for its
// PUBACK). The pebble sub-benchmark is the baseline: the same 50 writers
// each committing their own synced Pebble batch of the same 100 keys and
// values, so Pebble's WAL groups their fsyncs. One op of b.N is one batch.
//
//	go test -run '^$' -bench BenchmarkApply -benchtime 3s ./edge/
//
// The committer sub-benchmark reports its rate as a ratio of the baselines
// measured just before it (x-pebble: the raw baseline the issue names, with
// Pebble's default options; x-pebble-memtable-32mib: with the store's
// memtable size; x-pebble-with-change-log: the record and change log
// bytes the committer writes, same options; x-committer-no-history: the
// committer without the history index).
func BenchmarkApply(b *testing.B) {
	raw := func(o *pebble.Options) func(b *testing.B) float64 {
		return func(b *testing.B) float64 {
			db, err := pebble.Open(b.TempDir(), o)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			return drive(b, func(device string, seq uint64, ops []iotkv.Op) error {
				batch := db.NewBatch()
				defer batch.Close()
				for _, op := range ops {
					v, _ := json.Marshal(storedRecord{Value: op.Value, UpdatedAt: time.Now().UnixMilli(), Seq: seq})
					if err := batch.Set(recordKey(device, op.Key), v, nil); err != nil {
						return err
					}
				}
				return batch.Commit(pebble.Sync)
			})
		}
	}
	// Raw Pebble as it comes (the baseline the issue names), and with the
	// store's memtable size, so the ratio is not only the tuning.
	var baseline, sameOptions float64
	b.Run("pebble", func(b *testing.B) {
		baseline = raw(&pebble.Options{Logger: pebbleLogger{discardLogger()}})(b)
	})
	b.Run("pebble-memtable-32mib", func(b *testing.B) {
		sameOptions = raw(&pebble.Options{Logger: pebbleLogger{discardLogger()}, MemTableSize: DefaultMemTableSize})(b)
	})
	// The same writes as the committer's: each put also appends its entry
	// to the change log (the backup stream's source), so this baseline
	// tells the cost of the extra bytes apart from that of the committer.
	var sameBytes float64
	b.Run("pebble-with-change-log", func(b *testing.B) {
		db, err := pebble.Open(b.TempDir(), &pebble.Options{Logger: pebbleLogger{discardLogger()}, MemTableSize: DefaultMemTableSize})
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		var cseq atomic.Uint64
		sameBytes = drive(b, func(device string, seq uint64, ops []iotkv.Op) error {
			batch := db.NewBatch()
			defer batch.Close()
			now := time.Now().UnixMilli()
			for _, op := range ops {
				cs := cseq.Add(1)
				v, _ := json.Marshal(storedRecord{Value: op.Value, UpdatedAt: now, Seq: seq, ChangeSeq: cs})
				_ = batch.Set(recordKey(device, op.Key), v, nil)
				ch, _ := json.Marshal(Change{Seq: cs, Device: device, Key: op.Key, Op: op.Op, Value: op.Value, UpdatedAt: now, DeviceSeq: seq})
				_ = batch.Set(changeKey(cs), ch, nil)
			}
			return batch.Commit(pebble.Sync)
		})
	})
	// The committer without the history index (HistoryOptions.Off), so
	// the cost of history is measured in the same run.
	var noHistory float64
	committer := func(noHist bool) func(b *testing.B) float64 {
		return func(b *testing.B) float64 {
			store, err := OpenStore(b.TempDir(), StoreOptions{Logger: discardLogger(), NoHistory: noHist})
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			var groups atomic.Int64
			c, err := newCommitter(store, discardLogger(), prometheus.NewRegistry(), QuotaOptions{Keys: -1, Bytes: -1, RateOps: -1}, func(committed) { groups.Add(1) }, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer c.close()
			rate := drive(b, func(device string, seq uint64, ops []iotkv.Op) error {
				res := make(chan commitResult, 1)
				c.submit(&writeReq{device: device, seq: seq, ops: ops, done: func(r commitResult) { res <- r }})
				return (<-res).err
			})
			if n := groups.Load(); n > 0 {
				b.ReportMetric(float64(b.N)/float64(n), "batches/fsync")
			}
			return rate
		}
	}
	b.Run("committer-no-history", func(b *testing.B) { noHistory = committer(true)(b) })
	b.Run("committer", func(b *testing.B) {
		rate := committer(false)(b)
		if noHistory > 0 {
			b.ReportMetric(rate/noHistory, "x-committer-no-history")
		}
		if baseline > 0 {
			b.ReportMetric(rate/baseline, "x-pebble")
		}
		if sameOptions > 0 {
			b.ReportMetric(rate/sameOptions, "x-pebble-memtable-32mib")
		}
		if sameBytes > 0 {
			b.ReportMetric(rate/sameBytes, "x-pebble-with-change-log")
		}
	})
}

const (
	benchPublishers = 50
	benchOps        = 100
)

// drive runs b.N batches from benchPublishers goroutines through apply,
// reports key-ops/s and returns it.
func drive(b *testing.B, apply func(device string, seq uint64, ops []iotkv.Op) error) float64 {
	b.Helper()
	// Batches are made before the clock starts: the benchmark measures the
	// write path, not JSON encoding of the test's input.
	perPub := (b.N + benchPublishers - 1) / benchPublishers
	work := make([][][]iotkv.Op, benchPublishers)
	for p := range work {
		work[p] = make([][]iotkv.Op, perPub)
		for i := range perPub {
			ops := make([]iotkv.Op, benchOps)
			for j := range ops {
				ops[j] = iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("sensor/%d/%d", i%50, j),
					Value: json.RawMessage(fmt.Sprintf(`{"t":%d.5,"i":%d}`, j, i))}
			}
			work[p][i] = ops
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, benchPublishers)
	for p := range benchPublishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			device := fmt.Sprintf("dev-%02d", p)
			for i, ops := range work[p] {
				if err := apply(device, uint64(i+1), ops); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	rate := float64(perPub*benchPublishers*benchOps) / elapsed.Seconds()
	b.ReportMetric(rate, "key-ops/s")
	return rate
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
