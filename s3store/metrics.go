package s3store

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/minio/minio-go/v7"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics count the store's requests.
type Metrics struct {
	requests              *prometheus.CounterVec // kind, result
	bytes                 *prometheus.CounterVec // kind
	ownRetries, lostRaces prometheus.Counter
}

func newMetrics() *Metrics {
	return &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotkv_s3_requests_total",
			Help: "S3 requests by kind (put_segment, get_manifest, ...) and result (ok, not_found, conflict, error)."}, []string{"kind", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotkv_s3_written_bytes_total",
			Help: "Bytes written to S3, by object kind."}, []string{"kind"}),
		ownRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_s3_own_retry_conflicts_total",
			Help: "Create-only writes answered 412 because a retry of our own request had already created the object."}),
		lostRaces: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_s3_segment_races_lost_total",
			Help: "Segments another master had already created."}),
	}
}

// Register adds the metrics to reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requests, m.bytes, m.ownRetries, m.lostRaces} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register s3 metrics: %w", err)
		}
	}
	return nil
}

func (m *Metrics) observe(kind string, err error) {
	result := "ok"
	switch {
	case err == nil:
	case errors.Is(err, ErrNotFound):
		result = "not_found"
	default:
		switch minio.ToErrorResponse(err).StatusCode {
		case http.StatusPreconditionFailed, http.StatusConflict:
			result = "conflict"
		case http.StatusNotFound:
			result = "not_found"
		default:
			result = "error"
		}
	}
	m.requests.WithLabelValues(kind, result).Inc()
}

// Requests is the count of requests of kind with result.
func (m *Metrics) Requests(kind, result string) prometheus.Counter {
	return m.requests.WithLabelValues(kind, result)
}
