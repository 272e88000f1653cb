package edge

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The gate holds while the master is behind but moving, opens when it is
// stuck, stays open while it catches up with the stall's backlog, and
// holds again only for what came after.
func TestLagGateHoldsForASlowMasterNotAStuckOneNorItsCatchUp(t *testing.T) {
	g, err := newLagGate(500*time.Millisecond, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	g.now = func() time.Time { return clock }
	step := func(d time.Duration) { clock = clock.Add(d) }
	want := func(what string, hold bool) {
		t.Helper()
		if got := g.holds(); got != hold {
			t.Fatalf("%s: holds = %v, want %v", what, got, hold)
		}
	}

	g.committed(1) // no master follows: nothing is kept
	want("no master", false)
	g.follows.Store(true)
	g.committed(1)
	want("a fresh change", false)
	step(600 * time.Millisecond)
	want("a change older than the bound, master moving", true)
	g.confirmed(1)
	want("confirmed", false)

	// Behind but moving: held whenever the oldest unconfirmed is too old.
	g.committed(2)
	step(400 * time.Millisecond)
	g.committed(3)
	step(200 * time.Millisecond)
	want("change 2 is 600 ms old", true)
	g.confirmed(2)
	want("change 3 is 200 ms old", false)

	// Stuck: the confirmed seq stands still for a second; writes go on.
	step(time.Second)
	want("stuck", false)
	for seq := uint64(4); seq <= 9; seq++ {
		g.committed(seq)
		step(time.Second)
		want("still stuck", false)
	}
	// Catching up: open until the stall's backlog (up to 9) is confirmed,
	// though those changes are seconds old.
	g.confirmed(5)
	g.committed(10)
	want("catching up", false)
	step(200 * time.Millisecond)
	g.confirmed(9)
	want("caught up; change 10 counts from now", false)
	step(600 * time.Millisecond)
	want("change 10 is now 600 ms behind a moving master", true)
	g.confirmed(10)
	want("all confirmed", false)

	g.committed(11)
	g.follows.Store(false)
	step(time.Minute)
	want("the master left", false)
}
