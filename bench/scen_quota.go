package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// floodValue is the 1 KiB value of every flooder put.
var floodValue = `"` + strings.Repeat("f", 1022) + `"`

// floodPayload is a batch of 100 puts of new keys with 1 KiB values
// (~105 KB): every batch the edge accepts grows the flooder's data.
func floodPayload(_ string, seq uint64) []byte {
	b := make([]byte, 0, 110_000)
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"ops":[`...)
	for i := range uint64(opsPerBatch) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"op":"put","key":"flood/`...)
		b = strconv.AppendUint(b, seq*opsPerBatch+i, 10)
		b = append(b, `","value":`...)
		b = append(b, floodValue...)
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// scenQuota: 49 devices publish batches at a normal rate while a 50th
// floods the edge as fast as its acks allow. Its quota and rate limit must
// keep the others' PUBACK latency near what it is without the flooder,
// and its stored bytes must stop at its quota.
func (r *Runner) scenQuota(ctx context.Context, sec *Section) error {
	quotaBytes := int64(r.pick(4, 16)) << 20
	const rateOps = 2000
	data, err := os.MkdirTemp(r.Work, "edge-quota-")
	if err != nil {
		return fmt.Errorf("edge data: %w", err)
	}
	e, err := r.serveChild(ctx, "edge", "--accounts", r.PKI.Accounts, "--data", data,
		"--quota-bytes", fmt.Sprint(quotaBytes), "--rate-ops", fmt.Sprint(rateOps))
	if err != nil {
		return err
	}
	defer e.Stop()
	devs := r.devices(50)
	normal, flooder := devs[:49], devs[49:]
	clients, err := r.ConnectAll(ctx, e.MQTT, devs)
	if err != nil {
		return err
	}
	defer DisconnectAll(clients)
	// 2 batches of 100 ops per second per device: 200 ops/s, a tenth of
	// the rate limit. Every device's seq continues from phase to phase and
	// round to round, and every phase must end with the edge's last_seq of
	// the 49 devices moved by exactly the batches acked to them.
	normalSeqs, floodSeqs := make([]uint64, len(normal)), make([]uint64, 1)
	normalLoad := func(d time.Duration) (LoadResult, error) {
		var res LoadResult
		c, err := checkedRound(ctx, func(ctx context.Context) (int64, error) { return r.appliedSeqsOf(ctx, e, normal) }, func() (int64, int64) {
			res = Load{Clients: clients[:49], Devices: normal, Topic: batchTopic, Payload: batchPayload, InFlight: 1, Seqs: normalSeqs,
				Rate: 2 * 49, Stagger: true, Warmup: time.Second, Duration: d}.Run(ctx)
			return res.AckedAll, res.Errors
		})
		res.Applied, res.Checks = c.Applied, []AppliedCheck{c}
		return res, err
	}
	d := r.dur(5*time.Second, 20*time.Second)
	hc, err := r.HTTPClient(1)
	if err != nil {
		return err
	}
	refusedBefore, err := r.refusals(ctx, hc, e.HTTPS)
	if err != nil {
		return err
	}
	type round struct {
		alone, with, flood LoadResult
		diskAlone          int64
		sizes              []int64
	}
	rounds, err := inRounds(r.rounds(), func(i int) (round, error) {
		var rd round
		var err error
		if rd.alone, err = normalLoad(d); err != nil {
			return rd, fmt.Errorf("without the flooder: %w", err)
		}
		rd.diskAlone = dirSize(data)
		floodCtx, stopFlood := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() {
			rd.flood = Load{Clients: clients[49:], Devices: flooder, Topic: batchTopic, Payload: floodPayload, InFlight: 8, Seqs: floodSeqs,
				Warmup: 0, Duration: time.Hour}.Run(floodCtx)
		})
		sampling := make(chan struct{})
		wg.Go(func() {
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-sampling:
					return
				case <-t.C:
					rd.sizes = append(rd.sizes, dirSize(data))
				}
			}
		})
		time.Sleep(time.Second) // the flooder reaches its quota first
		rd.with, err = normalLoad(d)
		close(sampling)
		stopFlood()
		wg.Wait()
		if err != nil {
			return rd, fmt.Errorf("with the flooder: %w", err)
		}
		r.Log.Info("measured", "round", i+1, "p99 alone ms", rd.alone.P99ms, "p99 with ms", rd.with.P99ms, "flooder sent", rd.flood.Sent)
		return rd, nil
	})
	if err != nil {
		return err
	}
	refusedAfter, err := r.refusals(ctx, hc, e.HTTPS)
	if err != nil {
		return err
	}
	var devices struct {
		Devices []struct {
			Device string `json:"device"`
			Keys   int64  `json:"keys"`
			Bytes  int64  `json:"bytes"`
		} `json:"devices"`
	}
	if _, err := GetJSON(ctx, hc, "https://"+e.HTTPS+"/v1/devices", AdminName, &devices); err != nil {
		return err
	}
	var floodKeys, floodBytes int64
	for _, dv := range devices.Devices {
		if dv.Device == flooder[0] {
			floodKeys, floodBytes = dv.Keys, dv.Bytes
		}
	}

	alone, aloneP99 := medianRound(rounds, func(x round) float64 { return x.alone.P99ms })
	with, withP99 := medianRound(rounds, func(x round) float64 { return x.with.P99ms })
	_, ratios := medianRound(rounds, func(x round) float64 { return ratio(x.with.P99ms, x.alone.P99ms) })
	var flood LoadResult
	var checksAlone, checksWith []AppliedCheck
	for _, x := range rounds {
		flood.Sent += x.flood.Sent
		checksAlone = append(checksAlone, x.alone.Checks...)
		checksWith = append(checksWith, x.with.Checks...)
	}
	last := rounds[len(rounds)-1]
	sec.Row("run", "49 devices' batches/s", "PUBACK p50", "PUBACK p99", "p99 ÷ without flooder")
	sec.Row("without the flooder", fmt.Sprintf("%.1f", alone.alone.MsgsPerS), fmt.Sprintf("%.2f ms", alone.alone.P50ms), fmt.Sprintf("%.2f ms", alone.alone.P99ms), "1.00×")
	ratioP99 := ratio(with.with.P99ms, alone.alone.P99ms)
	sec.Row("with the flooder", fmt.Sprintf("%.1f", with.with.MsgsPerS), fmt.Sprintf("%.2f ms", with.with.P50ms), fmt.Sprintf("%.2f ms", with.with.P99ms), fmt.Sprintf("%.2f×", ratioP99))
	quota := refusedAfter["quota_exceeded"] - refusedBefore["quota_exceeded"]
	rate := refusedAfter["rate_limited"] - refusedBefore["rate_limited"]
	sec.Note("Edge with --quota-bytes %s --rate-ops %d. 49 devices publish 2 batches of 100 puts per second each (paced, 1 in flight); the 50th publishes batches of 100 new 1 KiB keys as fast as its PUBACKs come (8 in flight). Each round runs %s of the 49 devices alone, then %s with the flooder; %d round(s), each row is the median round by PUBACK p99, every device's seq continuing from phase to phase. Flooder over all rounds: %d batches sent, %d refused quota_exceeded, %d refused rate_limited; it stores %d keys, %s (its quota %s).",
		fmtMiB(quotaBytes), rateOps, d, d, r.rounds(), flood.Sent, int64(quota), int64(rate), floodKeys, fmtMiB(floodBytes), fmtMiB(quotaBytes))
	sec.Rounds = r.rounds()
	sec.Note("%s", roundsNote("49 devices without the flooder", "PUBACK p99", aloneP99, millis))
	sec.Note("%s", roundsNote("49 devices with the flooder", "PUBACK p99", withP99, millis))
	sec.Note("%s", roundsNote("p99 with ÷ without, round by round", "ratio", ratios, func(v float64) string { return fmt.Sprintf("%.2f×", v) }))
	sec.SetSpread("p99 ratio per round", ratios, func(v float64) string { return fmt.Sprintf("%.2f×", v) })
	sec.Note("%s", checkNote(checksAlone, "batches of the 49 devices without the flooder", "the sum of their last_seq in the edge's /v1/devices"))
	sec.Note("%s", checkNote(checksWith, "batches of the 49 devices with the flooder", "the sum of their last_seq in the edge's /v1/devices"))
	if sizes := last.sizes; len(sizes) >= 2 {
		half := sizes[len(sizes)/2]
		sec.Note("Edge data dir, last round: %s after the phase without the flooder; with it, %s after 0.5 s, %s half way, %s at the end (Pebble's WAL and compactions move it; the flooder's stored bytes stop at its quota).",
			fmtMiB(last.diskAlone), fmtMiB(sizes[0]), fmtMiB(half), fmtMiB(sizes[len(sizes)-1]))
	}
	sec.Check("the 49 devices' PUBACK p99 with the flooder ≤ 1.5× without", ratioP99, ratioP99 <= 1.5, "%.2f× (%.2f ms vs %.2f ms)", ratioP99, with.with.P99ms, alone.alone.P99ms)
	sec.Check("the flooder's stored bytes stop at its quota", float64(floodBytes), floodBytes <= quotaBytes && quota > 0, "%s stored, quota %s, %d batches refused for it", fmtMiB(floodBytes), fmtMiB(quotaBytes), int64(quota))
	sec.Raw["alone"], sec.Raw["with_flooder"], sec.Raw["flooder_sent"], sec.Raw["disk_bytes"] = alone.alone, with.with, flood.Sent, last.sizes
	sec.Raw["rounds_p99_ms"] = map[string][]float64{"alone": aloneP99, "with_flooder": withP99}
	sec.Raw["applied_checks"] = map[string][]AppliedCheck{"alone": checksAlone, "with_flooder": checksWith}
	return nil
}

// refusals reads iotkv_writes_refused_total by code from the edge's
// /metrics.
func (r *Runner) refusals(ctx context.Context, hc *http.Client, addr string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(AdminName, Password(AdminName))
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %d %v", resp.StatusCode, err)
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, `iotkv_writes_refused_total{code="`)
		if !ok {
			continue
		}
		code, val, _ := strings.Cut(rest, `"} `)
		v, _ := strconv.ParseFloat(val, 64)
		out[code] = v
	}
	return out, nil
}
