package edge

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
)

// BenchmarkDurableGet: the cost of reading through the durable snapshot
// (what REST GET does) against reading Pebble directly (what it did
// before), on 10,000 keys, from parallel readers.
//
//	go test -run '^$' -bench DurableGet ./edge
func BenchmarkDurableGet(b *testing.B) {
	store, err := OpenStore(b.TempDir(), StoreOptions{Logger: discardLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	c, err := newCommitter(store, discardLogger(), prometheus.NewRegistry(), QuotaOptions{Keys: -1, Bytes: -1, RateOps: -1}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.close()
	const keys = 10_000
	for i := 0; i < keys; i += 100 {
		var ops []iotkv.Op
		for j := range 100 {
			ops = append(ops, iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("sensor/%05d", i+j), Value: json.RawMessage(`{"t":21.5,"h":40.25}`)})
		}
		res := make(chan commitResult, 1)
		c.submit(&writeReq{device: "d1", ops: ops, done: func(r commitResult) { res <- r }})
		if err := (<-res).err; err != nil {
			b.Fatal(err)
		}
	}
	direct := func(key string) error { // the read path before durable reads
		v, closer, err := store.db.Get(recordKey("d1", key))
		if err != nil {
			return err
		}
		defer closer.Close()
		var sr storedRecord
		return json.Unmarshal(v, &sr)
	}
	durable := func(key string) error { _, err := store.Get("d1", key); return err }
	for _, bc := range []struct {
		name string
		get  func(string) error
	}{{"pebble-direct", direct}, {"durable-snapshot", durable}} {
		b.Run(bc.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					if err := bc.get(fmt.Sprintf("sensor/%05d", i%keys)); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
