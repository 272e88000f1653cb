package device

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/iotkv/iotkv"
)

func openTestQueue(t *testing.T, dir string, max int64) *queue {
	t.Helper()
	q, err := openQueue(dir, max, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func put(t *testing.T, q *queue, key, value string) {
	t.Helper()
	lsn, err := q.appendOp(iotkv.Op{Op: iotkv.OpPut, Key: key, Value: json.RawMessage(value)})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.waitDurable(lsn); err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, q *queue, key string) {
	t.Helper()
	lsn, err := q.appendOp(iotkv.Op{Op: iotkv.OpDel, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.waitDurable(lsn); err != nil {
		t.Fatal(err)
	}
}

// ops lists the live queue as "seq:op key=value" (seq 0: not in a batch).
func ops(q *queue) []string {
	var out []string
	for _, b := range q.batches {
		for _, o := range b.ops {
			out = append(out, fmt.Sprintf("%d:%s", b.seq, o.json))
		}
	}
	for _, o := range q.pending {
		if !o.dead {
			out = append(out, fmt.Sprintf("0:%s", o.json))
		}
	}
	return out
}

func TestCoalescingKeepsTheFinalStateOfEachKey(t *testing.T) {
	dir := t.TempDir()
	q := openTestQueue(t, dir, 1<<20)
	put(t, q, "a", "1")
	put(t, q, "b", "1")
	put(t, q, "a", "2") // put 1, put 2 -> put 2
	del(t, q, "b")      // put, del -> del
	put(t, q, "c", "1")
	want := []string{`0:{"op":"put","key":"a","value":2}`, `0:{"op":"del","key":"b"}`, `0:{"op":"put","key":"c","value":1}`}
	if got := ops(q); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("queue = %v\nwant %v", got, want)
	}
	if q.counters.coalesced != 2 || q.liveOps != 3 {
		t.Fatalf("coalesced %d live %d", q.counters.coalesced, q.liveOps)
	}
	// Ops in a batch are never touched: a later put on "a" stays separate.
	q.ack(0) // the edge has no seq for us: batches may form
	b, lsn := q.cut(10, 1<<20)
	if err := q.waitDurable(lsn); err != nil || len(b.ops) != 3 {
		t.Fatalf("cut: %v, %d ops", err, len(b.ops))
	}
	put(t, q, "a", "3")
	want = append(want, `0:{"op":"put","key":"a","value":3}`)
	for i := range 3 {
		want[i] = "1" + want[i][1:]
	}
	if got := ops(q); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("queue = %v\nwant %v", got, want)
	}
	// Replay rebuilds the same queue.
	if err := q.close(); err != nil {
		t.Fatal(err)
	}
	q2 := openTestQueue(t, dir, 1<<20)
	defer q2.close()
	if got := ops(q2); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after reopen: %v\nwant %v", got, want)
	}
	if q2.nextSeq != 2 || !q2.synced {
		t.Fatalf("after reopen: next seq %d synced %v", q2.nextSeq, q2.synced)
	}
}

func TestCutRespectsOpAndByteLimits(t *testing.T) {
	q := openTestQueue(t, t.TempDir(), 1<<20)
	defer q.close()
	q.ack(0) // the edge has no seq for us: batches may form
	for i := range 25 {
		put(t, q, fmt.Sprintf("k%02d", i), `"0123456789"`)
	}
	b, _ := q.cut(10, 1<<20)
	if len(b.ops) != 10 || b.seq != 1 {
		t.Fatalf("op limit: %d ops seq %d", len(b.ops), b.seq)
	}
	// Each op is ~47 bytes of JSON: 200 bytes hold three after the overhead.
	b, _ = q.cut(100, batchOverhead+200)
	if len(b.ops) != 4 || len(b.payload()) > batchOverhead+200 {
		t.Fatalf("byte limit: %d ops, %d bytes", len(b.ops), len(b.payload()))
	}
	var parsed iotkv.Batch
	if err := json.Unmarshal(b.payload(), &parsed); err != nil || parsed.Seq != 2 || len(parsed.Ops) != 4 {
		t.Fatalf("payload %s: %v", b.payload(), err)
	}
	// One op bigger than the byte limit still goes, alone.
	b, _ = q.cut(100, 10)
	if len(b.ops) != 1 {
		t.Fatalf("oversized op: %d ops", len(b.ops))
	}
}

func TestQueueFullRefusesAndCoalescingFreesRoom(t *testing.T) {
	q := openTestQueue(t, t.TempDir(), 300)
	defer q.close()
	var err error
	n := 0
	for ; n < 100; n++ {
		if _, err = q.appendOp(iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("k%d", n), Value: json.RawMessage(`"xxxxxxxxxx"`)}); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrQueueFull) || n == 0 {
		t.Fatalf("after %d puts: err = %v, want ErrQueueFull", n, err)
	}
	if q.liveOps != n {
		t.Fatalf("%d ops queued, want %d: nothing may be dropped", q.liveOps, n)
	}
	// A put that replaces a pending op on its key needs no new room.
	if _, err := q.appendOp(iotkv.Op{Op: iotkv.OpPut, Key: "k0", Value: json.RawMessage(`"yyyyyyyyyy"`)}); err != nil {
		t.Fatalf("replacing put: %v", err)
	}
	// Acks free room.
	q.ack(0) // the edge has no seq for us: batches may form
	b, _ := q.cut(100, 1<<20)
	q.ack(b.seq)
	if _, err := q.appendOp(iotkv.Op{Op: iotkv.OpPut, Key: "new", Value: json.RawMessage(`1`)}); err != nil {
		t.Fatalf("after ack: %v", err)
	}
}

