package master

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/edge"
)

// BenchmarkEdgeToLatest100kChanges: 100 batches of 1,000 puts over MQTT
// (QoS 1, mTLS) to a real edge, until latest.json holds the last of them.
//
//	go test -run '^$' -bench EdgeToLatest -benchtime 1x ./master
func BenchmarkEdgeToLatest100kChanges(b *testing.B) {
	for i := 0; i < b.N; i++ {
		r := newRig(b)
		e1 := r.startEdge("e1", "", "", nil)
		m := r.startMaster([]*edge.Edge{e1}, func(o *Options) { o.SnapshotInterval = time.Second })
		waitFor(b, 20*time.Second, "the master to connect", func() bool { return m.Status()[0].Connected })
		c := r.pki.Connect(b, e1.MQTTAddr(), "d1")
		start := time.Now()
		for s := 1; s <= 100; s++ {
			batch := iotkv.Batch{Seq: uint64(s)}
			for j := 0; j < 1000; j++ {
				batch.Ops = append(batch.Ops, iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("k%06d", (s-1)*1000+j), Value: json.RawMessage(`{"t":21.5}`)})
			}
			payload, _ := json.Marshal(batch)
			if tok := c.Publish(iotkv.BatchTopic("d1"), 1, false, payload); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				b.Fatal(tok.Error())
			}
		}
		acked := time.Since(start)
		waitFor(b, 60*time.Second, "master seq 100000", func() bool { return m.Status()[0].Seq >= 100_000 })
		journaled := time.Since(start)
		waitFor(b, 60*time.Second, "latest.json at 100000", func() bool {
			h, _, err := readLatestHeader(filepath.Join(r.dir, "e1"))
			return err == nil && h.Seq >= 100_000
		})
		b.ReportMetric(acked.Seconds(), "s-acked")
		b.ReportMetric(journaled.Seconds(), "s-journaled")
		b.ReportMetric(time.Since(start).Seconds(), "s-latest.json")
	}
}

func bigOverlay(n, every int) []iotkv.OverlayEntry {
	out := make([]iotkv.OverlayEntry, 0, n/every)
	for i := 0; i < n; i += every {
		out = append(out, iotkv.OverlayEntry{Device: fmt.Sprintf("dev%04d", i/1000), Key: fmt.Sprintf("key/%06d", i),
			Value: json.RawMessage(`{"t":22.25,"unit":"C"}`)})
	}
	return out
}

// BenchmarkLatestJSON1M: merge 100k changed keys into a latest.json of 1M
// keys (the work of one snapshot interval at that size).
func BenchmarkLatestJSON1M(b *testing.B) {
	dir := b.TempDir()
	path := filepath.Join(dir, latestName)
	var keys int
	if err := writeLatestFile(path, "e1", 1, now(), nil, bigOverlay(1_000_000, 1), &keys); err != nil {
		b.Fatal(err)
	}
	fi, _ := os.Stat(path)
	b.Logf("latest.json: %d keys, %d MiB", keys, fi.Size()>>20)
	overlay := bigOverlay(1_000_000, 10)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		base, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := writeLatestFile(path, "e1", uint64(i+2), now(), base, overlay, &keys); err != nil {
			b.Fatal(err)
		}
		base.Close()
	}
}

// BenchmarkRestore1M: load a 1M-key backup document into an edge store on
// disk, as `iotkv edge --restore-from` does after the download.
func BenchmarkRestore1M(b *testing.B) {
	var doc bytes.Buffer
	bw, _ := iotkv.NewBackupWriter(&doc, iotkv.BackupHeader{Edge: "e1", Seq: 1, TakenAt: now()}, []iotkv.DeviceSeq{{Device: "dev0000", LastSeq: 5}})
	for _, o := range bigOverlay(1_000_000, 1) {
		_ = bw.Entry(&iotkv.BackupEntry{Device: o.Device, Key: o.Key, Value: o.Value})
	}
	_ = bw.Close()
	b.Logf("document: %d MiB", doc.Len()>>20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		store, err := edge.OpenStore(filepath.Join(b.TempDir(), "db"), edge.StoreOptions{FS: vfs.Default})
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := edge.LoadBackup(bytes.NewReader(doc.Bytes()), "e1", store, nil); err != nil {
			b.Fatal(err)
		}
		store.Close()
	}
}
