package edge

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// registerOpsMetrics adds the gauges an operator alerts on:
// iotkv_edge_ready (1 while the edge takes writes, 0 once its store
// failed and /readyz answers 503) and, where the platform has statfs,
// iotkv_data_dir_free_bytes and iotkv_data_dir_size_bytes of the file
// system holding the data directory.
func registerOpsMetrics(reg prometheus.Registerer, dataDir string, ready func() error) error {
	cs := append([]prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotkv_edge_ready",
			Help: "1 while the edge takes writes, 0 when it refuses them (its store failed; /readyz answers 503)."},
			func() float64 {
				if ready() != nil {
					return 0
				}
				return 1
			}),
	}, diskCollectors(dataDir)...)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register edge metrics: %w", err)
		}
	}
	return nil
}
