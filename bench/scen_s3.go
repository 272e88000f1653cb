package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/iotkv/iotkv"
)

// The S3 scenario's steady load: 50 devices, each a batch of 100 puts
// every 2 s, staggered: 25 batches/s, 2,500 key-ops/s, about 0.4 MB/s of
// changes — under --flush-bytes 1MiB a second, so the time flush decides
// how often a segment is stored.
const (
	s3Devices  = 50
	s3Rate     = 25.0 // batches/s over all devices
	s3Edges    = 1
	s3Snapshot = 5 * time.Minute  // README's advice with S3; no compaction inside the window
	s3LeaseTTL = 10 * time.Second // the default; the holder renews every TTL/2
)

// storeRun is what one master store measured under the S3 scenario's load.
type storeRun struct {
	Store      string             `json:"store"`
	Load       LoadResult         `json:"load"`
	Warm       float64            `json:"warmup_s"`
	Window     float64            `json:"window_s"`
	LagP50     float64            `json:"lag_p50_s"` // edge commit → stored; see scenS3
	LagP99     float64            `json:"lag_p99_s"`
	LagN       float64            `json:"lag_samples"`
	RecvP99    float64            `json:"receive_lag_p99_s"` // iotkv_master_backup_lag_seconds
	FsyncP99   float64            `json:"journal_fsync_p99_s,omitempty"`
	ConfirmP99 float64            `json:"confirm_lag_p99_s,omitempty"` // iotkv_master_confirm_lag_seconds
	NewestP50  float64            `json:"segment_newest_age_p50_s,omitempty"`
	NewestMax  float64            `json:"segment_newest_age_max_s,omitempty"`
	Puts       map[string]float64 `json:"puts,omitempty"`     // kind → PUT requests in the window, every result
	Requests   float64            `json:"requests,omitempty"` // every S3 request in the window
	SegBytes   float64            `json:"segment_bytes,omitempty"`
	CatchUp    float64            `json:"catch_up_s"`
}

func (s storeRun) putsPerSecPerEdge(kind string) float64 {
	n := 0.0
	for k, v := range s.Puts {
		if kind == "" || k == kind {
			n += v
		}
	}
	return n / s.Window / s3Edges
}

