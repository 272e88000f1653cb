package master

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// With --max-backup-lag the edge holds its writers while the master is
// behind but progressing (a master on S3 confirms once per flush, here
// every second, far above the 200 ms bound), never while it is stuck (S3
// down): then writes go on and the master catches up afterwards. Nothing
// acknowledged is lost either way.
func TestMaxBackupLagHoldsWritersForASlowMasterNotAStuckOne(t *testing.T) {
	s3 := testenv.StartS3(t)
	r := newRig(t)
	ereg := prometheus.NewRegistry()
	e1 := r.startEdge("e1", "", "", func(o *edge.Options) {
		o.Registry = ereg
		o.Backup.MaxLag = 200 * time.Millisecond
	})
	st := openStore(t, s3, "maxlag")
	m := r.startS3Master([]*edge.Edge{e1}, st, "master", func(o *Options) { o.FlushInterval = time.Second })
	waitFor(t, 10*time.Second, "the master following", func() bool { return len(m.Status()) == 1 && m.Status()[0].Connected })

	const held = "iotkv_backup_lag_wait_seconds_total"
	// Batches spread over more than one flush interval.
	for i := range 15 {
		r.publishBatches(e1, 1+4*i, 4, 2, "a")
		time.Sleep(100 * time.Millisecond)
	}
	if w := gauge(ereg, held); w <= 0 {
		t.Fatalf("%s = %v after 60 batches over 1.5 s against a master confirming once a second: the edge never held its writers", held, w)
	}
	waitFor(t, 10*time.Second, "everything confirmed", func() bool {
		return m.Status()[0].Seq == e1.ChangeSeq() && gauge(ereg, "iotkv_backup_confirmed_seq") == float64(e1.ChangeSeq())
	})

	// A stuck master: the batches still go through (publishBatches gives
	// each 10 s), held at most until the gate sees that nothing moves.
	s3.Stop()
	before := gauge(ereg, held)
	r.publishBatches(e1, 61, 20, 2, "b")
	if w := gauge(ereg, held) - before; w > 5 {
		t.Errorf("the edge held its writers %.1f s in all while the master could not store anything", w)
	}
	s3.Start()
	// Writes go on while the master catches up with the outage's backlog.
	r.publishBatches(e1, 81, 10, 2, "c")
	want := r.edgeState(e1, "d1")
	waitFor(t, 30*time.Second, "catch-up after the outage", func() bool {
		return m.Status()[0].Seq == e1.ChangeSeq() && gauge(ereg, "iotkv_backup_confirmed_seq") == float64(e1.ChangeSeq())
	})
	got, _, _ := restoreFromS3(t, st, "e1")
	if !equalState(got, want) {
		t.Fatalf("restored state differs: %s", firstDiff(got, want))
	}
}
