package edge

import (
	"fmt"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/broker"
)

// Quotas of the differential test: small, so that random sequences
// reach them often.
var quotaFuzzOptions = QuotaOptions{Keys: 6, Bytes: 700, RateOps: 5}

// FuzzQuotaCounters runs a random sequence of device writes through the
// real write path (ingest, committer, Pebble on disk): puts of new and
// existing keys with values of many sizes, with and without ttl, deletes,
// batches touching one key several times, kv-topic messages, resent
// duplicates, invalid batches, writes over the rate and over the quotas,
// clock jumps and expiry sweeps, several writes per group commit. After
// every settle point each device's kept counters must equal a recount of
// its records (the function a restore and an upgrade use), and no device
// may hold more than its quotas; the same after a restart.
func FuzzQuotaCounters(f *testing.F) {
	for _, seed := range [][]byte{
		{0, 1, 40, 0, 6},                         // one put, settle
		{0, 3, 1, 90, 0, 2, 95, 3, 100, 0, 6},    // a batch of three, settle
		{0, 1, 1, 60, 1, 7, 3, 7, 3, 0, 1, 0, 6}, // a put with a ttl, expiry, a put again
		{2, 3, 0x81, 2, 10, 0x83, 6, 4, 6},       // deletes in a batch, a resend
		{0, 1, 2, 50, 0, 0, 1, 3, 50, 0, 0, 1, 4, 50, 0, 0, 1, 5, 50, 0, 0, 1, 6, 50, 0, 0, 1, 7, 50, 0, 6}, // to the key quota
		{0x80, 1, 1, 255, 0, 0x81, 1, 2, 255, 0, 0x82, 1, 3, 255, 0, 6, 5, 6},                               // the byte quota, an invalid batch
		{3, 9, 20, 3, 0x89, 6, 0x83, 0x81, 6},                                                               // kv-topic put and delete
		{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 7, 3, 0, 0, 6},                                  // over the rate, then refilled
		{0, 2, 1, 80, 1, 1, 200, 1, 6, 7, 1, 7, 2, 7, 3, 0, 2, 1, 10, 0, 0x81, 6},                           // overwrite with ttl, expiry, recreate and delete in one batch
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 512 {
			return // long inputs test nothing more, only slower
		}
		runQuotaSequence(t, data)
	})
}

