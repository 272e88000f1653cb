package master

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
	"github.com/iotkv/iotkv/s3store"
)

func openStore(t testing.TB, s3 *testenv.S3, prefix string) *s3store.Store {
	t.Helper()
	st, err := s3store.Open(s3store.Options{URL: s3.URL(prefix), Endpoint: s3.Endpoint, Creds: s3.Creds(), RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (r *rig) startS3Master(edges []*edge.Edge, st *s3store.Store, name string, mod func(*Options)) *Master {
	return r.startMaster(edges, func(o *Options) {
		o.DataDir, o.Store, o.Name = "", st, "master"
		o.Registry = prometheus.NewRegistry()
		o.FlushInterval = 200 * time.Millisecond
		o.SnapshotInterval = time.Second
		o.LeaseTTL = time.Second
		if mod != nil {
			mod(o)
		}
		_ = name
	})
}

// restoreFromS3 reads the state of edgeID from the store with no master.
func restoreFromS3(t testing.TB, st *s3store.Store, edgeID string) (map[string]kv, map[string]uint64, uint64) {
	t.Helper()
	var buf bytes.Buffer
	if _, err := st.WriteState(context.Background(), &buf, edgeID, ""); err != nil {
		t.Fatal(err)
	}
	h, got, devs := readDoc(t, &buf)
	return got, devs, h.Seq
}

func TestS3MasterUnderLoadRestoresWithNoMasterRunning(t *testing.T) {
	s3 := testenv.StartS3(t)
	r := newRig(t)
	data := filepath.Join(t.TempDir(), "e1")
	e1 := r.startEdge("e1", data, "", nil)
	st := openStore(t, s3, "fleet")
	m := r.startS3Master([]*edge.Edge{e1}, st, "master", nil)
	start := time.Now()
	r.publishBatches(e1, 1, 150, 5, "load")
	r.restPut(e1, "d2", "x", `{"via":"rest"}`)
	want := r.edgeState(e1, "d1", "d2")
	waitFor(t, 10*time.Second, "the master to store and confirm everything", func() bool {
		s := m.Status()[0]
		return s.Seq > 0 && s.Seq == e1.ChangeSeq() && s.Pending == 0
	})
	t.Logf("150 batches stored and confirmed %v after the first write", time.Since(start).Round(time.Millisecond))
	puts := counter(st.Metrics().Requests("put_segment", "ok"))
	t.Logf("segment PUTs: %v", puts)
	waitFor(t, 15*time.Second, "a snapshot at the end of the chain", func() bool {
		s := m.Status()[0]
		return s.SnapshotSeq == s.Seq
	})
	if k := m.Status()[0].Keys; k != len(want) {
		t.Fatalf("/v1/backups keys = %d, want the %d keys of the snapshot", k, len(want))
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, devs, _ := restoreFromS3(t, st, "e1")
	if !equalState(got, want) {
		t.Fatalf("restored state differs: %d keys, want %d; %s", len(got), len(want), firstDiff(got, want))
	}
	if devs["d1"] != 150 {
		t.Fatalf("d1 last seq = %d, want 150", devs["d1"])
	}
	// And the edge's own restore path, from a fresh data dir, no master.
	if err := e1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	restored := filepath.Join(t.TempDir(), "e1r")
	if err := edge.Restore(context.Background(), edge.RestoreOptions{ID: "e1", DataDir: restored,
		Source: func(ctx context.Context) (io.ReadCloser, error) { return st.OpenState(ctx, "e1"), nil }}); err != nil {
		t.Fatal(err)
	}
	e1b := r.startEdge("e1", restored, "", nil)
	if got := r.edgeState(e1b, "d1", "d2"); !equalState(got, want) {
		t.Fatalf("restored edge differs: %s", firstDiff(got, want))
	}
}

func TestS3OutageStopsConfirmationsAndCatchesUpAfter(t *testing.T) {
	s3 := testenv.StartS3(t)
	r := newRig(t)
	ereg := prometheus.NewRegistry()
	e1 := r.startEdge("e1", "", "", func(o *edge.Options) { o.Registry = ereg })
	st := openStore(t, s3, "outage")
	m := r.startS3Master([]*edge.Edge{e1}, st, "master", nil)
	r.publishBatches(e1, 1, 20, 2, "a")
	waitFor(t, 10*time.Second, "everything confirmed", func() bool {
		s := m.Status()[0]
		return s.Seq > 0 && s.Seq == e1.ChangeSeq() && gauge(ereg, "iotkv_backup_confirmed_seq") == float64(s.Seq)
	})
	ready := func() int {
		resp, err := http.Get("https://" + m.HTTPAddr() + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	_ = ready
	if err := m.Ready(); err != nil {
		t.Fatalf("not ready before the outage: %v", err)
	}
	confirmedBefore := gauge(ereg, "iotkv_backup_confirmed_seq")

	s3.Stop()
	r.publishBatches(e1, 21, 20, 2, "b")
	waitFor(t, 20*time.Second, "the master to see the new changes and turn unready", func() bool {
		s := m.Status()[0]
		return s.EdgeSeq > uint64(confirmedBefore) && m.Ready() != nil
	})
	// Everything new reached the master, which cannot store it: nothing
	// may be confirmed for as long as S3 is away.
	waitFor(t, 10*time.Second, "the new changes buffered", func() bool { return m.Status()[0].Pending > 0 })
	for i := 0; i < 2; i++ {
		if got := gauge(ereg, "iotkv_backup_confirmed_seq"); got != confirmedBefore {
			t.Fatalf("confirmed moved from %v to %v while S3 was down", confirmedBefore, got)
		}
		n := failures(st)
		waitFor(t, 10*time.Second, "another failed attempt", func() bool { return failures(st) > n })
	}
	s3.Start()
	want := r.edgeState(e1, "d1")
	waitFor(t, 20*time.Second, "catch-up after the outage", func() bool {
		s := m.Status()[0]
		return m.Ready() == nil && s.Seq == e1.ChangeSeq() && gauge(ereg, "iotkv_backup_confirmed_seq") == float64(s.Seq)
	})
	got, _, _ := restoreFromS3(t, st, "e1")
	if !equalState(got, want) {
		t.Fatalf("state after the outage differs: %s", firstDiff(got, want))
	}
}

func TestTwoS3MastersTakeOverWhenTheLeaseHolderDies(t *testing.T) {
	s3 := testenv.StartS3(t)
	r := newRig(t)
	ereg := prometheus.NewRegistry()
	e1 := r.startEdge("e1", "", "", func(o *edge.Options) { o.Registry = ereg })
	stA, stB := openStore(t, s3, "ha"), openStore(t, s3, "ha")
	mA := r.startS3Master([]*edge.Edge{e1}, stA, "a", func(o *Options) { o.crash = true })
	waitFor(t, 30*time.Second, "master A to hold the lease", func() bool { l := mA.Status()[0].Leader; return l != nil && *l })
	mB := r.startS3Master([]*edge.Edge{e1}, stB, "b", nil)
	r.publishBatches(e1, 1, 30, 3, "a")
	waitFor(t, 30*time.Second, "both masters at the edge's seq", func() bool {
		a, b := mA.Status()[0], mB.Status()[0]
		return a.Seq > 0 && a.Seq == e1.ChangeSeq() && b.Seq == a.Seq
	})
	if l := mB.Status()[0].Leader; l == nil || *l {
		t.Fatal("master B holds the lease while A is alive")
	}
	bPuts := counter(stB.Metrics().Requests("put_segment", "ok"))

	// A dies without a word: its lease stays in S3 until it expires.
	if err := mA.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	r.publishBatches(e1, 31, 30, 3, "b")
	waitFor(t, 30*time.Second, "master B to take the lease over", func() bool { l := mB.Status()[0].Leader; return l != nil && *l })
	t.Logf("takeover %v after the holder died (TTL 1s + margin 0.5s)", time.Since(died).Round(time.Millisecond))
	want := r.edgeState(e1, "d1")
	waitFor(t, 30*time.Second, "B to store and confirm everything", func() bool {
		b := mB.Status()[0]
		return b.Seq == e1.ChangeSeq() && gauge(ereg, "iotkv_backup_confirmed_seq") == float64(b.Seq)
	})
	if bPuts != 0 {
		t.Logf("B wrote %v segments while A was alive (grace fills)", bPuts)
	}
	got, _, _ := restoreFromS3(t, stB, "e1")
	if !equalState(got, want) {
		t.Fatalf("state after takeover differs: %s", firstDiff(got, want))
	}
}

func TestS3SteadyStateIsAboutOnePutPerSecondPerEdge(t *testing.T) {
	s3 := testenv.StartS3(t)
	r := newRig(t)
	e1 := r.startEdge("e1", "", "", nil)
	st := openStore(t, s3, "steady")
	m := r.startS3Master([]*edge.Edge{e1}, st, "master", func(o *Options) {
		o.FlushInterval, o.SnapshotInterval, o.LeaseTTL = time.Second, time.Hour, 10*time.Second
	})
	r.publishBatches(e1, 1, 1, 1, "warm")
	waitFor(t, 10*time.Second, "the first segment", func() bool { s := m.Status()[0]; return s.Seq > 0 && s.Seq == s.EdgeSeq })
	before := counter(st.Metrics().Requests("put_segment", "ok"))
	start := time.Now()
	c := r.pki.Connect(t, e1.MQTTAddr(), "d1")
	defer c.Disconnect(50)
	tick := time.NewTicker(50 * time.Millisecond) // a steady device: 20 batches/s
	defer tick.Stop()
	for seq := uint64(2); time.Since(start) < 5*time.Second; seq++ {
		<-tick.C
		payload := []byte(fmt.Sprintf(`{"seq":%d,"ops":[{"op":"put","key":"k%d","value":%d}]}`, seq, seq%10, seq))
		if tok := c.Publish(iotkv.BatchTopic("d1"), 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	elapsed := time.Since(start)
	puts := counter(st.Metrics().Requests("put_segment", "ok")) - before
	rate := puts / elapsed.Seconds()
	t.Logf("steady state: %.0f segment PUTs in %v = %.2f PUT/s per edge at --flush-interval 1s", puts, elapsed.Round(time.Millisecond), rate)
	if rate > 1.5 {
		t.Fatalf("%.2f PUT/s per edge, want about 1", rate)
	}
	waitFor(t, 10*time.Second, "the last changes confirmed", func() bool { s := m.Status()[0]; return s.Seq == s.EdgeSeq })
}

// failures counts the requests that did not reach S3.
func failures(st *s3store.Store) float64 {
	n := 0.0
	for _, k := range []string{"put_segment", "head_segment", "get_lease", "put_lease", "get_manifest", "put_manifest", "list"} {
		n += counter(st.Metrics().Requests(k, "error"))
	}
	return n
}

// TestS3RestoresFromZstdAndLegacySnapshotsAndRefusesACorruptOne: a master
// of an older kind writes plain .json snapshots; this one compacts them
// into .json.zst; the restore (the master's GET and the edge's own, with no
// master) reads a .json.zst plus the segments after it; a corrupt object
// fails both loudly.
func TestS3RestoresFromZstdAndLegacySnapshotsAndRefusesACorruptOne(t *testing.T) {
	s3 := testenv.StartS3(t)
	ctx := context.Background()
	r := newRig(t)
	e1 := r.startEdge("e1", "", "", nil)
	plain, err := s3store.Open(s3store.Options{URL: s3.URL("zst"), Endpoint: s3.Endpoint, Creds: s3.Creds(),
		RequestTimeout: 2 * time.Second, Compression: s3store.CompressNone})
	if err != nil {
		t.Fatal(err)
	}
	st := openStore(t, s3, "zst") // the default: zstd
	snapshotted := func(m *Master) func() bool {
		return func() bool {
			s := m.Status()[0]
			return s.Seq > 0 && s.Seq == e1.ChangeSeq() && s.Pending == 0 && s.SnapshotSeq == s.Seq
		}
	}
	manifest := func() s3store.Manifest {
		t.Helper()
		mf, err := st.Current(ctx, "e1")
		if err != nil {
			t.Fatal(err)
		}
		return mf
	}

	m1 := r.startS3Master([]*edge.Edge{e1}, plain, "old", nil)
	r.publishBatches(e1, 1, 30, 5, "a")
	waitFor(t, 20*time.Second, "a plain snapshot of everything", snapshotted(m1))
	if mf := manifest(); !strings.HasSuffix(mf.Snapshot, ".json") {
		t.Fatalf("--s3-compress none: manifest names %q", mf.Snapshot)
	}
	if err := m1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	m2 := r.startS3Master([]*edge.Edge{e1}, st, "new", nil)
	r.publishBatches(e1, 31, 30, 5, "b")
	waitFor(t, 20*time.Second, "a zstd snapshot on top of the plain one", snapshotted(m2))
	if mf := manifest(); !strings.HasSuffix(mf.Snapshot, ".json.zst") {
		t.Fatalf("after compaction by the default master: manifest names %q", mf.Snapshot)
	}
	if err := m2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// A master that does not compact leaves what comes next in segments.
	m3 := r.startS3Master([]*edge.Edge{e1}, st, "new", func(o *Options) { o.SnapshotInterval = time.Hour })
	r.publishBatches(e1, 61, 20, 5, "c")
	r.restPut(e1, "d2", "x", `{"via":"rest"}`)
	want := r.edgeState(e1, "d1", "d2")
	waitFor(t, 20*time.Second, "the changes after the snapshot stored", func() bool {
		s := m3.Status()[0]
		return s.Seq > 0 && s.Seq == e1.ChangeSeq() && s.Pending == 0
	})
	mf := manifest()
	if mf.SnapSeq >= m3.Status()[0].Seq {
		t.Fatalf("snapshot at %d, chain ends at %d: want segments after the snapshot", mf.SnapSeq, m3.Status()[0].Seq)
	}

	get := func() (int, []byte) {
		t.Helper()
		resp, err := r.pki.HTTPClient(t, "admin").Do(authGet(t, "https://"+m3.HTTPAddr()+"/v1/backups/e1", "admin"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	restoreTo := func(dir string) error {
		return edge.Restore(ctx, edge.RestoreOptions{ID: "e1", DataDir: dir,
			Source: func(ctx context.Context) (io.ReadCloser, error) { return st.OpenState(ctx, "e1"), nil }})
	}
	code, body := get()
	if code != http.StatusOK {
		t.Fatalf("GET /v1/backups/e1: %d %s", code, body)
	}
	if _, got, _ := readDoc(t, bytes.NewReader(body)); !equalState(got, want) {
		t.Fatalf("the master's restore from .json.zst plus segments differs: %s", firstDiff(got, want))
	}
	restored := filepath.Join(t.TempDir(), "e1r")
	if err := restoreTo(restored); err != nil {
		t.Fatal(err)
	}

	// Flip one byte of the snapshot object.
	c, err := minio.New(strings.TrimPrefix(s3.Endpoint, "http://"), &minio.Options{Creds: s3.Creds(), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	key := "zst/edges/e1/" + mf.Incarnation + "/" + mf.Snapshot
	obj, err := c.GetObject(ctx, s3.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	good, err := io.ReadAll(obj)
	obj.Close()
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0xff
	if _, err := c.PutObject(ctx, s3.Bucket, key, bytes.NewReader(bad), int64(len(bad)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if code, body := get(); code != http.StatusServiceUnavailable || !strings.Contains(string(body), "corrupt snapshot object") {
		t.Fatalf("GET over a corrupt snapshot: %d %s; want 503 naming the corrupt object", code, body)
	}
	failed := filepath.Join(t.TempDir(), "e1f")
	if err := restoreTo(failed); !errors.Is(err, s3store.ErrCorrupt) {
		t.Fatalf("edge restore over a corrupt snapshot: %v, want ErrCorrupt", err)
	}
	if _, err := os.Stat(failed); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed restore left %s: %v", failed, err)
	}

	if err := m3.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	e1b := r.startEdge("e1", restored, "", nil)
	if got := r.edgeState(e1b, "d1", "d2"); !equalState(got, want) {
		t.Fatalf("the edge restored with no master differs: %s", firstDiff(got, want))
	}
}