// scenS3 is scenario 9: the master keeping its backups in S3 at the
// default flush, against the same workload with its local --data store.
func (r *Runner) scenS3(ctx context.Context, sec *Section) error {
	s3, err := r.StartS3(ctx)
	if err != nil {
		return err
	}
	defer s3.Stop()
	if _, err := r.iotkvBinary(ctx); err != nil { // not inside either measurement
		return err
	}
	// Each round measures both stores afresh (a new edge and master each,
	// the S3 one under a prefix of its own); each column is the median
	// round by lag p99.
	type both struct{ local, remote storeWindow }
	rounds, err := inRounds(r.rounds(), func(i int) (both, error) {
		var b both
		var err error
		if b.local, err = r.measureStore(ctx, "local --data", MasterStore{}); err != nil {
			return b, fmt.Errorf("local store: %w", err)
		}
		r.Log.Info("local store", "round", i+1, "lag_p99", b.local.LagP99, "samples", b.local.LagN)
		prefix := fmt.Sprintf("bench-%d", i+1)
		if b.remote, err = r.measureStore(ctx, "s3", MasterStore{S3: s3, Prefix: prefix, FlushInterval: time.Second, FlushBytes: "1MiB", LeaseTTL: s3LeaseTTL}); err != nil {
			return b, fmt.Errorf("s3 store: %w", err)
		}
		root := filepath.Join(s3.Data, s3.Bucket, prefix, "edges", EdgeID)
		segs, err := segmentLags(root, b.remote.windowStart, b.remote.windowEnd)
		if err != nil {
			return b, err
		}
		remote := &b.remote
		remote.LagP50, remote.LagP99, remote.LagN = segs.Lags.Quantile(0.5)/1000, segs.Lags.Quantile(0.99)/1000, float64(segs.Lags.Len())
		if segs.Segs > 0 {
			remote.SegBytes = float64(segs.Bytes) / float64(segs.Segs)
		}
		remote.NewestP50, remote.NewestMax = segs.Newest.Quantile(0.5)/1000, segs.Newest.Quantile(1)/1000
		r.Log.Info("s3 store", "round", i+1, "lag_p99", remote.LagP99, "changes", remote.LagN, "puts_per_s_per_edge", remote.putsPerSecPerEdge(""))
		if remote.LagN == 0 {
			return b, fmt.Errorf("no segment under %s holds a change of the window", root)
		}
		return b, nil
	})
	if err != nil {
		return err
	}
	medLocal, localP99s := medianRound(rounds, func(b both) float64 { return b.local.LagP99 })
	medRemote, remoteP99s := medianRound(rounds, func(b both) float64 { return b.remote.LagP99 })
	_, putRounds := medianRound(rounds, func(b both) float64 { return b.remote.putsPerSecPerEdge("") })
	local, remote := medLocal.local, medRemote.remote
	var localChecks, remoteChecks []AppliedCheck
	for _, b := range rounds {
		localChecks, remoteChecks = append(localChecks, b.local.Load.Checks...), append(remoteChecks, b.remote.Load.Checks...)
	}

	ms := func(s float64) string { return fmt.Sprintf("%.0f ms", s*1000) }
	lagRatio := ratio(remote.LagP99, local.LagP99)
	puts, segPuts := remote.putsPerSecPerEdge(""), remote.putsPerSecPerEdge("put_segment")
	leasePuts := remote.putsPerSecPerEdge("put_lease")
	leaseLong := 2 / s3LeaseTTL.Seconds()
	sec.Row("measure", "local --data DIR (baseline)", "--store s3:// (versitygw)", "S3 ÷ local")
	sec.Row("backup lag p50 / p99, edge commit → stored",
		ms(local.LagP50)+" / "+ms(local.LagP99), ms(remote.LagP50)+" / "+ms(remote.LagP99), fmt.Sprintf("%.1f× (p99)", lagRatio))
	sec.Row("lag samples", fmt.Sprintf("%.0f backup messages", local.LagN), fmt.Sprintf("%.0f changes", remote.LagN), "")
	sec.Row("commit → master received p99 (iotkv_master_backup_lag_seconds)", ms(local.RecvP99), ms(remote.RecvP99), fmt.Sprintf("%.1f×", ratio(remote.RecvP99, local.RecvP99)))
	sec.Row("journal fsync p99", ms(local.FsyncP99), "–", "")
	sec.Row("age of a segment's newest change when stored, median / max", "–", ms(remote.NewestP50)+" / "+ms(remote.NewestMax), "")
	sec.Row("S3 PUTs per second per edge (every kind)", "–", fmt.Sprintf("%.2f", puts), "")
	sec.Row("… of which segments / lease renewals / other", "–",
		fmt.Sprintf("%.2f / %.2f / %.2f", segPuts, leasePuts, max(0, puts-segPuts-leasePuts)), "")
	sec.Row("S3 requests of every kind per second per edge", "–", fmt.Sprintf("%.2f", remote.Requests/remote.Window/s3Edges), "")
	sec.Row("mean segment size", "–", fmt.Sprintf("%.0f KiB", remote.SegBytes/1024), "")
	sec.Row("load (acked batches/s, PUBACK p99)",
		fmt.Sprintf("%.1f/s, %.0f ms", local.Load.MsgsPerS, local.Load.P99ms), fmt.Sprintf("%.1f/s, %.0f ms", remote.Load.MsgsPerS, remote.Load.P99ms), "")
	sec.Row("master caught up after the load stopped", fmt.Sprintf("%.2f s", local.CatchUp), fmt.Sprintf("%.2f s", remote.CatchUp), "")
	sec.Note("Workload: one edge, %d devices each publishing a batch of %d puts every %.0f s, staggered (%.0f batches/s, %.0f key-ops/s); QoS 1, mTLS. The same load runs twice, each time against a fresh edge and a fresh `iotkv master` process built from the tree: first with `--data DIR` (the baseline), then with `--store s3://iotkv-bench/bench-N --s3-endpoint http://127.0.0.1:PORT --flush-interval 1s --flush-bytes 1MiB` against versitygw (posix backend) on loopback. `--snapshot-interval %s` for both, so no compaction falls inside the window. Measured over a %.0f s window after %.0f s of warm-up.",
		s3Devices, opsPerBatch, float64(s3Devices)/s3Rate, s3Rate, s3Rate*opsPerBatch, s3Snapshot, remote.Window, remote.Warm)
	sec.Note("Lag with --data: the master's histogram iotkv_master_backup_lag_seconds, edge commit → master journal (its fsync follows in the same pass), difference of two scrapes around the window, as in scenario 7. Lag with S3: every change committed in the window, from its updated_at (edge clock) to the modification time of the segment object holding it on the S3 server, read from versitygw's directory after the run; the master's own histogram there stops at its in-memory buffer, so it is shown only as \"received\". Same machine, same clock.")
	if remote.NewestP50 > 0.25 { // more than a flush tick (200 ms) plus a PUT
		sec.Note("Why a change waits more than one flush interval: the newest change of each segment was already %s old (median) when the segment was stored. The edge keeps at most 256 unconfirmed backup messages (8 MiB) in flight (edge.BackupOptions.Window/WindowBytes), and the S3 master confirms only after a segment's PUT; at %.0f batches/s that is ~%.1f s of changes; when it fills before a flush period (~%.1f s, 1 ÷ segment PUTs/s) ends, later changes wait on the edge for the confirm, then in the master's buffer for the next flush.",
			ms(remote.NewestP50), s3Rate, 256/s3Rate, 1/max(segPuts, 0.01))
	}
	sec.Note("PUTs: the master's iotkv_s3_requests_total{kind=\"put_*\"} (every result), difference of two scrapes around the window, ÷ window seconds ÷ %d edge(s). Compaction PUTs (snapshot and manifest, 2 per --snapshot-interval) are outside the window: + %.3f PUT/s at 5m, + 0.2 PUT/s at the master's default 10s.", s3Edges, 2/s3Snapshot.Seconds())
	sec.Note("A window of %.0f s counts whole PUTs: each kind's rate is ± %.2f/s. Lease renewals are one per --lease-ttl/2 (%s/2), %.2f/s in the long run, so a window holds %d or %d of them; the check's last figure is the window's segment rate plus that long-run renewal rate.",
		remote.Window, 1/remote.Window, s3LeaseTTL, leaseLong, int(remote.Window*leaseLong), int(remote.Window*leaseLong)+1)
	sec.Rounds = r.rounds()
	sec.Note("%d round(s), each measuring both stores afresh (a new edge and master each, the S3 master under its own prefix bench-N); each column is the median round by lag p99, so the S3 column's other rows are of that round.", r.rounds())
	sec.Note("%s", roundsNote("local --data", "lag p99", localP99s, ms))
	sec.Note("%s", roundsNote("S3", "lag p99", remoteP99s, ms))
	sec.SetSpread("S3 lag p99", remoteP99s, ms)
	sec.Note("%s", roundsNote("S3", "PUTs per second per edge", putRounds, func(v float64) string { return fmt.Sprintf("%.2f", v) }))
	sec.Note("%s", checkNote(localChecks, "batches (local --data)", "the sum of last_seq over the 50 loading devices in the edge's /v1/devices"))
	sec.Note("%s", checkNote(remoteChecks, "batches (S3)", "the sum of last_seq over the 50 loading devices in the edge's /v1/devices"))
	sec.Check("backup lag p99 with the S3 store at the default flush (1s, 1MiB) ≤ 2 s", remote.LagP99, remote.LagP99 <= 2,
		"%s (%.1f× the local --data store's %s)", ms(remote.LagP99), lagRatio, ms(local.LagP99))
	sec.Check("S3 PUTs per second per edge in steady state ≤ 1.1", puts, puts <= 1.1,
		"%.2f in the median-lag round's window (segments %.2f, lease %.2f); segments + one renewal per TTL/2 = %.2f; over the rounds %s", puts, segPuts, leasePuts, segPuts+leaseLong,
		spread(putRounds, func(v float64) string { return fmt.Sprintf("%.2f", v) }))
	sec.Raw["local"], sec.Raw["s3"], sec.Raw["lag_ratio_p99"] = local.storeRun, remote.storeRun, lagRatio
	sec.Raw["rounds_lag_p99_s"] = map[string][]float64{"local": localP99s, "s3": remoteP99s}
	sec.Raw["rounds_s3_puts_per_s_per_edge"] = putRounds
	return nil
}

