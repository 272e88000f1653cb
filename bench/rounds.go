package bench

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// Every figure the harness reports from a load is measured in rounds
// (Runner.rounds: 3 in the full run, 1 in the quick one, an odd count so
// that the median is a measured round); the report gives the median round
// with the min and max beside it. A round that replays data into an edge
// is bracketed by the edge's own count of what it applied, which must
// equal the acks the load generator counted (checkedRound).

// inRounds runs round n times, in order, and stops at the first error.
func inRounds[T any](n int, round func(i int) (T, error)) ([]T, error) {
	out := make([]T, 0, n)
	for i := range n {
		v, err := round(i)
		if err != nil {
			return out, fmt.Errorf("round %d of %d: %w", i+1, n, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// medianRound returns the round whose key is the median of the rounds
// (given in round order) and every round's key, in round order.
func medianRound[T any](rs []T, key func(T) float64) (T, []float64) {
	vals := make([]float64, len(rs))
	idx := make([]int, len(rs))
	for i, x := range rs {
		vals[i], idx[i] = key(x), i
	}
	sort.SliceStable(idx, func(a, b int) bool { return vals[idx[a]] < vals[idx[b]] })
	return rs[idx[len(idx)/2]], vals
}

// minMedMax is a figure's min, median and max over its rounds.
func minMedMax(rounds []float64) (lo, med, hi float64) {
	rs := append([]float64(nil), rounds...)
	sort.Float64s(rs)
	return rs[0], rs[len(rs)/2], rs[len(rs)-1]
}

// roundsNote states a figure's rounds: their count, min, median and max.
func roundsNote(name, unit string, rounds []float64, format func(float64) string) string {
	if len(rounds) == 0 {
		return name + ": no rounds"
	}
	lo, med, hi := minMedMax(rounds)
	return fmt.Sprintf("%s: %d round(s), %s min %s / median %s / max %s", name, len(rounds), unit, format(lo), format(med), format(hi))
}

// spread is "median (min–max)" of a figure's rounds, or the figure alone
// when it was measured once.
func spread(rounds []float64, format func(float64) string) string {
	if len(rounds) == 0 {
		return "–"
	}
	lo, med, hi := minMedMax(rounds)
	if len(rounds) == 1 {
		return format(med)
	}
	return fmt.Sprintf("%s (%s–%s)", format(med), format(lo), format(hi))
}

// perS formats a rate scaled by mult (e.g. batches → key-ops).
func perS(mult float64) func(float64) string {
	return func(v float64) string { return fmtRate(v * mult) }
}

func millis(v float64) string { return fmt.Sprintf("%.2f ms", v) }

func seconds(v float64) string { return fmt.Sprintf("%.2f s", v) }

// checkedRound runs one round of a load between two readings of the
// server's own count of what it applied (count), and fails unless the
// server applied exactly what the round counted as acked (run returns the
// acks of the whole round, warm-up and drain included, and its errors).
func checkedRound(ctx context.Context, count func(context.Context) (int64, error), run func() (acked, errs int64)) (AppliedCheck, error) {
	before, err := count(ctx)
	if err != nil {
		return AppliedCheck{}, fmt.Errorf("applied count before the round: %w", err)
	}
	acked, errs := run()
	after, err := count(ctx)
	if err != nil {
		return AppliedCheck{}, fmt.Errorf("applied count after the round: %w", err)
	}
	c := AppliedCheck{Acked: acked, Applied: after - before, Errors: errs}
	if c.Applied != c.Acked || c.Errors > 0 {
		return c, fmt.Errorf("applied-count check failed: the server's counters say %d applied, the load generator counted %d acks (%d errors)", c.Applied, c.Acked, c.Errors)
	}
	return c, nil
}

// checkNote shows the applied-count check of every round.
func checkNote(checks []AppliedCheck, what, source string) string {
	if len(checks) == 0 {
		return "Applied-count check: not run."
	}
	var parts []string
	for i, c := range checks {
		parts = append(parts, fmt.Sprintf("round %d: %d acked = %d applied", i+1, c.Acked, c.Applied))
	}
	return fmt.Sprintf("Applied-count check (passed; the scenario fails otherwise): in every round the %s the edge applied, by %s before and after the round, equal the acks the load generator counted over the round (warm-up and the drain after the window included): %s.", what, source, strings.Join(parts, "; "))
}
