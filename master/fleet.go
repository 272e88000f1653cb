package master

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/rest"
)

// FleetDevice is one device in GET /v1/fleet/devices: the edge that holds
// it, from the backup states this master keeps (no edge is asked).
type FleetDevice struct {
	Device    string `json:"device"`
	Edge      string `json:"edge"`
	LastSeq   uint64 `json:"last_seq"`
	LastWrite int64  `json:"last_write"` // ms since the epoch (edge clock); 0 unknown
}

// FleetDevices lists devices in id order after `after` whose id starts
// with prefix, at most limit, and the id to continue after ("" at the
// end). A device found on several edges (moved) is listed with the edge
// that wrote it last.
func (m *Master) FleetDevices(prefix, after string, limit int) ([]FleetDevice, string) {
	best := map[string]FleetDevice{}
	for _, f := range m.followers() {
		f.mu.Lock()
		for d, info := range f.devices {
			if !strings.HasPrefix(d, prefix) || d <= after {
				continue
			}
			cur, ok := best[d]
			if !ok || info.lastWrite > cur.LastWrite || (info.lastWrite == cur.LastWrite && info.lastSeq > cur.LastSeq) {
				best[d] = FleetDevice{Device: d, Edge: f.id, LastSeq: info.lastSeq, LastWrite: info.lastWrite}
			}
		}
		f.mu.Unlock()
	}
	ids := make([]string, 0, len(best))
	for d := range best {
		ids = append(ids, d)
	}
	slices.Sort(ids)
	next := ""
	if len(ids) > limit {
		ids = ids[:limit]
		next = ids[limit-1]
	}
	out := make([]FleetDevice, len(ids))
	for i, d := range ids {
		out[i] = best[d]
	}
	return out, next
}

func (m *Master) getFleetDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			rest.WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "limit must be an integer from 1 to 1000")
			return
		}
		limit = n
	}
	items, next := m.FleetDevices(q.Get("prefix"), q.Get("after"), limit)
	rest.WriteJSON(w, http.StatusOK, map[string]any{"items": items, "next": next})
}
