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
	// the rate limit.
	normalLoad := func(d time.Duration) LoadResult {
		return Load{Clients: clients[:49], Devices: normal, Topic: batchTopic, Payload: batchPayload, InFlight: 1,
			Rate: 2 * 49, Stagger: true, Warmup: time.Second, Duration: d}.Run(ctx)
	}
	d := r.dur(5*time.Second, 20*time.Second)
	alone := normalLoad(d)
	diskAlone := dirSize(data)

	hc, err := r.HTTPClient(1)
	if err != nil {
		return err
	}
	refusedBefore, err := r.refusals(ctx, hc, e.HTTPS)
	if err != nil {
		return err
	}
	floodCtx, stopFlood := context.WithCancel(ctx)
	var flood LoadResult
	var wg sync.WaitGroup
	wg.Go(func() {
		flood = Load{Clients: clients[49:], Devices: flooder, Topic: batchTopic, Payload: floodPayload, InFlight: 8,
			Warmup: 0, Duration: time.Hour}.Run(floodCtx)
	})
	var sizes []int64
	sampling := make(chan struct{})
	wg.Go(func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sampling:
				return
			case <-t.C:
				sizes = append(sizes, dirSize(data))
			}
		}
	})
	time.Sleep(time.Second) // the flooder reaches its quota first
	with := normalLoad(d)
	close(sampling)
	stopFlood()
	wg.Wait()
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

	sec.Row("run", "49 devices' batches/s", "PUBACK p50", "PUBACK p99", "p99 ÷ without flooder")
	sec.Row("without the flooder", fmt.Sprintf("%.1f", alone.MsgsPerS), fmt.Sprintf("%.2f ms", alone.P50ms), fmt.Sprintf("%.2f ms", alone.P99ms), "1.00×")
	ratioP99 := ratio(with.P99ms, alone.P99ms)
	sec.Row("with the flooder", fmt.Sprintf("%.1f", with.MsgsPerS), fmt.Sprintf("%.2f ms", with.P50ms), fmt.Sprintf("%.2f ms", with.P99ms), fmt.Sprintf("%.2f×", ratioP99))
	quota := refusedAfter["quota_exceeded"] - refusedBefore["quota_exceeded"]
	rate := refusedAfter["rate_limited"] - refusedBefore["rate_limited"]
	sec.Note("Edge with --quota-bytes %s --rate-ops %d. 49 devices publish 2 batches of 100 puts per second each (paced, 1 in flight); the 50th publishes batches of 100 new 1 KiB keys as fast as its PUBACKs come (8 in flight). Flooder: %d batches sent, %d refused quota_exceeded, %d refused rate_limited; it stores %d keys, %s (its quota %s).",
		fmtMiB(quotaBytes), rateOps, flood.Sent, int64(quota), int64(rate), floodKeys, fmtMiB(floodBytes), fmtMiB(quotaBytes))
	if len(sizes) >= 2 {
		half := sizes[len(sizes)/2]
		sec.Note("Edge data dir: %s after the run without the flooder; with it, %s after 0.5 s, %s half way, %s at the end (Pebble's WAL and compactions move it; the flooder's stored bytes stop at its quota).",
			fmtMiB(diskAlone), fmtMiB(sizes[0]), fmtMiB(half), fmtMiB(sizes[len(sizes)-1]))
	}
	sec.Check("the 49 devices' PUBACK p99 with the flooder ≤ 1.5× without", ratioP99, ratioP99 <= 1.5, "%.2f× (%.2f ms vs %.2f ms)", ratioP99, with.P99ms, alone.P99ms)
	sec.Check("the flooder's stored bytes stop at its quota", float64(floodBytes), floodBytes <= quotaBytes && quota > 0, "%s stored, quota %s, %d batches refused for it", fmtMiB(floodBytes), fmtMiB(quotaBytes), int64(quota))
	sec.Raw["alone"], sec.Raw["with_flooder"], sec.Raw["flooder"], sec.Raw["disk_bytes"] = alone, with, flood, sizes
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
