package edge

import (
	"fmt"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/broker"
)

// Quotas of the differential test: small, so that random sequences
// reach them often.
var quotaFuzzOptions = QuotaOptions{Keys: 6, Bytes: 700, RateOps: 5}

// FuzzQuotaCounters runs a random sequence of device writes through the
// real write path (ingest, committer, Pebble): puts of new and
// existing keys with values of many sizes, with and without ttl, deletes,
// batches touching one key several times, kv-topic messages, resent
// duplicates, invalid batches, writes over the rate and over the quotas,
// clock jumps and expiry sweeps, several writes per group commit. After
// every settle point each device's kept counters must equal a recount of
// its records (the function a restore and an upgrade use), and no device
// may hold more than its quotas; the same after a restart.
func FuzzQuotaCounters(f *testing.F) {
	for _, seed := range quotaSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 512 {
			return // long inputs test nothing more, only slower
		}
		runQuotaSequence(t, data)
	})
}

// quotaSeq builds inputs of FuzzQuotaCounters step by step, in the
// encoding runQuotaSequence reads.
type quotaSeq []byte

type qop struct {
	key  byte // 0..7
	del  bool
	size byte // value length
	ttl  byte // seconds, 0: none (at most 4)
}

func (s quotaSeq) batch(dev byte, ops ...qop) quotaSeq {
	s = append(s, dev<<7, byte(len(ops)-1))
	for _, o := range ops {
		if o.del {
			s = append(s, 0x80|o.key)
			continue
		}
		ttl := byte(0)
		if o.ttl > 0 {
			ttl = 1 | (o.ttl-1)<<6
		}
		s = append(s, o.key, o.size, ttl)
	}
	return s
}
func (s quotaSeq) kv(dev, key byte, del bool) quotaSeq {
	if del {
		key |= 0x80
	}
	return append(s, dev<<7|3, key)
}
func (s quotaSeq) resend(dev byte) quotaSeq  { return append(s, dev<<7|4) }
func (s quotaSeq) invalid(dev byte) quotaSeq { return append(s, dev<<7|5) }
func (s quotaSeq) settle() quotaSeq          { return append(s, 6) }
func (s quotaSeq) later(sec byte) quotaSeq   { return append(s, 7, sec) }

func qput(key, size byte) qop         { return qop{key: key, size: size} }
func qputTTL(key, size, ttl byte) qop { return qop{key: key, size: size, ttl: ttl} }
func qdel(key byte) qop               { return qop{key: key, del: true} }

// quotaSeeds reach each path: the key quota, the byte quota, the rate,
// expiry (swept, overwritten and deleted before it), one key several
// times in a batch and in a group, duplicates, invalid batches, kv-topic
// messages, two devices.
func quotaSeeds() [][]byte {
	var keyQuota, byteQuota, rate, ttl, mixed quotaSeq
	keyQuota = keyQuota.batch(0, qput(0, 5), qput(1, 5), qput(2, 5), qput(3, 5)).
		batch(0, qput(4, 5), qput(5, 5), qput(6, 5)). // the 7th key: refused whole
		settle().batch(0, qput(4, 5), qput(5, 5)).    // exactly 6
		batch(0, qdel(0), qput(6, 5)).                // a delete makes room
		batch(0, qput(7, 5)).settle().                // refused
		kv(0, 7, false).kv(0, 1, true).kv(0, 7, false).settle()
	byteQuota = byteQuota.batch(1, qput(0, 200), qput(1, 200)).
		batch(1, qput(2, 200)). // over 700 bytes: refused
		batch(1, qput(1, 10), qput(2, 200)).settle().
		batch(1, qput(0, 255)). // grows an existing key past the quota
		batch(1, qput(0, 1)).settle()
	for range 14 { // 56 ops: over the bucket of 50
		rate = rate.batch(0, qput(0, 1), qput(1, 2), qput(2, 3), qput(3, 4))
	}
	rate = rate.settle().invalid(0).resend(0).later(3).
		batch(0, qput(4, 9)).settle().resend(0).settle()
	ttl = ttl.batch(0, qputTTL(0, 30, 1), qputTTL(1, 30, 2), qputTTL(2, 30, 4), qput(3, 30)).settle().
		batch(0, qput(1, 40)). // permanent again
		batch(0, qdel(2)).later(1).later(2).
		batch(0, qputTTL(2, 30, 1), qputTTL(2, 60, 1)).later(3).
		batch(0, qputTTL(5, 30, 1)).settle().later(0).settle()
	mixed = mixed.batch(0, qput(0, 10), qput(0, 100), qdel(0), qput(0, 20)).
		batch(1, qput(0, 10), qdel(0)).
		batch(0, qput(0, 30)).resend(0).resend(1).invalid(1).
		batch(1, qputTTL(1, 50, 1), qput(2, 50)).kv(1, 2, true).
		batch(0, qdel(0), qdel(1), qput(2, 250), qput(3, 250)).settle().later(2).
		batch(0, qput(2, 1), qput(3, 1), qput(4, 250)).settle()
	return [][]byte{keyQuota, byteQuota, rate, ttl, mixed}
}

func runQuotaSequence(t *testing.T, data []byte) {
	// Real Pebble on a file system in memory: the sequence is about
	// arithmetic, not disks (TestQuotaCountersExactAfterKill9 in
	// cmd/iotkv is the disk's), and fsyncs would make fuzzing crawl.
	fs, dir := vfs.NewMem(), "/data"
	var clock atomic.Int64
	clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	now := func() time.Time { return time.UnixMilli(clock.Load()) }
	store, c, in := openQuotaRig(t, fs, dir, now)
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
	store, c, in = openQuotaRig(t, fs, dir, now)
	after, err := storedUsage(store)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(before, after) {
		t.Fatalf("the counters changed across a restart: %v, then %v", before, after)
	}
	checkQuotaCounters(t, store, "after a restart")
}

func openQuotaRig(t *testing.T, fs vfs.FS, dir string, now func() time.Time) (*Store, *committer, *ingest) {
	t.Helper()
	store, err := OpenStore(dir, StoreOptions{FS: fs, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := newCommitter(store, discardLogger(), prometheus.NewRegistry(), quotaFuzzOptions, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.now = now // read by the loop after each submit: ordered by the channel
	in, err := newIngest(c, iotkv.Limits{})
	if err != nil {
		t.Fatal(err)
	}
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
