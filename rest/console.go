package rest

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	dto "github.com/prometheus/client_model/go"

	"github.com/iotkv/iotkv/console"
)

// MountConsole serves app's web console at /ui/ (no auth: the page holds
// no data and logs in by itself).
func MountConsole(r chi.Router, app console.App) {
	r.Get("/ui", func(w http.ResponseWriter, req *http.Request) {
		console.SecurityHeaders(w.Header())
		http.Redirect(w, req, "/ui/", http.StatusMovedPermanently)
	})
	h := console.Handler(app)
	r.Get("/ui/*", h.ServeHTTP)
	r.Head("/ui/*", h.ServeHTTP)
}

// WhoAmI answers GET /v1/whoami: the caller's account name and role. The
// console logs in with it.
func WhoAmI(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	WriteJSON(w, http.StatusOK, map[string]string{"name": p.Name, "role": string(p.Role)})
}

// Stats is GET /v1/stats on the edge: the counters the console's health
// page turns into rates and quantiles between two polls.
type Stats struct {
	At               int64    `json:"at"` // ms since the epoch
	OpsApplied       float64  `json:"ops_applied_total"`
	Commits          uint64   `json:"commits_total"`
	CommitBuckets    []Bucket `json:"commit_seconds_buckets"` // cumulative, as Prometheus keeps them
	ConnectedDevices int      `json:"connected_devices"`
	Devices          int      `json:"devices"`
	DiskBytes        uint64   `json:"disk_bytes"`
}

// Bucket is one cumulative histogram bucket: Count observations ≤ LE
// seconds.
type Bucket struct {
	LE    float64 `json:"le"`
	Count uint64  `json:"count"`
}

func (h *edgeHandler) stats(w http.ResponseWriter, r *http.Request) {
	st := Stats{At: time.Now().UnixMilli(), CommitBuckets: []Bucket{}}
	if h.o.Gatherer != nil {
		mfs, err := h.o.Gatherer.Gather()
		if err != nil {
			logFrom(r).Warn("stats: gather metrics", "err", err)
		}
		fillStats(&st, mfs)
	}
	devs, err := h.o.KV.Devices(r.Context())
	if err != nil {
		WriteErr(w, err)
		return
	}
	st.Devices = len(devs)
	for _, d := range devs {
		if d.Connected {
			st.ConnectedDevices++
		}
	}
	if h.o.DiskUsage != nil {
		st.DiskBytes = h.o.DiskUsage()
	}
	WriteJSON(w, http.StatusOK, st)
}

// The metrics the health page reads, as the edge's committer names them.
const (
	metricOpsApplied    = "iotkv_ops_applied_total"
	metricCommitSeconds = "iotkv_commit_seconds"
)

func fillStats(st *Stats, mfs []*dto.MetricFamily) {
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0]
		switch mf.GetName() {
		case metricOpsApplied:
			st.OpsApplied = m.GetCounter().GetValue()
		case metricCommitSeconds:
			hist := m.GetHistogram()
			st.Commits = hist.GetSampleCount()
			for _, b := range hist.GetBucket() {
				st.CommitBuckets = append(st.CommitBuckets, Bucket{LE: b.GetUpperBound(), Count: b.GetCumulativeCount()})
			}
		}
	}
}
