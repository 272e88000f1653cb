package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
)

// The fleet scenario: N edges (`iotkv edge --master mqtts://A,mqtts://B`),
// each with M simulated devices (one `iotkv device simulate` process per
// edge), backed up by two `iotkv master --listen-edges --store s3://`
// sharing one versitygw bucket.
const (
	fleetRate      = 0.2              // ops/s per device: one write every 5 s
	fleetKeys      = 8                // distinct keys per device: new keys first, then overwrites
	fleetLeaseTTL  = 10 * time.Second // the default
	fleetSnapshot  = 5 * time.Minute  // README's advice with S3; no compaction deletes the window's segments
	fleetStore     = "fleet"          // the masters' prefix in the bucket
	fleetDeviceAcc = "fleet-device"   // every simulated device's password is Password(fleetDeviceAcc)
)

func fleetEdgeID(i int) string       { return fmt.Sprintf("fleet-e%02d", i) }
func fleetDevicePrefix(i int) string { return fmt.Sprintf("f%02d-", i) }
func fleetMasterName(i int) string   { return fmt.Sprintf("fleet-m%c", 'a'+i) }

// fleetStatus is one edge of a master's GET /v1/backups.
type fleetStatus struct {
	Edge       string `json:"edge"`
	Connected  bool   `json:"connected"`
	Seq        uint64 `json:"seq"`
	EdgeSeq    uint64 `json:"edge_seq"`
	Lag        uint64 `json:"lag"`
	Pending    int    `json:"pending"`
	Leader     *bool  `json:"leader"`
	StoreError string `json:"store_error"`
}

func (s fleetStatus) leader() bool { return s.Leader != nil && *s.Leader }

// fleetEdgeResult is what the scenario measured of one edge.
type fleetEdgeResult struct {
	Edge        string  `json:"edge"`
	OpsPerS     float64 `json:"ops_per_s"` // applied by the edge in the window
	LagP50      float64 `json:"lag_p50_s"` // commit → segment stored
	LagP99      float64 `json:"lag_p99_s"`
	LagN        int     `json:"lag_samples"`
	SegPutsPerS float64 `json:"segment_puts_per_s"` // segments holding a change of the window ÷ window
	CPU         float64 `json:"edge_cpu_cores"`     // the edge process, in the window
	RSS         int64   `json:"edge_rss_bytes"`
	Written     uint64  `json:"written"` // simulate's own counts
	Acked       uint64  `json:"acked"`
	Lost        uint64  `json:"lost"`
	Mismatched  uint64  `json:"mismatched"`
	Changes     uint64  `json:"changes"` // the edge's whole change log at the end
	Devices     int     `json:"devices"`
	Keys        int     `json:"keys"`
	RestoredSeq uint64  `json:"restored_seq"`
	RestoreS    float64 `json:"restore_s"` // process start → restored edge serving
	Equal       bool    `json:"restored_equal"`
	Diff        string  `json:"diff,omitempty"`
}

