//go:build linux

package chaos

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Row is one scenario's line in the results table.
type Row struct {
	Scenario string
	Cycles   int
	Acked    int64 // ops whose Put returned nil
	Lost     int
	Twice    int
	Recovery []time.Duration // one per cycle, when the scenario has one
	Wall     time.Duration
	Notes    string
}

func (r Row) recovery() string {
	if len(r.Recovery) == 0 {
		return "–"
	}
	s := slices.Clone(r.Recovery)
	slices.Sort(s)
	return fmt.Sprintf("%v / %v", s[len(s)/2].Round(10*time.Millisecond), s[len(s)-1].Round(10*time.Millisecond))
}

// Table renders rows as the Markdown table of bench/results/chaos.md.
func Table(rows []Row) string {
	var b strings.Builder
	b.WriteString("| scenario | cycles | ops acked | lost | applied twice | recovery p50 / max | wall | notes |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %s | %v | %s |\n",
			r.Scenario, r.Cycles, r.Acked, r.Lost, r.Twice, r.recovery(), r.Wall.Round(100*time.Millisecond), r.Notes)
	}
	return b.String()
}