func TestTornTailIsCutOff(t *testing.T) {
	dir := t.TempDir()
	q := openTestQueue(t, dir, 1<<20)
	put(t, q, "a", "1")
	put(t, q, "b", "2")
	if err := q.close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, logName)
	data, _ := os.ReadFile(path)
	// A crash in the middle of the third record's write.
	third := appendRecord(nil, recOp, (&op{id: 3, key: "c", value: json.RawMessage("3")}).body())
	if err := os.WriteFile(path, append(data, third[:len(third)-2]...), 0o600); err != nil {
		t.Fatal(err)
	}
	q = openTestQueue(t, dir, 1<<20)
	if got := ops(q); len(got) != 2 {
		t.Fatalf("after a torn write: %v", got)
	}
	put(t, q, "d", "4") // appends after the cut, not after the garbage
	q.close()
	q = openTestQueue(t, dir, 1<<20)
	defer q.close()
	if got := ops(q); len(got) != 3 || got[2] != `0:{"op":"put","key":"d","value":4}` {
		t.Fatalf("after reopen: %v", got)
	}
}

func TestSyncRenumbersWhenTheEdgeIsAhead(t *testing.T) {
	q := openTestQueue(t, t.TempDir(), 1<<20)
	defer q.close()
	put(t, q, "a", "1")
	if b, _ := q.cut(10, 1<<20); b != nil {
		t.Fatal("a queue that never learned the edge's seq formed a batch")
	}
	// The edge has applied seq 57 from an earlier queue dir.
	q.ack(57)
	b, _ := q.cut(10, 1<<20)
	if b == nil || b.seq != 58 {
		t.Fatalf("first batch after sync: %+v", b)
	}
	put(t, q, "b", "2")
	b2, _ := q.cut(10, 1<<20)
	// A restored device: the edge says 100 while batches 58 and 59 wait.
	q.ack(100)
	if b.seq != 101 || b2.seq != 102 || q.nextSeq != 103 {
		t.Fatalf("renumbered: %d %d next %d", b.seq, b2.seq, q.nextSeq)
	}
	q.ack(101)
	if len(q.batches) != 1 || q.batches[0] != b2 {
		t.Fatalf("after ack 101: %d batches", len(q.batches))
	}
}

func TestCompactionKeepsLiveState(t *testing.T) {
	dir := t.TempDir()
	q := openTestQueue(t, dir, 64<<20)
	q.ack(0) // the edge has no seq for us: batches may form
	big := fmt.Sprintf(`"%0900d"`, 0)
	for i := range 3000 {
		if _, err := q.appendOp(iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("k%d", i%50), Value: json.RawMessage(big)}); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			b, lsn := q.cut(1000, 1<<20)
			if err := q.waitDurable(lsn); err != nil {
				t.Fatal(err)
			}
			q.ack(b.seq)
		}
	}
	put(t, q, "last", "1")
	b, _ := q.cut(1, 1<<20)
	want := ops(q)
	q.close()
	st, _ := os.Stat(filepath.Join(dir, logName))
	if st.Size() > 3<<20 {
		t.Fatalf("log is %d bytes after 2.7 MB of writes, all but one acknowledged: no compaction", st.Size())
	}
	q = openTestQueue(t, dir, 64<<20)
	defer q.close()
	if got := ops(q); fmt.Sprint(got) != fmt.Sprint(want) || q.nextSeq != b.seq+1 {
		t.Fatalf("after compaction and reopen: %d ops, next seq %d; want %d ops, %d", len(got), q.nextSeq, len(want), b.seq+1)
	}
}