// scenFleet is scenario 12.
func (r *Runner) scenFleet(ctx context.Context, sec *Section) error {
	nEdges, nDev := r.pick(3, 10), r.pick(30, 300)
	s3, err := r.StartS3(ctx)
	if err != nil {
		return err
	}
	defer s3.Stop()
	bin, err := r.iotkvBinary(ctx)
	if err != nil {
		return err
	}
	acc, err := r.fleetIdentities(nEdges, nDev)
	if err != nil {
		return err
	}
	devPW, err := r.passwordFile(fleetDeviceAcc)
	if err != nil {
		return err
	}
	hc, err := r.HTTPClient(4)
	if err != nil {
		return err
	}
	hc.Timeout = 5 * time.Second
	store := s3.URL(fleetStore)

	masters := make([]*Server, 2)
	for i := range masters {
		m, err := r.startIotkv(ctx, fleetMasterName(i), s3.Env(), "master", "--name", fleetMasterName(i),
			"--certs", r.PKI.Certs, "--accounts", acc, "--listen-edges", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
			"--store", store, "--s3-endpoint", s3.Endpoint, "--flush-interval", "1s", "--flush-bytes", "1MiB",
			"--lease-ttl", fleetLeaseTTL.String(), "--snapshot-interval", fleetSnapshot.String(), "--log-level", "warn")
		if err != nil {
			return err
		}
		defer m.Stop()
		if m.Extra["edges"] == "" {
			return fmt.Errorf("%s reported no edge listener address: %v", m.Name, m.Extra)
		}
		masters[i] = m
	}
	dial := "mqtts://" + masters[0].Extra["edges"] + ",mqtts://" + masters[1].Extra["edges"]
	startEdge := func(i int) (*Server, error) {
		id := fleetEdgeID(i)
		pw, err := r.passwordFile(id)
		if err != nil {
			return nil, err
		}
		return r.startIotkv(ctx, id, nil, "edge", "--id", id, "--data", filepath.Join(r.Work, id), "--certs", r.PKI.Certs,
			"--accounts", acc, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--master", dial,
			"--password-file", pw, "--log-level", "warn")
	}
	edges := make([]*Server, nEdges)
	ids := make([]string, nEdges)
	for i := range edges {
		e, err := startEdge(i + 1)
		if err != nil {
			return err
		}
		defer e.Stop()
		edges[i], ids[i] = e, fleetEdgeID(i+1)
	}
	if _, err := r.waitFleet(ctx, hc, masters, 60*time.Second, "every edge connected to both masters", func(st map[string]fleetStatus) bool {
		for _, id := range ids {
			if !st[id].Connected {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}

	// The devices: one simulate process per edge, started two edges at a
	// time (each pair waits until its edges count all M connected: every
	// first login is a bcrypt check at cost 10, so the two cores are busy
	// without a storm of N×M handshakes at once). They write until the
	// scenario interrupts them after the kill; simulate then stops
	// writing, flushes, reads every key back (--verify) and exits.
	// The window is measured r.rounds() times, back to back on the same
	// fleet; the figures are the median window's. The full run keeps its
	// windows to 45 s in all (at least 15 s each): with the bcrypt-bound
	// connect of 3,000 devices the scenario must stay within 4 minutes.
	rounds := r.rounds()
	warm, afterKill := r.dur(3*time.Second, 5*time.Second), r.dur(3*time.Second, 5*time.Second)
	window := r.dur(12*time.Second, max(15*time.Second, 45*time.Second/time.Duration(max(rounds, 1))))
	loadStart := time.Now()
	sims := make([]*Proc, nEdges)
	const wave = 2
	for first := 0; first < nEdges; first += wave {
		for i := first; i < min(first+wave, nEdges); i++ {
			e := edges[i]
			p, err := StartEnv("sim-"+ids[i], r.Work, nil, bin, "device", "simulate", "--certs", r.PKI.Certs,
				"--password-file", devPW, "--edge", e.MQTT, "--rest", "https://"+e.HTTPS,
				"--queue", filepath.Join(r.Work, "queues", ids[i]), "--devices", strconv.Itoa(nDev),
				"--prefix", fleetDevicePrefix(i+1), "--rate", fmt.Sprint(fleetRate), "--keys", strconv.Itoa(fleetKeys),
				"--duration", "10m", "--verify", "--log-level", "warn") // 10m: a bound; the scenario ends it
			if err != nil {
				return err
			}
			defer p.Stop(5 * time.Second)
			sims[i] = p
		}
		for i := first; i < min(first+wave, nEdges); i++ {
			if err := r.waitClients(ctx, edges[i], nDev, sims[i], 120*time.Second); err != nil {
				return err
			}
		}
	}
	connectSecs := time.Since(loadStart).Seconds()
	r.Log.Info("fleet devices connected", "edges", nEdges, "devices", nEdges*nDev, "took_s", connectSecs)
	if err := sleepCtx(ctx, warm); err != nil {
		return err
	}

	// The window: both masters' metrics and CPU, every edge's applied ops.
	type snap struct {
		metrics []map[string]float64
		cpu     []time.Duration
		at      time.Time
	}
	all := append(append([]*Server{}, masters...), edges...)
	for _, p := range sims {
		all = append(all, &Server{Name: p.Name, Proc: p}) // CPU only: no metrics
	}
	take := func() (snap, error) {
		s := snap{at: time.Now()}
		for _, sv := range all {
			var h map[string]float64
			if sv.HTTPS != "" {
				var err error
				if h, err = r.metrics(ctx, sv); err != nil {
					return s, err
				}
			}
			c, err := CPUTime(sv.Proc.Pid())
			if err != nil {
				return s, err
			}
			s.metrics, s.cpu = append(s.metrics, h), append(s.cpu, c)
		}
		return s, nil
	}
	// One window: both masters' metrics and CPU, every edge's applied ops.
	type fleetWindow struct {
		at0, at1  time.Time
		secs      float64
		res       []fleetEdgeResult
		simCPU    float64
		masterCPU []float64
		puts      map[string]float64
		requests  float64
	}
	windows, err := inRounds(rounds, func(int) (fleetWindow, error) {
		w0, err := take()
		if err != nil {
			return fleetWindow{}, err
		}
		if err := sleepCtx(ctx, window); err != nil {
			return fleetWindow{}, err
		}
		w1, err := take()
		if err != nil {
			return fleetWindow{}, err
		}
		fw := fleetWindow{at0: w0.at, at1: w1.at, secs: w1.at.Sub(w0.at).Seconds(), res: make([]fleetEdgeResult, nEdges), puts: map[string]float64{}}
		for i, e := range edges {
			k := len(masters) + i
			fw.res[i] = fleetEdgeResult{Edge: ids[i], RSS: e.Mem().RSS,
				OpsPerS: (w1.metrics[k]["iotkv_ops_applied_total"] - w0.metrics[k]["iotkv_ops_applied_total"]) / fw.secs,
				CPU:     (w1.cpu[k] - w0.cpu[k]).Seconds() / fw.secs}
		}
		for k := len(masters) + nEdges; k < len(all); k++ {
			fw.simCPU += (w1.cpu[k] - w0.cpu[k]).Seconds() / fw.secs
		}
		for i := range masters {
			fw.masterCPU = append(fw.masterCPU, (w1.cpu[i]-w0.cpu[i]).Seconds()/fw.secs)
			for k, v := range w1.metrics[i] {
				if !strings.HasPrefix(k, "iotkv_s3_requests_total{") {
					continue
				}
				fw.requests += v - w0.metrics[i][k]
				if kind := label(k, "kind"); strings.HasPrefix(kind, "put_") {
					fw.puts[kind] += v - w0.metrics[i][k]
				}
			}
		}
		return fw, nil
	})
	if err != nil {
		return err
	}
	masterMem := make([]Mem, len(masters))
	for i, m := range masters {
		masterMem[i] = m.Mem()
	}

	// An extra edge joins the running fleet: from its process start to
	// both masters listing it connected.
	joinStart := time.Now()
	extra, err := startEdge(nEdges + 1)
	if err != nil {
		return err
	}
	defer extra.Stop()
	joinReady := time.Since(joinStart).Seconds()
	extraID := fleetEdgeID(nEdges + 1)
	if _, err := r.waitFleet(ctx, hc, masters, 60*time.Second, "the extra edge listed by both masters", func(st map[string]fleetStatus) bool {
		return st[extraID].Connected
	}); err != nil {
		return err
	}
	joinListed := time.Since(joinStart).Seconds()
	r.Log.Info("extra edge listed", "ready_s", joinReady, "listed_s", joinListed)

	// Lag per edge and window, commit → the segment holding the change
	// stored, from the bucket's files (read now: the last window's last
	// changes were stored during the join; no compaction deletes them
	// before fleetSnapshot).
	worstLag := func(fw fleetWindow) float64 {
		w := 0.0
		for _, e := range fw.res {
			w = max(w, e.LagP99)
		}
		return w
	}
	for _, fw := range windows {
		for i := range fw.res {
			root := filepath.Join(s3.Data, s3.Bucket, fleetStore, "edges", ids[i])
			st, err := segmentLags(root, fw.at0, fw.at1)
			if err != nil {
				return err
			}
			if st.Lags.Len() == 0 {
				return fmt.Errorf("%s: no segment under %s holds a change of the window", ids[i], root)
			}
			fw.res[i].LagP50, fw.res[i].LagP99, fw.res[i].LagN = st.Lags.Quantile(0.5)/1000, st.Lags.Quantile(0.99)/1000, st.Lags.Len()
			fw.res[i].SegPutsPerS = float64(st.Segs) / fw.secs
		}
	}
	medWindow, worstLags := medianRound(windows, worstLag)
	putRate := func(fw fleetWindow) float64 {
		t := 0.0
		for _, v := range fw.puts {
			t += v
		}
		return t / fw.secs / float64(nEdges)
	}
	_, putRounds := medianRound(windows, putRate)
	res, secs, simCPU, masterCPU, puts, requests := medWindow.res, medWindow.secs, medWindow.simCPU, medWindow.masterCPU, medWindow.puts, medWindow.requests

	// kill -9 the master holding the most leases while the devices write.
	holders, err := r.leaseHolders(ctx, hc, masters, ids, 30*time.Second)
	if err != nil {
		return err
	}
	held := make([]int, len(masters))
	for _, m := range holders {
		held[m]++
	}
	victim := 0
	if held[1] > held[0] {
		victim = 1
	}
	survivor := 1 - victim
	var lost []string
	for _, id := range ids {
		if holders[id] == victim {
			lost = append(lost, id)
		}
	}
	appliedAtKill := make([]float64, nEdges)
	for i, e := range edges {
		h, err := r.metrics(ctx, e)
		if err != nil {
			return err
		}
		appliedAtKill[i] = h["iotkv_ops_applied_total"]
	}
	masters[victim].Proc.Kill()
	died := time.Now()
	takeoverBound := fleetLeaseTTL + fleetLeaseTTL/2 + fleetLeaseTTL/3 + time.Second
	if _, err := r.waitFleet(ctx, hc, masters[survivor:survivor+1], 3*takeoverBound, "the survivor holding every lease of the killed master", func(st map[string]fleetStatus) bool {
		for _, id := range lost {
			if !st[id].leader() {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	takeover := time.Since(died).Seconds()
	r.Log.Info("lease holder killed", "master", masters[victim].Name, "leases", len(lost), "takeover_s", takeover)
	if err := sleepCtx(ctx, afterKill); err != nil {
		return err
	}

	// The devices stop (SIGINT), flush and verify; simulate exits 1 when
	// an op went unacknowledged or a key is lost or differs.
	for _, p := range sims {
		if err := p.Interrupt(); err != nil {
			return err
		}
	}
	var simErrs []error
	for i, p := range sims {
		if err := p.Wait(120 * time.Second); err != nil {
			simErrs = append(simErrs, err)
			continue
		}
		if err := parseSimulate(p.Log, &res[i]); err != nil {
			simErrs = append(simErrs, err)
		}
	}
	if err := errors.Join(simErrs...); err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	loadStop := time.Now()
	opsAfterKill := 0.0
	var catchUp float64
	for i, e := range edges {
		h, err := r.metrics(ctx, e)
		if err != nil {
			return err
		}
		n := uint64(h["iotkv_ops_applied_total"])
		opsAfterKill += float64(n) - appliedAtKill[i]
		res[i].Changes = n
		id := ids[i]
		if _, err := r.waitFleet(ctx, hc, masters[survivor:survivor+1], 60*time.Second, "the survivor storing all of "+id, func(st map[string]fleetStatus) bool {
			s := st[id]
			return s.Connected && s.Seq == n && s.EdgeSeq == n && s.Lag == 0 && s.Pending == 0 && s.StoreError == ""
		}); err != nil {
			return err
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			h, err := r.metrics(ctx, e)
			if err != nil {
				return err
			}
			if c := uint64(h["iotkv_backup_confirmed_seq"]); c == n {
				break
			} else if time.Now().After(deadline) {
				return fmt.Errorf("%s: confirmed seq %d, want %d", id, c, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	catchUp = time.Since(loadStop).Seconds()

	// Every edge restored from the bucket alone into an empty dir must
	// serve what the edge serves.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	restoreErrs := make([]error, nEdges)
	for i := range edges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			restoreErrs[i] = r.restoreAndCompare(ctx, hc, s3, acc, edges[i], &res[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(restoreErrs...); err != nil {
		return err
	}

	// The report.
	sum := func(f func(fleetEdgeResult) float64) (total float64, vals []float64) {
		for _, e := range res {
			total += f(e)
			vals = append(vals, f(e))
		}
		sort.Float64s(vals)
		return total, vals
	}
	_, lags := sum(func(e fleetEdgeResult) float64 { return e.LagP99 })
	_, lag50 := sum(func(e fleetEdgeResult) float64 { return e.LagP50 })
	ops, _ := sum(func(e fleetEdgeResult) float64 { return e.OpsPerS })
	_, segPuts := sum(func(e fleetEdgeResult) float64 { return e.SegPutsPerS })
	edgeCPU, _ := sum(func(e fleetEdgeResult) float64 { return e.CPU })
	edgeRSS, _ := sum(func(e fleetEdgeResult) float64 { return float64(e.RSS) })
	var written, acked, lostKeys, mismatched, keys, equal int
	for _, e := range res {
		written, acked, lostKeys, mismatched = written+int(e.Written), acked+int(e.Acked), lostKeys+int(e.Lost), mismatched+int(e.Mismatched)
		keys += e.Keys
		if e.Equal {
			equal++
		}
	}
	totalPuts := 0.0
	for _, v := range puts {
		totalPuts += v
	}
	n := float64(nEdges)
	putsPerEdge := totalPuts / secs / n
	median := func(v []float64) float64 { return v[len(v)/2] }
	ms := func(s float64) string { return fmt.Sprintf("%.0f ms", s*1000) }
	pct := func(c float64) string { return fmt.Sprintf("%.1f %%", c*100) }
	mCPU := masterCPU[0] + masterCPU[1]
	mRSS := masterMem[0].RSS + masterMem[1].RSS
	leaseLong := 2 / fleetLeaseTTL.Seconds()

	sec.Row("measure", "value", "beside")
	sec.Row("fleet", fmt.Sprintf("%d edges × %d devices", nEdges, nDev),
		fmt.Sprintf("one `iotkv device simulate` per edge; all %d devices connected %.1f s after the first simulate started", nEdges*nDev, connectSecs))
	sec.Row("load in the window, every edge", fmt.Sprintf("%.0f ops/s", ops), fmt.Sprintf("%.1f ops/s per edge; each device one put every %.0f s", ops/n, 1/fleetRate))
	sec.Row("backup lag p99 per edge, commit → segment stored: median / worst edge", ms(median(lags))+" / "+ms(lags[len(lags)-1]),
		fmt.Sprintf("p50: median %s, worst %s; %d changes", ms(median(lag50)), ms(lag50[len(lag50)-1]), sumLagN(res)))
	sec.Row("S3 PUTs per second per edge (both masters, every kind)", fmt.Sprintf("%.2f", putsPerEdge),
		fmt.Sprintf("segments %.2f, lease %.2f, other %.2f (masters' iotkv_s3_requests_total)", puts["put_segment"]/secs/n, puts["put_lease"]/secs/n,
			max(0, totalPuts-puts["put_segment"]-puts["put_lease"])/secs/n))
	sec.Row("segments stored per second per edge, from the bucket: median / max", fmt.Sprintf("%.2f / %.2f", median(segPuts), segPuts[len(segPuts)-1]), "")
	sec.Row("S3 requests of every kind per second per edge", fmt.Sprintf("%.2f", requests/secs/n), "")
	sec.Row("master CPU per edge (both masters)", pct(mCPU/n)+" of a core",
		fmt.Sprintf("%s: %s, %s: %s of a core in all", masters[0].Name, pct(masterCPU[0]), masters[1].Name, pct(masterCPU[1])))
	sec.Row("master RSS per edge (both masters)", fmtMiB(mRSS/int64(nEdges)),
		fmt.Sprintf("%s: %s (peak %s), %s: %s (peak %s)", masters[0].Name, fmtMiB(masterMem[0].RSS), fmtMiB(masterMem[0].HWM),
			masters[1].Name, fmtMiB(masterMem[1].RSS), fmtMiB(masterMem[1].HWM)))
	sec.Row("edge process CPU / RSS, mean per edge", pct(edgeCPU/n)+" / "+fmtMiB(int64(edgeRSS/n)), "")
	sec.Row("device side: simulate process CPU, mean per edge", pct(simCPU/n), fmt.Sprintf("%d devices each", nDev))
	sec.Row("an extra edge listed (connected) by both masters' GET /v1/backups", fmt.Sprintf("%.2f s after its process started", joinListed),
		fmt.Sprintf("the edge itself was serving after %.2f s", joinReady))
	sec.Row(fmt.Sprintf("kill -9 of %s, holding %d of %d leases", masters[victim].Name, len(lost), nEdges), fmt.Sprintf("%.1f s", takeover),
		fmt.Sprintf("until %s holds them all; %.0f ops acknowledged after the kill", masters[survivor].Name, opsAfterKill))
	sec.Row("survivor stored and confirmed every change of every edge", fmt.Sprintf("%.1f s after the devices' last flush", catchUp), "")
	sec.Row("edges restored from S3 (`iotkv edge --restore-from s3://`) equal to the edge over REST", fmt.Sprintf("%d of %d", equal, nEdges),
		fmt.Sprintf("%d keys; slowest restore %.1f s", keys, maxRestore(res)))
	sec.Row("devices' own check (simulate --verify)", fmt.Sprintf("%d written, %d acknowledged", written, acked), fmt.Sprintf("%d lost, %d mismatched", lostKeys, mismatched))
	sec.Note("Processes: versitygw (posix backend), two `iotkv master --listen-edges 127.0.0.1:0 --store s3://%s/%s --flush-interval 1s --flush-bytes 1MiB --lease-ttl %s --snapshot-interval %s`, %d `iotkv edge --master mqtts://A,mqtts://B` and one `iotkv device simulate --devices %d --rate %g --keys %d --verify` per edge (each device its own mTLS connection and durable queue; every write a put, new keys first, then overwrites of its %d keys). All on this machine's loopback.",
		s3.Bucket, fleetStore, fleetLeaseTTL, fleetSnapshot, nEdges, nDev, fleetRate, fleetKeys, fleetKeys)
	sec.Rounds = rounds
	sec.Note("%d window(s) of %.0f s, back to back on the same fleet; every load, lag, PUT, CPU and RSS figure is the median window's by worst-edge lag p99. The join, the kill and the restores happen once, after the windows.", rounds, window.Seconds())
	sec.Note("%s", roundsNote("worst-edge backup lag", "p99", worstLags, ms))
	sec.Note("%s", roundsNote("S3 PUTs per second per edge", "rate", putRounds, func(v float64) string { return fmt.Sprintf("%.2f", v) }))
	sec.SetSpread("worst-edge lag p99", worstLags, ms)
	sec.Note("Window: %.0f s after %s of warm-up. Lag: every change committed in the window, from its updated_at (edge clock) to the modification time of the segment object holding it, per edge from its directory in the bucket (as scenario 9). PUTs and requests: both masters' iotkv_s3_requests_total, difference of two scrapes around the window ÷ window ÷ %d edges; lease renewals are one per TTL/2 per edge (%.2f/s). CPU: user+system time of the master processes in the window (/proc/PID/stat); RSS at the window's end (/proc/PID/status).",
		secs, warm, nEdges, leaseLong)
	sec.Note("Connecting: the simulate processes start two edges at a time, each pair waiting until its edges count all their devices connected. Every device's first login is a bcrypt check at cost 10 (accounts.MinCost, the lowest `iotkv users` hashes at; later logins hit the edge's cache), so %d first logins are %d checks on this machine's %d cores: the connect time is mostly that.", nEdges*nDev, nEdges*nDev, cores())
	sec.Note("Kill: after the window and the extra edge, the master holding the most edge leases is killed with SIGKILL while the devices keep writing; the survivor is polled (GET /v1/backups, leader) until it holds every lease the dead one held. %s later every simulate is interrupted (SIGINT: it stops writing, flushes and verifies). Once they have exited, the survivor must report seq = edge_seq = the edge's applied ops and the edge its confirm; then each edge is restored from the bucket into an empty dir with no master involved, and its devices (last_seq, key count) and every key (value, ts) over REST must equal the running edge's.", afterKill)
	sec.Check("nothing acknowledged is lost across kill -9 of the lease holder: every edge restored from S3 equals the edge", float64(equal),
		equal == nEdges && lostKeys == 0 && mismatched == 0 && acked == written,
		"%d of %d edges equal (%d keys); devices: %d acknowledged of %d written, %d lost", equal, nEdges, keys, acked, written, lostKeys)
	sec.Check("backup lag p99 per edge with two masters on S3 ≤ 2 s (worst edge)", lags[len(lags)-1], lags[len(lags)-1] <= 2,
		"%s (median edge %s)", ms(lags[len(lags)-1]), ms(median(lags)))
	sec.Check("S3 PUTs per second per edge ≤ 1.1", putsPerEdge, putsPerEdge <= 1.1, "%.2f in the median-lag window; over the windows %s", putsPerEdge, spread(putRounds, func(v float64) string { return fmt.Sprintf("%.2f", v) }))
	sec.Check("lease takeover after kill -9 ≤ TTL + TTL/2 + TTL/3 + 1 s", takeover, takeover <= takeoverBound.Seconds(),
		"%.1f s (bound %.1f s)", takeover, takeoverBound.Seconds())
	sec.Raw["edges"], sec.Raw["devices_per_edge"], sec.Raw["window_s"], sec.Raw["per_edge"] = nEdges, nDev, secs, res
	sec.Raw["simulate_cpu_cores"] = simCPU
	sec.Raw["rounds_worst_lag_p99_s"], sec.Raw["rounds_puts_per_s_per_edge"] = worstLags, putRounds
	sec.Raw["master_cpu_cores"], sec.Raw["master_mem"], sec.Raw["puts"], sec.Raw["requests"] = masterCPU, masterMem, puts, requests
	sec.Raw["join_ready_s"], sec.Raw["join_listed_s"], sec.Raw["takeover_s"], sec.Raw["catch_up_s"] = joinReady, joinListed, takeover, catchUp
	sec.Raw["ops_after_kill"], sec.Raw["connect_s"] = opsAfterKill, connectSecs
	if opsAfterKill == 0 {
		return errors.New("no op was acknowledged after the kill: the load ended before it")
	}
	return nil
}

func sumLagN(res []fleetEdgeResult) int {
	n := 0
	for _, e := range res {
		n += e.LagN
	}
	return n
}

func maxRestore(res []fleetEdgeResult) float64 {
	m := 0.0
	for _, e := range res {
		m = max(m, e.RestoreS)
	}
	return m
}

// fleetIdentities issues the fleet's certificates into the bench CA
// (missing ones only: they are kept between runs like the rest of the
// PKI) and writes this run's accounts file: the bench's accounts plus every
// fleet edge, master and device, hashed at accounts.MinCost. Every
// simulated device has the same password (simulate --password-file takes
// one), so one hash serves them all; the edge still checks each device's
// first login with bcrypt (its cache is per account).
func (r *Runner) fleetIdentities(edges, devices int) (string, error) {
	type ident struct {
		name, certRole string
		role           iotkv.Role
	}
	var ids []ident
	for i := 1; i <= edges+1; i++ {
		ids = append(ids, ident{fleetEdgeID(i), certs.RoleEdge, iotkv.RoleEdge})
	}
	for i := range 2 {
		ids = append(ids, ident{fleetMasterName(i), certs.RoleMaster, iotkv.RoleMaster})
	}
	for i := 1; i <= edges; i++ {
		for j := 1; j <= devices; j++ {
			ids = append(ids, ident{fmt.Sprintf("%s%04d", fleetDevicePrefix(i), j), certs.RoleDevice, iotkv.RoleDevice})
		}
	}
	var missing []ident
	for _, id := range ids {
		p := r.PKI.Paths(id.name)
		_, errC := os.Stat(p.Cert)
		_, errK := os.Stat(p.Key)
		if errC != nil || errK != nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t0 := time.Now()
		errs := make([]error, len(missing))
		work := make(chan int)
		var wg sync.WaitGroup
		for range runtime.NumCPU() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					errs[i] = certs.Issue(r.PKI.Certs, certs.Request{Name: missing[i].name, Role: missing[i].certRole, Force: true})
				}
			}()
		}
		for i := range missing {
			work <- i
		}
		close(work)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return "", fmt.Errorf("fleet certificates: %w", err)
		}
		r.Log.Info("fleet certificates issued (kept for later runs)", "count", len(missing), "took", time.Since(t0).Round(time.Millisecond))
	}
	f, err := accounts.Load(r.PKI.Accounts)
	if err != nil {
		return "", err
	}
	hash := func(name string) (string, error) { return accounts.HashPassword(Password(name), accounts.MinCost) }
	devHash, err := hash(fleetDeviceAcc)
	if err != nil {
		return "", err
	}
	for _, id := range ids {
		h := devHash
		if id.role != iotkv.RoleDevice {
			if h, err = hash(id.name); err != nil {
				return "", err
			}
		}
		f.Accounts = append(f.Accounts, accounts.Account{Name: id.name, Role: id.role, Hash: h})
	}
	path := filepath.Join(r.Work, "fleet-accounts.json")
	if err := f.Save(path); err != nil {
		return "", err
	}
	return path, nil
}

// passwordFile writes name's bench password to a file for --password-file.
func (r *Runner) passwordFile(name string) (string, error) {
	path := filepath.Join(r.Work, name+".pw")
	if err := os.WriteFile(path, []byte(Password(name)+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("password file of %s: %w", name, err)
	}
	return path, nil
}

// fleetBackups is a master's GET /v1/backups, edge → status.
func (r *Runner) fleetBackups(ctx context.Context, hc *http.Client, m *Server) (map[string]fleetStatus, error) {
	var body struct {
		Edges []fleetStatus `json:"edges"`
	}
	code, err := GetJSON(ctx, hc, "https://"+m.HTTPS+"/v1/backups", AdminName, &body)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("%s: GET /v1/backups: status %d", m.Name, code)
	}
	out := make(map[string]fleetStatus, len(body.Edges))
	for _, st := range body.Edges {
		out[st.Edge] = st
	}
	return out, nil
}

// waitFleet polls every master's GET /v1/backups (every 50 ms) until ok
// holds for each of them, and returns when that was.
func (r *Runner) waitFleet(ctx context.Context, hc *http.Client, masters []*Server, timeout time.Duration, what string, ok func(map[string]fleetStatus) bool) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	var last map[string]fleetStatus
	var lastErr error
	for {
		all := true
		for _, m := range masters {
			st, err := r.fleetBackups(ctx, hc, m)
			if err != nil || !ok(st) {
				all, last, lastErr = false, st, err
				break
			}
		}
		if all {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s: not within %s (last status %+v, err %v)", what, timeout, last, lastErr)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return time.Time{}, err
		}
	}
}

// leaseHolders waits until every edge of ids has exactly one master that
// says leader, and returns edge → index of that master.
func (r *Runner) leaseHolders(ctx context.Context, hc *http.Client, masters []*Server, ids []string, timeout time.Duration) (map[string]int, error) {
	deadline := time.Now().Add(timeout)
	for {
		sts := make([]map[string]fleetStatus, len(masters))
		var err error
		for i, m := range masters {
			if sts[i], err = r.fleetBackups(ctx, hc, m); err != nil {
				break
			}
		}
		holders := map[string]int{}
		ok := err == nil
		for _, id := range ids {
			n := 0
			for i := range masters {
				if ok && sts[i][id].leader() {
					holders[id] = i
					n++
				}
			}
			ok = ok && n == 1
		}
		if ok {
			return holders, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no single lease holder per edge within %s (holders %v, err %v)", timeout, holders, err)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// waitClients waits until the edge counts n connected MQTT clients.
func (r *Runner) waitClients(ctx context.Context, e *Server, n int, p *Proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	got := 0.0
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("%s exited: %s", p.Name, p.Tail())
		}
		if h, err := r.metrics(ctx, e); err == nil {
			if got = h["iotkv_mqtt_connected_clients"]; got >= float64(n) {
				return nil
			}
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s: %.0f of %d devices connected after %s", e.Name, got, n, timeout)
}

var (
	simulateLine = regexp.MustCompile(`simulate: devices=\d+ written=(\d+) acked=(\d+)`)
	verifyLine   = regexp.MustCompile(`verify: written=\d+ acked=\d+ lost=(\d+) mismatched=(\d+)`)
	restoredSeq  = regexp.MustCompile(`msg="restore: done".* seq=(\d+)`)
)

// parseSimulate reads simulate's summary and verify lines from its log.
func parseSimulate(log string, e *fleetEdgeResult) error {
	b, err := os.ReadFile(log)
	if err != nil {
		return fmt.Errorf("simulate output: %w", err)
	}
	m, v := simulateLine.FindSubmatch(b), verifyLine.FindSubmatch(b)
	if m == nil || v == nil {
		return fmt.Errorf("%s: no summary and verify lines in %q", log, tail(b))
	}
	e.Written, _ = strconv.ParseUint(string(m[1]), 10, 64)
	e.Acked, _ = strconv.ParseUint(string(m[2]), 10, 64)
	e.Lost, _ = strconv.ParseUint(string(v[1]), 10, 64)
	e.Mismatched, _ = strconv.ParseUint(string(v[2]), 10, 64)
	return nil
}

// fleetRecord is one key as REST serves it, for comparing two edges.
type fleetRecord struct {
	Value string
	TS    *int64
}

// deviceState is what an edge serves of its devices over REST: last_seq
// and key count of each (GET /v1/devices), and every key.
type deviceState struct {
	Seq  map[string]uint64
	Keys map[string]int
	KV   map[string]fleetRecord // device + "/" + key
}

func (r *Runner) edgeState(ctx context.Context, hc *http.Client, e *Server) (deviceState, error) {
	st := deviceState{Seq: map[string]uint64{}, Keys: map[string]int{}, KV: map[string]fleetRecord{}}
	var devs struct {
		Devices []struct {
			Device  string `json:"device"`
			LastSeq uint64 `json:"last_seq"`
			Keys    int    `json:"keys"`
		} `json:"devices"`
	}
	base := "https://" + e.HTTPS
	if code, err := GetJSON(ctx, hc, base+"/v1/devices", AdminName, &devs); err != nil || code != http.StatusOK {
		return st, fmt.Errorf("%s: GET /v1/devices: status %d: %v", e.Name, code, err)
	}
	for _, d := range devs.Devices {
		st.Seq[d.Device], st.Keys[d.Device] = d.LastSeq, d.Keys
		after := ""
		for page := 0; ; page++ {
			var list struct {
				Items []iotkv.Record `json:"items"`
				Next  string         `json:"next"`
			}
			path := "/v1/kv/" + url.PathEscape(d.Device) + "?limit=1000&after=" + url.QueryEscape(after)
			if code, err := GetJSON(ctx, hc, base+path, AdminName, &list); err != nil || code != http.StatusOK {
				return st, fmt.Errorf("%s: GET %s: status %d: %v", e.Name, path, code, err)
			}
			for _, rec := range list.Items {
				var v any
				if err := json.Unmarshal(rec.Value, &v); err != nil {
					return st, fmt.Errorf("%s: %s/%s: value %q: %w", e.Name, d.Device, rec.Key, rec.Value, err)
				}
				c, _ := json.Marshal(v)
				st.KV[d.Device+"/"+rec.Key] = fleetRecord{Value: string(c), TS: rec.TS}
			}
			if list.Next == "" || list.Next == after || page > 1000 {
				break
			}
			after = list.Next
		}
	}
	return st, nil
}

// diffStates describes the first differences between want and got, ""
// when they are equal.
func diffStates(want, got deviceState) string {
	var d []string
	add := func(format string, args ...any) {
		if len(d) < 5 {
			d = append(d, fmt.Sprintf(format, args...))
		}
	}
	if len(want.Seq) != len(got.Seq) {
		add("%d devices, restored %d", len(want.Seq), len(got.Seq))
	}
	for dev, s := range want.Seq {
		if gs, ok := got.Seq[dev]; !ok {
			add("device %s missing", dev)
		} else if gs != s || got.Keys[dev] != want.Keys[dev] {
			add("device %s: last_seq %d, %d keys; restored %d, %d keys", dev, s, want.Keys[dev], gs, got.Keys[dev])
		}
	}
	if len(want.KV) != len(got.KV) {
		add("%d keys, restored %d", len(want.KV), len(got.KV))
	}
	for k, v := range want.KV {
		g, ok := got.KV[k]
		switch {
		case !ok:
			add("%s missing", k)
		case g.Value != v.Value || (g.TS == nil) != (v.TS == nil) || (g.TS != nil && *g.TS != *v.TS):
			add("%s: %s, restored %s", k, v.Value, g.Value)
		}
	}
	return strings.Join(d, "; ")
}

// restoreAndCompare restores edge e from the bucket alone into an empty
// dir (`iotkv edge --restore-from s3://`, no master) and compares what it
// serves over REST with e.
func (r *Runner) restoreAndCompare(ctx context.Context, hc *http.Client, s3 *S3Server, acc string, e *Server, res *fleetEdgeResult) error {
	want, err := r.edgeState(ctx, hc, e)
	if err != nil {
		return err
	}
	t0 := time.Now()
	label := e.Name + "-restored"
	rs, err := r.startIotkv(ctx, label, s3.Env(), "edge", "--id", e.Name, "--data", filepath.Join(r.Work, label),
		"--certs", r.PKI.Certs, "--accounts", acc, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--restore-from", s3.URL(fleetStore), "--s3-endpoint", s3.Endpoint)
	if err != nil {
		return fmt.Errorf("restore %s: %w", e.Name, err)
	}
	defer rs.Stop()
	res.RestoreS = time.Since(t0).Seconds()
	b, _ := os.ReadFile(rs.Proc.Log)
	if m := restoredSeq.FindSubmatch(b); m != nil {
		res.RestoredSeq, _ = strconv.ParseUint(string(m[1]), 10, 64)
	}
	got, err := r.edgeState(ctx, hc, rs)
	if err != nil {
		return err
	}
	res.Devices, res.Keys = len(want.Seq), len(want.KV)
	res.Diff = diffStates(want, got)
	if res.RestoredSeq != res.Changes {
		res.Diff = strings.TrimPrefix(res.Diff+fmt.Sprintf("; restored up to seq %d, the edge has %d", res.RestoredSeq, res.Changes), "; ")
	}
	res.Equal = res.Diff == ""
	if !res.Equal {
		r.Log.Error("restored edge differs", "edge", e.Name, "diff", res.Diff)
	}
	return nil
}
