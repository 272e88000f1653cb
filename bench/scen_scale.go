package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
)

// fillPayload is a batch of 100 puts of fresh keys k/00000000...
func fillPayload(base, n uint64) []byte {
	seq := base + n
	b := make([]byte, 0, 6000)
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"ops":[`...)
	for i := uint64(0); i < opsPerBatch; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"op":"put","key":"`...)
		b = append(b, fillKey((n-1)*opsPerBatch+i)...)
		b = append(b, `","value":{"t":21.5,"h":40.25,"n":`...)
		b = strconv.AppendUint(b, seq, 10)
		b = append(b, `}}`...)
	}
	return append(b, "]}"...)
}

func fillKey(i uint64) string { return fmt.Sprintf("k/%08d", i) }

// fill publishes batches from every client until each device has written
// perDevice keys; seqs[i] counts device i's batches so far, and the seq on
// the wire is base + seqs[i] (base keeps it above earlier loads').
func fill(ctx context.Context, clients []paho.Client, devs []string, seqs []uint64, base, perDevice uint64) error {
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i, c := range clients {
		dev := devs[i]
		var mu sync.Mutex
		last := perDevice / opsPerBatch
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					mu.Lock()
					if seqs[i] >= last {
						mu.Unlock()
						return
					}
					seqs[i]++
					s := seqs[i]
					tok := c.Publish(iotkv.BatchTopic(dev), 1, false, fillPayload(base, s))
					mu.Unlock()
					if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
						failed.Add(1)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("fill: %d publishes failed", n)
	}
	return ctx.Err()
}

type scalePoint struct {
	Keys      uint64  `json:"keys"`
	FillSecs  float64 `json:"fill_seconds"`
	RSS       int64   `json:"rss_bytes"`
	ReqPerS   float64 `json:"get_req_per_s"`
	P50ms     float64 `json:"get_p50_ms"`
	P99ms     float64 `json:"get_p99_ms"`
	DataBytes int64   `json:"data_bytes"`
	// The read rounds at this size, in round order; the figures above
	// are the median round by p99.
	RoundsReqPerS []float64    `json:"rounds_get_req_per_s,omitempty"`
	RoundsP99ms   []float64    `json:"rounds_get_p99_ms,omitempty"`
	Check         AppliedCheck `json:"fill_applied_check"`
}

// readLatency GETs random stored keys from 16 goroutines for d.
func (r *Runner) readLatency(ctx context.Context, s *Server, devs []string, perDevice uint64, d time.Duration) (float64, *Hist, error) {
	hc, err := r.HTTPClient(16)
	if err != nil {
		return 0, nil, err
	}
	h := NewHist()
	var n, bad atomic.Int64
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				dev := devs[rand.IntN(len(devs))]
				url := "https://" + s.HTTPS + "/v1/kv/" + dev + "/" + fillKey(rand.Uint64N(perDevice))
				t0 := time.Now()
				code, err := GetJSON(ctx, hc, url, ReaderName, nil)
				if err != nil || code != 200 {
					bad.Add(1)
					continue
				}
				h.Add(time.Since(t0))
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if b := bad.Load(); b > 0 {
		return 0, h, fmt.Errorf("read latency: %d GETs failed or missed", b)
	}
	return float64(n.Load()) / d.Seconds(), h, nil
}

