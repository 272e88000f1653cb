package bench

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestMedianRoundIsAMeasuredRoundAndKeepsRoundOrder(t *testing.T) {
	type run struct {
		name string
		v    float64
	}
	med, vals := medianRound([]run{{"a", 30}, {"b", 10}, {"c", 20}}, func(r run) float64 { return r.v })
	if med.name != "c" {
		t.Fatalf("median round = %s, want c (20 of 10, 20, 30)", med.name)
	}
	if want := []float64{30, 10, 20}; len(vals) != 3 || vals[0] != want[0] || vals[1] != want[1] || vals[2] != want[2] {
		t.Fatalf("rounds = %v, want %v (round order)", vals, want)
	}
	if got := spread(vals, seconds); got != "20.00 s (10.00 s–30.00 s)" {
		t.Fatalf("spread = %q", got)
	}
	if got := roundsNote("x", "wall", vals, seconds); got != "x: 3 round(s), wall min 10.00 s / median 20.00 s / max 30.00 s" {
		t.Fatalf("roundsNote = %q", got)
	}
}

func TestInRoundsStopsAtTheFirstFailedRound(t *testing.T) {
	ran := 0
	_, err := inRounds(3, func(i int) (int, error) {
		ran++
		if i == 1 {
			return 0, context.Canceled
		}
		return i, nil
	})
	if err == nil || ran != 2 || !strings.Contains(err.Error(), "round 2 of 3") {
		t.Fatalf("err = %v after %d rounds, want round 2 of 3 to fail and stop", err, ran)
	}
}

func TestCheckedRoundFailsWhenAppliedDiffersFromAcked(t *testing.T) {
	count := int64(100)
	counter := func(context.Context) (int64, error) { return count, nil }
	c, err := checkedRound(context.Background(), counter, func() (int64, int64) { count += 7; return 7, 0 })
	if err != nil || c.Applied != 7 || c.Acked != 7 {
		t.Fatalf("equal round: %+v, %v", c, err)
	}
	// A replayed seq: acknowledged, not applied.
	if _, err := checkedRound(context.Background(), counter, func() (int64, int64) { count += 6; return 7, 0 }); err == nil {
		t.Fatal("6 applied for 7 acked passed the check")
	}
	if _, err := checkedRound(context.Background(), counter, func() (int64, int64) { count += 7; return 7, 1 }); err == nil {
		t.Fatal("a round with a failed publish passed the check")
	}
}

// A full run's JSON from this harness: every scenario has its round
// count and the min–max of its headline figure; the table shows them,
// and labels the C++ client's figures as not measured in the run.
func TestReadmeTableShowsEachScenariosRoundsAndSpread(t *testing.T) {
	rep := NewReport(false)
	rep.Mode = "full"
	s1 := rep.Section("1", "ingest")
	s1.Rounds = 3
	s1.Raw["results"] = map[string]LoadResult{"iotkv edge": {Rounds: []float64{3000, 2000, 2500}}}
	s1.Check("aim 1", 1, true, "ok")
	s3 := rep.Section("3", "rest")
	s3.Rounds = 3
	s3.SetSpread("edge req/s", []float64{30000, 25000, 29000}, perS(1))
	s3.Check("aim 3", 1, true, "ok")
	s4 := rep.Section("4", "device")
	s4.Rounds = 3
	s4.Check("100 writes", 0.04, true, "0.04 s (750× faster than the C++ client's 30 s)")
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	table, err := ReadmeTable(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| 1 | aim 1 | ok | 3 (edge min–max: 200k–300k key-ops/s) | met |",
		"| 3 | aim 3 | ok | 3 (min–max: edge req/s 25k–30k) | met |",
		"| 4 | 100 writes | 0.04 s (750× faster than the C++ client's 30 s); the C++ figure is measured separately, not in this run | 3 (median) | met |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "predates the applied-count check") {
		t.Errorf("a run with rounds is said to predate the applied-count check:\n%s", table)
	}
}
