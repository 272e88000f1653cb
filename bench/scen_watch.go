package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// watchers is a set of open watch streams (Server-Sent Events) on an edge:
// fast ones read everything as it comes, stalled ones never read after the
// headers, as a browser tab left in the background or a dead consumer.
type watchers struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	bytes   atomic.Int64
	open    atomic.Int64
	refused atomic.Int64
}

// openWatchers opens fast per-device watchers (round robin over devs) and
// stalled fleet-wide ones (every event of every device: the most a stalled
// client can be sent) on s, and returns once every stream has answered 200.
func (r *Runner) openWatchers(ctx context.Context, s *Server, devs []string, fast, stalled int) (*watchers, error) {
	c, err := r.HTTPClient(fast + stalled)
	if err != nil {
		return nil, err
	}
	c.Timeout = 0 // streams
	wctx, cancel := context.WithCancel(ctx)
	w := &watchers{cancel: cancel}
	ready := make(chan error, fast+stalled)
	for i := range fast + stalled {
		dev, path := devs[i%len(devs)], "/v1/watch/"+devs[i%len(devs)]
		if i >= fast {
			dev, path = "(fleet)", "/v1/watch"
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			req, err := http.NewRequestWithContext(wctx, http.MethodGet, "https://"+s.HTTPS+path, nil)
			if err != nil {
				ready <- err
				return
			}
			req.SetBasicAuth(AdminName, Password(AdminName))
			resp, err := c.Do(req)
			if err != nil {
				ready <- fmt.Errorf("watch %s: %w", dev, err)
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				w.refused.Add(1)
				ready <- fmt.Errorf("watch %s: %s", dev, resp.Status)
				return
			}
			w.open.Add(1)
			ready <- nil
			if i >= fast {
				<-wctx.Done() // stalled: the edge's buffers fill, it overflows and cuts us off
				return
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			w.bytes.Add(n)
		}()
	}
	for range fast + stalled {
		if err := <-ready; err != nil {
			w.close()
			return nil, err
		}
	}
	return w, nil
}

func (w *watchers) close() {
	w.cancel()
	w.wg.Wait()
}

// scenWatch is scenario 10: the writers' PUBACK latency with 100 watchers
// of the same edge against an edge without watchers, loaded in turn in the
// same run.
func (r *Runner) scenWatch(ctx context.Context, sec *Section) error {
	devs := r.devices(50)
	const inflight = 16
	fast, stalled := 90, 10
	var ws *watchers
	defer func() {
		if ws != nil {
			ws.close()
		}
	}()
	var watchMetrics map[string]float64
	start := func(ctx context.Context) (*Server, error) { return r.StartEdge(ctx, "", 0) }
	outs, _, _, err := r.compareMQTT(ctx, []mqttRun{
		{name: "no watchers", start: start, topic: batchTopic, payload: batchPayload, inflight: []int{inflight}, devices: devs, applied: r.appliedSeqs},
		{name: "100 watchers", start: start, topic: batchTopic, payload: batchPayload, inflight: []int{inflight}, devices: devs, applied: r.appliedSeqs,
			before: func(ctx context.Context, s *Server) error {
				var err error
				ws, err = r.openWatchers(ctx, s, devs, fast, stalled)
				return err
			},
			after: func(ctx context.Context, s *Server, _ map[int]LoadResult) {
				watchMetrics, _ = r.metrics(ctx, s)
			}},
	})
	if err != nil {
		return err
	}
	none, with := outs["no watchers"][inflight], outs["100 watchers"][inflight]
	if none.Acked == 0 || with.Acked == 0 {
		return fmt.Errorf("no PUBACK within the measurement window (acked: %d without watchers, %d with): no latency to compare", none.Acked, with.Acked)
	}
	sec.Row("edge", "batches/s", "PUBACK p50 / p99", "p99 ÷ no watchers")
	sec.Row("no watchers", fmtRate(none.MsgsPerS), fmt.Sprintf("%.1f / %.1f ms", none.P50ms, none.P99ms), "1.00×")
	x := ratio(with.P99ms, none.P99ms)
	sec.Row(fmt.Sprintf("%d watchers (%d reading, %d stalled)", fast+stalled, fast, stalled), fmtRate(with.MsgsPerS),
		fmt.Sprintf("%.1f / %.1f ms", with.P50ms, with.P99ms), fmt.Sprintf("%.2f×", x))
	sec.Note("Two edges run at once with the same 50 devices (batches of %d puts, %d in flight each) and are loaded in turn, round after round (%d round(s) of %s); each figure is the median round (by batches/s), every device's seq continuing from round to round. On the second, %d watchers of /v1/watch/{device} (one account, over HTTPS) read every event as it comes and %d of /v1/watch (every device) never read after the headers: the edge sends to a watcher only through its bounded buffer, so a stalled one overflows and is cut off instead of holding the committer. The watchers' client runs on the same 2 cores as the edge and the load.", opsPerBatch, inflight, r.rounds(), r.dur(2*time.Second, 5*time.Second), fast, stalled)
	sec.Rounds = r.rounds()
	for _, x := range []struct {
		name string
		v    LoadResult
	}{{"no watchers", none}, {"100 watchers", with}} {
		sec.Note("%s", roundsNote(x.name, "batches/s", x.v.Rounds, perS(1)))
		sec.Note("%s", roundsNote(x.name, "PUBACK p99", x.v.RoundsP99, millis))
		sec.Note("%s", checkNote(x.v.Checks, "batches ("+x.name+")", "the sum of last_seq over the 50 devices in the edge's /v1/devices"))
	}
	if m := watchMetrics; m != nil {
		sec.Note("With watchers: %.0f events sent, %.0f watchers cut off by overflow, %.0f watchers open at the end, %.1f MiB read by the reading watchers.",
			m["iotkv_watch_events_total"], m["iotkv_watch_overflows_total"], m["iotkv_watchers"], float64(ws.bytes.Load())/(1<<20))
		sec.Raw["watch_metrics"] = map[string]float64{"events": m["iotkv_watch_events_total"], "overflows": m["iotkv_watch_overflows_total"], "open": m["iotkv_watchers"]}
	}
	var ratios []float64 // round by round: the two edges are loaded in turn
	for i := range min(len(with.RoundsP99), len(none.RoundsP99)) {
		ratios = append(ratios, ratio(with.RoundsP99[i], none.RoundsP99[i]))
	}
	sec.Note("%s", roundsNote("p99 with ÷ without, round by round", "ratio", ratios, func(v float64) string { return fmt.Sprintf("%.2f×", v) }))
	sec.SetSpread("p99 ratio per round", ratios, func(v float64) string { return fmt.Sprintf("%.2f×", v) })
	sec.Check("PUBACK p99 with 100 watchers ≤ 1.5× without", x, x <= 1.5, "%.2f× (%.1f ms vs %.1f ms)", x, with.P99ms, none.P99ms)
	sec.Raw["results"] = map[string]LoadResult{"no_watchers": none, "watchers": with}
	return nil
}
