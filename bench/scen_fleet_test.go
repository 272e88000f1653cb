package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFleetStateDiffNamesEveryKindOfDifference(t *testing.T) {
	ts := int64(7)
	state := func() deviceState {
		return deviceState{Seq: map[string]uint64{"d1": 3, "d2": 1}, Keys: map[string]int{"d1": 2, "d2": 1},
			KV: map[string]fleetRecord{"d1/a": {Value: `{"n":1}`}, "d1/b": {Value: `2`, TS: &ts}, "d2/a": {Value: `"x"`}}}
	}
	if d := diffStates(state(), state()); d != "" {
		t.Fatalf("equal states differ: %s", d)
	}
	other := int64(8)
	for name, change := range map[string]func(*deviceState){
		"a device's last_seq": func(s *deviceState) { s.Seq["d1"] = 2 },
		"a missing device":    func(s *deviceState) { delete(s.Seq, "d2") },
		"a missing key":       func(s *deviceState) { delete(s.KV, "d1/a") },
		"a value":             func(s *deviceState) { s.KV["d2/a"] = fleetRecord{Value: `"y"`} },
		"a ts":                func(s *deviceState) { s.KV["d1/b"] = fleetRecord{Value: `2`, TS: &other} },
		"a ts that is gone":   func(s *deviceState) { s.KV["d1/b"] = fleetRecord{Value: `2`} },
	} {
		got := state()
		change(&got)
		if d := diffStates(state(), got); d == "" {
			t.Errorf("%s changed: no difference found", name)
		}
	}
}

func TestFleetReadsSimulateSummaryAndVerifyLines(t *testing.T) {
	log := filepath.Join(t.TempDir(), "sim.log")
	out := "simulate: devices=30 written=961 acked=960 rejected=0 failed=0 elapsed=40s ops/s=24\nverify: written=961 acked=960 lost=1 mismatched=2\n"
	if err := os.WriteFile(log, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	var e fleetEdgeResult
	if err := parseSimulate(log, &e); err != nil {
		t.Fatal(err)
	}
	if e.Written != 961 || e.Acked != 960 || e.Lost != 1 || e.Mismatched != 2 {
		t.Fatalf("parsed %+v", e)
	}
	if err := os.WriteFile(log, []byte(strings.SplitAfter(out, "\n")[0]), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := parseSimulate(log, &e); err == nil {
		t.Fatal("a log without the verify line parsed")
	}
}
