//go:build unix

package edge

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// diskCollectors report the file system of dir, read at each scrape (NaN
// when statfs fails).
func diskCollectors(dir string) []prometheus.Collector {
	stat := func(f func(*unix.Statfs_t) float64) func() float64 {
		return func() float64 {
			var s unix.Statfs_t
			if err := unix.Statfs(dir, &s); err != nil {
				return math.NaN()
			}
			return f(&s)
		}
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotkv_data_dir_free_bytes",
			Help: "Bytes available to the edge on the file system of its data directory."},
			stat(func(s *unix.Statfs_t) float64 { return float64(s.Bavail) * float64(s.Bsize) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotkv_data_dir_size_bytes",
			Help: "Size of the file system of the edge's data directory."},
			stat(func(s *unix.Statfs_t) float64 { return float64(s.Blocks) * float64(s.Bsize) })),
	}
}
