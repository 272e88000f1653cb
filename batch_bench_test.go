package iotkv_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/iotkv/iotkv"
)

// BenchmarkDecodeBatch decodes and validates a batch of 100 puts as the
// edge does for every device publish (the ingest benchmark's shape),
// against encoding/json's decoding of the same batch in the same run.
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
	// The baseline: encoding/json alone, as DecodeBatch used it (without
	// DecodeBatch's UTF-8, depth and op checks, which the other side pays).
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(payload)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := stdDecodeBatch(payload); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("DecodeBatch", func(b *testing.B) {
		b.SetBytes(int64(len(payload)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := l.DecodeBatch(payload); err != nil {
				b.Fatal(err)
			}
		}
	})
}