// measureStore measures one master store: a fresh edge and master, the
// devices connected, one batch to see the backup flow, then the paced load.
func (r *Runner) measureStore(ctx context.Context, name string, st MasterStore) (storeWindow, error) {
	out := storeWindow{storeRun: storeRun{Store: name}}
	e, err := r.StartEdge(ctx, "", 0)
	if err != nil {
		return out, err
	}
	defer e.Stop()
	m, err := r.StartIotkvMaster(ctx, e.MQTT, st, s3Snapshot)
	if err != nil {
		return out, err
	}
	defer m.Stop()
	all := r.devices(s3Devices + 1) // the last one only primes the backup stream
	clients, err := r.ConnectAll(ctx, e.MQTT, all)
	if err != nil {
		return out, err
	}
	defer DisconnectAll(clients)
	primer := all[s3Devices]
	if tok := clients[s3Devices].Publish(iotkv.BatchTopic(primer), 1, false, batchPayload(primer, 1)); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return out, fmt.Errorf("prime the backup stream: %v", tok.Error())
	}
	if _, err := r.waitCaughtUp(ctx, m, 60*time.Second); err != nil {
		return out, fmt.Errorf("before the load: %w (master log: %s)", err, m.Proc.Tail())
	}

	warm, window := r.dur(2*time.Second, 3*time.Second), r.dur(6*time.Second, 25*time.Second)
	out.Warm = warm.Seconds()
	load := Load{Clients: clients[:s3Devices], Devices: all[:s3Devices], Topic: batchTopic, Payload: batchPayload,
		InFlight: 1, Rate: s3Rate, Stagger: true, Warmup: warm, Duration: window}
	var wg sync.WaitGroup
	var check AppliedCheck
	var checkErr error
	wg.Go(func() {
		// A fresh edge: every device's seqs start at 1, none replayed.
		check, checkErr = checkedRound(ctx, func(ctx context.Context) (int64, error) { return r.appliedSeqsOf(ctx, e, all[:s3Devices]) }, func() (int64, int64) {
			out.Load = load.Run(ctx)
			return out.Load.AckedAll, out.Load.Errors
		})
		out.Load.Applied, out.Load.Checks = check.Applied, []AppliedCheck{check}
	})
	h0, h1, err := r.scrapeWindow(ctx, m, warm, window, &out)
	wg.Wait()
	if err != nil {
		return out, err
	}
	if checkErr != nil {
		return out, checkErr
	}
	t0 := time.Now()
	if _, err := r.waitCaughtUp(ctx, m, 60*time.Second); err != nil {
		return out, fmt.Errorf("after the load: %w (master log: %s)", err, m.Proc.Tail())
	}
	out.CatchUp = time.Since(t0).Seconds()
	if out.Load.Errors > 0 {
		return out, fmt.Errorf("%d publishes failed", out.Load.Errors)
	}

	out.LagP50, out.LagN = histQuantile(h0, h1, "iotkv_master_backup_lag_seconds", 0.5)
	out.LagP99, _ = histQuantile(h0, h1, "iotkv_master_backup_lag_seconds", 0.99)
	out.RecvP99 = out.LagP99
	out.FsyncP99, _ = histQuantile(h0, h1, "iotkv_master_journal_fsync_seconds", 0.99)
	out.ConfirmP99, _ = histQuantile(h0, h1, "iotkv_master_confirm_lag_seconds", 0.99)
	if st.S3 == nil {
		out.ConfirmP99 = 0
	} else {
		out.FsyncP99 = 0
		out.Puts = map[string]float64{}
		for k, v := range h1 {
			if !strings.HasPrefix(k, "iotkv_s3_requests_total{") {
				continue
			}
			out.Requests += v - h0[k]
			if kind := label(k, "kind"); strings.HasPrefix(kind, "put_") {
				out.Puts[kind] += v - h0[k]
			}
		}
	}
	return out, nil
}