func runQuotaSequence(t *testing.T, data []byte) {
	dir := t.TempDir()
	var clock atomic.Int64
	clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	now := func() time.Time { return time.UnixMilli(clock.Load()) }
	store, c, in := openQuotaRig(t, dir, now)
	defer func() {
		if store != nil {
			in.close()
			c.close()
			_ = store.Close()
		}
	}()

	cur := 0
	next := func() byte {
		if cur >= len(data) {
			return 0
		}
		cur++
		return data[cur-1]
	}
	devices := [2]string{"d0", "d1"}
	seqs := map[string]uint64{}
	last := map[string][]byte{} // each device's last batch, to resend
	answers := make(chan error, 1024)
	pending := 0
	submit := func(w broker.Write) {
		pending++
		in.Submit(w, func(r broker.Result) {
			if r.Err != nil && iotkv.CodeOf(r.Err) == iotkv.CodeInternal {
				answers <- fmt.Errorf("%s: %w", w.Payload, r.Err)
				return
			}
			answers <- nil
		})
	}
	settle := func(step int) {
		for ; pending > 0; pending-- {
			if err := <-answers; err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		}
		checkQuotaCounters(t, store, fmt.Sprintf("step %d", step))
	}
	sweep := &sweeper{c: c, store: store, log: discardLogger(), now: now, stop: make(chan struct{}), done: make(chan struct{})}

	for step := 0; cur < len(data); step++ {
		b := next()
		dev := devices[b>>7]
		switch b & 7 {
		case 0, 1, 2: // a batch of 1 to 4 ops
			seqs[dev]++
			var ops []string
			for range 1 + next()%4 {
				k := next()
				key := fmt.Sprintf("k%d", k&7)
				if k&0x80 != 0 {
					ops = append(ops, fmt.Sprintf(`{"op":"del","key":%q}`, key))
					continue
				}
				op := fmt.Sprintf(`{"op":"put","key":%q,"value":"%s"`, key, strings.Repeat("v", int(next())))
				if ttl := next(); ttl&3 == 1 {
					op += fmt.Sprintf(`,"ttl":%d`, 1+ttl>>6)
				}
				ops = append(ops, op+"}")
			}
			p := fmt.Appendf(nil, `{"seq":%d,"ops":[%s]}`, seqs[dev], strings.Join(ops, ","))
			last[dev] = p
			submit(broker.Write{Device: dev, Topic: iotkv.DeviceTopic{Device: dev, Kind: iotkv.TopicBatch}, Payload: p})
		case 3: // a kv-topic message: a put, or a delete when empty
			k := next()
			var v []byte
			if k&0x80 == 0 {
				v = fmt.Appendf(nil, "%d", int(k)*1000)
			}
			submit(broker.Write{Device: dev, Topic: iotkv.DeviceTopic{Device: dev, Kind: iotkv.TopicKV, Key: fmt.Sprintf("k%d", k&7)}, Payload: v})
		case 4: // resend the last batch: a duplicate, or refused again
			if p := last[dev]; p != nil {
				submit(broker.Write{Device: dev, Topic: iotkv.DeviceTopic{Device: dev, Kind: iotkv.TopicBatch}, Payload: p})
			}
		case 5: // an invalid batch under a new seq
			seqs[dev]++
			p := fmt.Appendf(nil, `{"seq":%d,"ops":[]}`, seqs[dev])
			submit(broker.Write{Device: dev, Topic: iotkv.DeviceTopic{Device: dev, Kind: iotkv.TopicBatch}, Payload: p})
		case 6:
			settle(step)
		case 7: // the clock jumps 0 to 3 s; the sweeper deletes what expired
			settle(step)
			clock.Add(int64(next()&3) * 1000)
			if _, err := sweep.sweep(); err != nil {
				t.Fatalf("step %d: sweep: %v", step, err)
			}
			checkQuotaCounters(t, store, fmt.Sprintf("step %d, after the sweep", step))
		}
	}
	settle(len(data))
	before, err := storedUsage(store)
	if err != nil {
		t.Fatal(err)
	}
	in.close()
	c.close()
	err = store.Close()
	store = nil
	if err != nil {
		t.Fatal(err)
	}
	store, c, in = openQuotaRig(t, dir, now)
	after, err := storedUsage(store)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(before, after) {
		t.Fatalf("the counters changed across a restart: %v, then %v", before, after)
	}
	checkQuotaCounters(t, store, "after a restart")
}

func openQuotaRig(t *testing.T, dir string, now func() time.Time) (*Store, *committer, *ingest) {
	t.Helper()
	store, err := OpenStore(dir, StoreOptions{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := newCommitter(store, discardLogger(), prometheus.NewRegistry(), quotaFuzzOptions, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.now = now // read by the loop after each submit: ordered by the channel
	in := newIngest(c, iotkv.Limits{})
	in.close() // refusals are answered at once: the sequence is about counts, not pacing
	return store, c, in
}

// checkQuotaCounters compares the counters the store keeps with a recount
// of its records, and both with the quotas.
func checkQuotaCounters(t *testing.T, store *Store, when string) {
	t.Helper()
	stored, err := storedUsage(store)
	if err != nil {
		t.Fatal(err)
	}
	counts, err := store.countUsage()
	if err != nil {
		t.Fatal(err)
	}
	counted := map[string][2]int64{}
	for d, u := range counts {
		counted[d] = [2]int64{u.keys, u.bytes}
	}
	if !maps.Equal(stored, counted) {
		t.Fatalf("%s: kept counters %v, a recount of the store %v", when, stored, counted)
	}
	for d, u := range counted {
		if u[0] > quotaFuzzOptions.Keys || u[1] > quotaFuzzOptions.Bytes {
			t.Fatalf("%s: device %s holds %d keys, %d bytes: over its quotas of %d keys, %d bytes", when, d, u[0], u[1], quotaFuzzOptions.Keys, quotaFuzzOptions.Bytes)
		}
	}
}
