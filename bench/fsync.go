package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// FsyncLatency is what this disk's fsync costs, measured in the run.
type FsyncLatency struct {
	N        int     `json:"n"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	PerSecOK float64 `json:"syncs_per_s"` // one writer, back to back
}

// measureFsync appends 4 KiB and fdatasyncs, back to back, in a file under
// dir for d: the floor under every acknowledgement that waits for the
// disk.
func measureFsync(dir string, d time.Duration) (FsyncLatency, error) {
	f, err := os.CreateTemp(dir, "fsync-probe-")
	if err != nil {
		return FsyncLatency{}, fmt.Errorf("fsync probe: %w", err)
	}
	defer os.Remove(filepath.Clean(f.Name()))
	defer f.Close()
	buf := make([]byte, 4096)
	var lat []float64
	start := time.Now()
	for time.Since(start) < d {
		t0 := time.Now()
		if _, err := f.Write(buf); err != nil {
			return FsyncLatency{}, fmt.Errorf("fsync probe write: %w", err)
		}
		if err := f.Sync(); err != nil {
			return FsyncLatency{}, fmt.Errorf("fsync probe: %w", err)
		}
		lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
	}
	sort.Float64s(lat)
	q := func(p float64) float64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	return FsyncLatency{N: len(lat), P50ms: q(0.5), P99ms: q(0.99), PerSecOK: float64(len(lat)) / time.Since(start).Seconds()}, nil
}