// storeWindow is a storeRun with the wall-clock bounds of its window.
type storeWindow struct {
	storeRun
	windowStart, windowEnd time.Time
}

// scrapeWindow waits warm, scrapes the master's metrics, waits window and
// scrapes again, recording the window's bounds in w.
func (r *Runner) scrapeWindow(ctx context.Context, m *Server, warm, window time.Duration, w *storeWindow) (h0, h1 map[string]float64, err error) {
	if err := sleepCtx(ctx, warm); err != nil {
		return nil, nil, err
	}
	if h0, err = r.metrics(ctx, m); err != nil {
		return nil, nil, err
	}
	w.windowStart = time.Now()
	if err := sleepCtx(ctx, window); err != nil {
		return nil, nil, err
	}
	if h1, err = r.metrics(ctx, m); err != nil {
		return nil, nil, err
	}
	w.windowEnd = time.Now()
	w.Window = w.windowEnd.Sub(w.windowStart).Seconds()
	return h0, h1, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// label is the value of label name in a scraped series key such as
// iotkv_s3_requests_total{kind="put_segment",result="ok"}.
func label(series, name string) string {
	_, rest, ok := strings.Cut(series, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// segmentStats is what the segment objects of a window show.
type segmentStats struct {
	Lags   *Hist // per change: commit → its segment stored
	Newest *Hist // per segment: age of its newest change when stored
	Segs   int
	Bytes  int64
}

// segmentLags reads every segment object under root (versitygw's posix
// directory of one edge) and measures, for each change the edge committed
// in [from, to), the time from its commit (updated_at, edge clock) to the
// segment's modification time (when the server wrote the object; a few ms
// before it answers the PUT).
func segmentLags(root string, from, to time.Time) (segmentStats, error) {
	st := segmentStats{Lags: NewHist(), Newest: NewHist()}
	lo, hi := from.UnixMilli(), to.UnixMilli()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || filepath.Base(filepath.Dir(path)) != "seg" || !strings.HasSuffix(path, ".jsonl") {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		stored, in, newest := fi.ModTime().UnixMilli(), false, int64(0)
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var c struct {
				UpdatedAt int64 `json:"updated_at"`
			}
			if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			newest = max(newest, c.UpdatedAt)
			if c.UpdatedAt >= lo && c.UpdatedAt < hi {
				st.Lags.Add(time.Duration(max(0, stored-c.UpdatedAt)) * time.Millisecond)
				in = true
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if in {
			st.Segs++
			st.Bytes += fi.Size()
			st.Newest.Add(time.Duration(max(0, stored-newest)) * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("segment lags: %w", err)
	}
	return st, nil
}