// scenScale is scenario 8.
func (r *Runner) scenScale(ctx context.Context, sec *Section) error {
	e, err := r.StartEdge(ctx, "", 0)
	if err != nil {
		return err
	}
	defer e.Stop()
	devs := r.devices(50)
	clients, err := r.ConnectAll(ctx, e.MQTT, devs)
	if err != nil {
		return err
	}
	defer DisconnectAll(clients)
	seqs := make([]uint64, len(devs))
	sizes := []uint64{10_000, 1_000_000, 5_000_000}
	if r.Quick {
		sizes = []uint64{10_000, 100_000}
	}
	var points []scalePoint
	d := r.dur(2*time.Second, 5*time.Second)
	for _, total := range sizes {
		if n := len(points); n > 0 && total > 1_000_000 {
			last := points[n-1]
			eta := time.Duration(float64(total-last.Keys) / (float64(last.Keys) / last.FillSecs) * float64(time.Second))
			if eta > 150*time.Second {
				sec.Note("%d keys skipped: at this run's fill rate it would take about %.0f s.", total, eta.Seconds())
				break
			}
		}
		t0 := time.Now()
		per := total / uint64(len(devs))
		batches := func() (n int64) {
			for _, s := range seqs {
				n += int64(s)
			}
			return n
		}
		var fillErr error
		check, err := checkedRound(ctx, func(ctx context.Context) (int64, error) { return r.opsApplied(ctx, e) }, func() (int64, int64) {
			before := batches()
			fillErr = fill(ctx, clients, devs, seqs, 0, per)
			return (batches() - before) * opsPerBatch, 0
		})
		if fillErr != nil {
			return fillErr
		}
		if err != nil {
			return fmt.Errorf("fill to %d keys: %w", total, err)
		}
		p := scalePoint{Keys: total, FillSecs: time.Since(t0).Seconds(), Check: check}
		time.Sleep(time.Second) // let flushes settle
		type read struct {
			reqPerS float64
			h       *Hist
		}
		reads, err := inRounds(r.rounds(), func(int) (read, error) {
			rps, h, err := r.readLatency(ctx, e, devs, per, d)
			return read{rps, h}, err
		})
		if err != nil {
			return err
		}
		med, p99s := medianRound(reads, func(x read) float64 { return x.h.Quantile(0.99) })
		_, p.RoundsReqPerS = medianRound(reads, func(x read) float64 { return x.reqPerS })
		p.RoundsP99ms, p.ReqPerS = p99s, med.reqPerS
		p.P50ms, p.P99ms, p.RSS, p.DataBytes = med.h.Quantile(0.5), med.h.Quantile(0.99), e.Mem().RSS, dirSize(e.Data)
		points = append(points, p)
		r.Log.Info("scale point", "keys", total, "rss", fmtMiB(p.RSS), "p99", p.P99ms, "fill s", p.FillSecs)
	}
	base := points[0]
	sec.Row("keys stored", "loaded in", "edge RSS", "data on disk", "GET req/s (16 conns)", "GET p50 / p99", "p99 ÷ 10k-key p99", "RSS ÷ 10k-key RSS")
	for _, p := range points {
		sec.Row(fmt.Sprint(p.Keys), fmt.Sprintf("%.1f s", p.FillSecs), fmtMiB(p.RSS), fmtMiB(p.DataBytes), fmtRate(p.ReqPerS),
			fmt.Sprintf("%.2f / %.2f ms", p.P50ms, p.P99ms), fmt.Sprintf("%.2f×", ratio(p.P99ms, base.P99ms)), fmt.Sprintf("%.2f×", ratio(float64(p.RSS), float64(base.RSS))))
	}
	sec.Note("Keys written by 50 devices over MQTT (batches of 100, 8 in flight each) into one edge; reads are GETs of random stored keys as a cost-12 reader (cached credentials), 16 keep-alive connections, %d round(s) of %s at each size; each row's read figures are the median round by p99. Baseline: the same edge with 10,000 keys. Each fill is measured once (it grows the store).", r.rounds(), d)
	sec.Rounds = r.rounds()
	var checks []string
	for _, p := range points {
		sec.Note("%s", roundsNote(fmt.Sprintf("%d keys", p.Keys), "GET p99", p.RoundsP99ms, millis))
		sec.Note("%s", roundsNote(fmt.Sprintf("%d keys", p.Keys), "GET req/s", p.RoundsReqPerS, perS(1)))
		checks = append(checks, fmt.Sprintf("to %d keys: %d acked = %d applied", p.Keys, p.Check.Acked, p.Check.Applied))
	}
	if last := points[len(points)-1]; len(last.RoundsP99ms) > 0 {
		sec.SetSpread(fmt.Sprintf("GET p99 at %d keys", last.Keys), last.RoundsP99ms, millis)
	}
	sec.Note("Applied-count check of every fill (passed; the scenario fails otherwise): the edge's iotkv_ops_applied_total moved by the acked batches × %d ops, each device's seqs continuing from fill to fill: %s.", opsPerBatch, strings.Join(checks, "; "))
	if r.Quick {
		sec.Note("The quick run stops at 100,000 keys; the full run (make bench) stores 1M and 5M.")
	}
	sec.Raw["points"] = points
	var xs, rss, p99 []float64
	for _, p := range points {
		xs, rss, p99 = append(xs, float64(p.Keys)), append(rss, float64(p.RSS)/(1<<20)), append(p99, p.P99ms)
	}
	r.Lines(sec, "scale-rss.png", "Edge RSS vs keys stored", "keys (log)", "MiB", true, XY{Name: "RSS", X: xs, Y: rss})
	r.Lines(sec, "scale-latency.png", "GET p99 vs keys stored", "keys (log)", "ms", true, XY{Name: "p99", X: xs, Y: p99})
	r.shared.Store("scale_last_data", e.Data)
	return nil
}
