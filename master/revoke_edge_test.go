package master

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// The live session of an edge that dialled out to the master's edge
// listener ends within 5 s of its certificate being revoked (the CRL file
// changes) or its account being disabled, and it cannot log in again;
// another edge's session stays. Real edges, real TLS on loopback.
func TestRevokedOrDisabledEdgeLosesItsSessionOnTheEdgeListener(t *testing.T) {
	r := newRig(t)
	r.identity("e3", iotkv.RoleEdge, certs.RoleEdge)
	reg := prometheus.NewRegistry()
	m := r.startMaster(nil, func(o *Options) {
		o.ListenEdges = "127.0.0.1:0"
		o.TLSPoll = 50 * time.Millisecond
		o.Registry = reg
	})
	for _, id := range []string{"e1", "e2", "e3"} {
		r.startEdge(id, "", "", func(o *edge.Options) {
			o.DialOut = edge.DialOutOptions{Masters: []string{m.EdgesAddr()}, Password: testenv.Password(id)}
		})
	}
	connected := func() map[string]bool {
		out := map[string]bool{}
		for _, s := range m.Status() {
			out[s.Edge] = s.Connected
		}
		return out
	}
	waitFor(t, 30*time.Second, "e1, e2 and e3 connected to the edge listener", func() bool {
		c := connected()
		return c["e1"] && c["e2"] && c["e3"]
	})

	// Revoke e1's certificate (the CRL file changes) and disable e3's
	// account (the accounts file changes).
	if _, err := certs.Revoke(r.pki.Dir, "e1", nil, 0); err != nil {
		t.Fatal(err)
	}
	f, err := accounts.Load(r.pki.Accounts)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetDisabled("e3", true); err != nil {
		t.Fatal(err)
	}
	if err := f.Save(r.pki.Accounts); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	waitFor(t, 5*time.Second, "the sessions of revoked e1 and disabled e3 ended", func() bool {
		c := connected()
		return !c["e1"] && !c["e3"]
	})
	t.Logf("sessions ended %v after the files changed", time.Since(changed).Round(time.Millisecond))
	if n := counterValue(t, reg, "iotkv_mqtt_sessions_ended_total"); n != 2 {
		t.Errorf("iotkv_mqtt_sessions_ended_total = %v, want 2", n)
	}

	// They keep redialling (every second at first) and are refused: still
	// away after several attempts, while e2 stays connected throughout.
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		c := connected()
		if c["e1"] || c["e3"] {
			t.Fatalf("a revoked or disabled edge is connected again: %v", c)
		}
		if !c["e2"] {
			t.Fatalf("e2, untouched, lost its session: %v", c)
		}
	}
}

// counterValue is the sum of every sample of the counter name in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			v := 0.0
			for _, mt := range mf.GetMetric() {
				v += mt.GetCounter().GetValue()
			}
			return v
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
