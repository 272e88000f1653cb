package iotkv_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/iotkv/iotkv"
)

// BenchmarkDecodeBatch decodes and validates a batch of 100 puts as the
// edge does for every device publish (the ingest benchmark's shape).
func BenchmarkDecodeBatch(b *testing.B) {
	batch := iotkv.Batch{Seq: 17}
	for j := range 100 {
		ts := int64(1764000000123 + j)
		batch.Ops = append(batch.Ops, iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("sensor/%d/%d", j%50, j),
			Value: json.RawMessage(fmt.Sprintf(`{"t":%d.5,"i":%d}`, j, j)), TS: &ts})
	}
	payload, err := json.Marshal(batch)
	if err != nil {
		b.Fatal(err)
	}
	var l iotkv.Limits
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.DecodeBatch(payload); err != nil {
			b.Fatal(err)
		}
	}
}
