package bench

import (
	"math"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
)

func TestThePayloadsTheLoadSendsAreValidBatches(t *testing.T) {
	lim := iotkv.Limits{}.WithDefaults()
	for _, p := range [][]byte{batchPayload("d", 7), fillPayload(1_000_000_000, 3)} {
		b, err := lim.DecodeBatch(p)
		if err != nil {
			t.Fatalf("decode %.80s…: %v", p, err)
		}
		if len(b.Ops) != opsPerBatch {
			t.Fatalf("ops = %d, want %d", len(b.Ops), opsPerBatch)
		}
	}
	if err := lim.ValidateValue(kvPayload("d", 9)); err != nil {
		t.Fatalf("kv payload: %v", err)
	}
}

func TestHistogramQuantilesInterpolateInsideABucket(t *testing.T) {
	before := map[string]float64{`lag_bucket{le="0.5"}`: 0, `lag_bucket{le="1"}`: 0, `lag_bucket{le="+Inf"}`: 0}
	after := map[string]float64{`lag_bucket{le="0.5"}`: 50, `lag_bucket{le="1"}`: 100, `lag_bucket{le="+Inf"}`: 100}
	if q, n := histQuantile(before, after, "lag", 0.75); n != 100 || math.Abs(q-0.75) > 1e-9 {
		t.Fatalf("p75 = %v of %v, want 0.75 of 100", q, n)
	}
	h := NewHist()
	for i := 1; i <= 100; i++ {
		h.Add(time.Duration(i) * time.Millisecond)
	}
	if got := h.Quantile(0.99); got != 99 {
		t.Fatalf("p99 = %v, want 99", got)
	}
}
