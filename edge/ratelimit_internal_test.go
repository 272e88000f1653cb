package edge

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/broker"
)

// Every attempt is charged, refused or not, into debt down to one full
// bucket; an empty bucket refuses unread attempts at the device's last
// batch size; a device that stops is back within the bucket's time.
func TestRateLimiterChargesRefusedAttempts(t *testing.T) {
	l := newRateLimiter(10) // a bucket of 100
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if ok, _ := l.take("d", 100, at); !ok {
		t.Fatal("the full bucket refused its size")
	}
	ok, wait := l.take("d", 30, at)
	if ok || wait != 3100*time.Millisecond { // 30 in debt: 3.1 s to hold 1
		t.Fatalf("over the bucket: ok %v, wait %v; want refused, 3.1s", ok, wait)
	}
	for range 10 { // a spinning device digs itself in, down to -100
		if ok, _ := l.open("d", 30, at); ok {
			t.Fatal("an attempt in debt was let through")
		}
	}
	if b := l.buckets["d"]; b.tokens != -100 {
		t.Fatalf("debt %v, want the floor -100", b.tokens)
	}
	if ok, _ := l.open("d", 1, at.Add(10*time.Second)); ok {
		t.Fatal("10 s after the deepest debt the bucket is not back above 0 yet")
	}
	if ok, _ := l.take("d", 100, at.Add(30*time.Second)); !ok {
		t.Fatal("after 2 bucket times a device that stopped is not back to a full bucket")
	}
	if ok, _ := l.take("other", 100, at); !ok {
		t.Fatal("another device shares the bucket")
	}
	if ok, _ := newRateLimiter(-1).take("d", 1<<30, at); !ok {
		t.Fatal("no limit refused")
	}
}

// Writes over the rate are refused by ingest without the committer: an
// unread batch (here one that would not even decode) answers
// rate_limited, answers keep the device's order, and the refused seqs are
// in the device's refusals once its next write is applied.
func TestIngestRefusesOverRateUnreadAndInOrder(t *testing.T) {
	store, err := OpenStore(t.TempDir(), StoreOptions{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := newCommitter(store, discardLogger(), prometheus.NewRegistry(), QuotaOptions{Keys: -1, Bytes: -1, RateOps: 1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	in, err := newIngest(c, iotkv.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.close()
		c.close()
		_ = store.Close()
	})
	in.close() // held refusals answer at once: this test is about what, not when
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return clock }

	type answer struct {
		seq  uint64
		code string
	}
	answers := make(chan answer, 16)
	submit := func(payload string) {
		in.Submit(broker.Write{Device: "d", Topic: iotkv.DeviceTopic{Device: "d", Kind: iotkv.TopicBatch}, Payload: []byte(payload)},
			func(r broker.Result) {
				a := answer{seq: r.Seq}
				if r.Err != nil {
					a.code = iotkv.CodeOf(r.Err)
				}
				answers <- a
			})
	}
	batch := func(seq, n int) string {
		ops := make([]string, n)
		for i := range ops {
			ops[i] = fmt.Sprintf(`{"op":"put","key":"k%d","value":%d}`, i, seq)
		}
		return fmt.Sprintf(`{"seq":%d,"ops":[%s]}`, seq, strings.Join(ops, ","))
	}
	// Submitted at once: the refusals need no commit, yet they are
	// answered after batch 1's commit, in the device's order; the resend
	// of seq 1 (its original still in the commit) is the committer's to
	// answer, not refused.
	submit(batch(1, 10))              // the whole bucket: applied
	submit(batch(2, 5))               // decoded, over the rate: refused, charged 5
	submit(`{"seq":3,"ops":[{"op":"`) // bucket in debt: refused unread
	submit(batch(1, 10))              // a resent duplicate: acknowledged, not charged
	var got []answer
	for range 4 {
		got = append(got, <-answers)
	}
	want := []answer{{1, ""}, {2, iotkv.CodeRateLimited}, {3, iotkv.CodeRateLimited}, {1, ""}}
	if !slices.Equal(got, want) {
		t.Fatalf("answers %v, want %v", got, want)
	}
	clock = clock.Add(time.Minute)
	submit(batch(4, 1))
	if a := <-answers; a != (answer{4, ""}) {
		t.Fatalf("after a minute: %v, want seq 4 applied", a)
	}
	// Invalid batches are charged too: ten of them empty the bucket.
	clock = clock.Add(time.Minute)
	for seq := 5; seq < 15; seq++ {
		submit(fmt.Sprintf(`{"seq":%d,"ops":[]}`, seq))
		if a := <-answers; a != (answer{uint64(seq), iotkv.CodeInvalidBatch}) {
			t.Fatalf("an invalid batch: %v", a)
		}
	}
	submit(batch(15, 1))
	if a := <-answers; a != (answer{15, iotkv.CodeRateLimited}) {
		t.Fatalf("after ten invalid batches: %v, want rate_limited", a)
	}
	devs, err := store.Devices()
	if err != nil {
		t.Fatal(err)
	}
	wantRefused := []iotkv.Refusal{{Seq: 2, Code: iotkv.CodeRateLimited}, {Seq: 3, Code: iotkv.CodeRateLimited}}
	for seq := range uint64(10) {
		wantRefused = append(wantRefused, iotkv.Refusal{Seq: 5 + seq, Code: iotkv.CodeInvalidBatch})
	}
	if len(devs) != 1 || devs[0].LastSeq != 4 || !slices.Equal(devs[0].Refused, wantRefused) {
		t.Fatalf("device record %+v, want last seq 4 and refusals %v", devs, wantRefused)
	}
}
