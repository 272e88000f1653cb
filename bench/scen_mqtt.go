package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
)

const opsPerBatch = 100

// batchPayload is a batch of 100 puts, ~6.5 KB, the same bytes for every
// broker.
func batchPayload(_ string, seq uint64) []byte {
	b := make([]byte, 0, 7000)
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"ops":[`...)
	base := (seq % 50) * opsPerBatch
	for i := uint64(0); i < opsPerBatch; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"op":"put","key":"sensor/`...)
		b = strconv.AppendUint(b, base+i, 10)
		b = append(b, `","value":{"t":21.5,"h":40.25,"n":`...)
		b = strconv.AppendUint(b, seq, 10)
		b = append(b, `},"ts":1764000000123}`...)
	}
	return append(b, "]}"...)
}

func batchTopic(dev string, _ uint64) string { return iotkv.BatchTopic(dev) }

func kvTopic(dev string, seq uint64) string {
	return "iotkv/v1/devices/" + dev + "/kv/sensor/" + strconv.FormatUint(seq%100, 10)
}

func kvPayload(_ string, seq uint64) []byte {
	return []byte(`{"t":21.5,"h":40.25,"n":` + strconv.FormatUint(seq, 10) + `}`)
}

// mqttRun starts a server, connects the devices, runs one load per
// in-flight level and stops it.
type mqttRun struct {
	name     string
	start    func(context.Context) (*Server, error)
	topic    func(string, uint64) string
	payload  func(string, uint64) []byte
	inflight []int
	devices  []string
	before   func(context.Context, *Server) error // e.g. NATS's durable subscriber
	onLoad   func(context.Context, *Server)       // runs as the first load starts
	after    func(context.Context, *Server, map[int]LoadResult)
	// applied reads the server's own count of the messages it applied
	// (batches or single-op messages). When set, every round must end
	// with as many applied as acknowledged, or the scenario fails.
	applied func(context.Context, *Server) (int64, error)
}

func (r *Runner) runMQTT(ctx context.Context, m mqttRun) (map[int]LoadResult, *Server, error) {
	res, servers, skipped, err := r.compareMQTT(ctx, []mqttRun{m})
	if len(skipped) > 0 {
		return nil, nil, skipped[m.name]
	}
	return res[m.name], servers[m.name], err
}

// compareMQTT starts every system at once, connects the devices to each,
// and then measures them in alternation, round after round, so that a
// burst of noise from the machine's other tenants hits all of them alike;
// each figure is the median round. Systems that cannot run here are
// returned in skipped.
func (r *Runner) compareMQTT(ctx context.Context, runs []mqttRun) (map[string]map[int]LoadResult, map[string]*Server, map[string]error, error) {
	type live struct {
		m       mqttRun
		s       *Server
		clients []paho.Client
		seqs    []uint64 // per device, continued from round to round
	}
	skipped := map[string]error{}
	servers := map[string]*Server{}
	var systems []*live
	defer func() {
		for _, l := range systems {
			DisconnectAll(l.clients)
			l.s.Stop()
		}
	}()
	for _, m := range runs {
		s, err := m.start(ctx)
		if errors.Is(err, ErrSkip) {
			skipped[m.name] = err
			continue
		}
		if err != nil {
			return nil, servers, skipped, err
		}
		l := &live{m: m, s: s, seqs: make([]uint64, len(m.devices))}
		systems = append(systems, l)
		servers[m.name] = s
		if m.before != nil {
			if err := m.before(ctx, s); err != nil {
				return nil, servers, skipped, err
			}
		}
		if l.clients, err = r.ConnectAll(ctx, s.MQTT, m.devices); err != nil {
			return nil, servers, skipped, fmt.Errorf("%s: %w", m.name, err)
		}
	}
	rounds := r.rounds()
	all := map[string]map[int][]LoadResult{}
	for _, l := range systems {
		all[l.m.name] = map[int][]LoadResult{}
	}
	for li, w := range runs[0].inflight {
		for round := 0; round < rounds; round++ {
			for _, l := range systems {
				if li == 0 && round == 0 && l.m.onLoad != nil {
					l.m.onLoad(ctx, l.s)
				}
				var res LoadResult
				run := func() (int64, int64) {
					cpu0, _ := CPUTime(l.s.Proc.Pid())
					res = Load{Clients: l.clients, Devices: l.m.devices, Topic: l.m.topic, Payload: l.m.payload, InFlight: w, Seqs: l.seqs,
						Warmup: r.dur(500*time.Millisecond, time.Second), Duration: r.dur(2*time.Second, 5*time.Second)}.Run(ctx)
					if cpu1, err := CPUTime(l.s.Proc.Pid()); err == nil && res.Sent > 0 {
						res.ServerCPUus = float64(cpu1-cpu0) / float64(time.Microsecond) / float64(res.Sent)
					}
					return res.AckedAll, res.Errors
				}
				if l.m.applied == nil {
					run()
				} else {
					// Every publish of the round has its ack or its error
					// by now: the server applied exactly what it acked,
					// nothing was a duplicate of an earlier round.
					c, err := checkedRound(ctx, func(ctx context.Context) (int64, error) { return l.m.applied(ctx, l.s) }, run)
					if err != nil {
						return nil, servers, skipped, fmt.Errorf("%s: round %d (%d in flight): %w", l.m.name, round+1, w, err)
					}
					res.Applied = c.Applied
				}
				r.Log.Info("measured", "system", l.m.name, "inflight", w, "round", round+1, "msgs/s", int(res.MsgsPerS), "errors", res.Errors, "p99ms", res.P99ms,
					"acked", res.AckedAll, "applied", res.Applied)
				if res.Errors > 0 && res.Acked == 0 {
					return nil, servers, skipped, fmt.Errorf("%s: every publish failed (%d errors): %s", l.m.name, res.Errors, l.s.Proc.Tail())
				}
				all[l.m.name][w] = append(all[l.m.name][w], res)
			}
		}
	}
	out := map[string]map[int]LoadResult{}
	for _, l := range systems {
		out[l.m.name] = map[int]LoadResult{}
		for w, rs := range all[l.m.name] {
			var checks []AppliedCheck
			for _, x := range rs {
				if x.Applied >= 0 {
					checks = append(checks, AppliedCheck{Acked: x.AckedAll, Applied: x.Applied, Errors: x.Errors})
				}
			}
			med, rounds := medianRound(rs, func(x LoadResult) float64 { return x.MsgsPerS })
			_, p99s := medianRound(rs, func(x LoadResult) float64 { return x.P99ms })
			med.Rounds, med.RoundsP99, med.Checks = rounds, p99s, checks
			out[l.m.name][w] = med
		}
		if l.m.after != nil {
			l.m.after(ctx, l.s, out[l.m.name])
		}
	}
	return out, servers, skipped, nil
}

func (r *Runner) devices(n int) []string { return r.PKI.Devices[:n] }

// scenIngest is scenario 1.
func (r *Runner) scenIngest(ctx context.Context, sec *Section) error {
	devs := r.devices(50)
	const w = 16
	sec.Row("system", "batches/s (msgs/s)", "key-ops/s", "PUBACK p50 / p99", "server CPU per batch", "key-ops/s ÷ mosquitto msgs/s", "÷ raw Pebble keys/s")
	var applied atomic.Int64
	edge := mqttRun{name: "iotkv edge", start: func(ctx context.Context) (*Server, error) { return r.StartEdge(ctx, "", 0) },
		topic: batchTopic, payload: batchPayload, inflight: []int{w}, devices: devs,
		applied: r.appliedSeqs,
		after: func(ctx context.Context, s *Server, _ map[int]LoadResult) {
			if m, err := r.metrics(ctx, s); err == nil && m["iotkv_commit_seconds_count"] > 0 {
				n := m["iotkv_commit_seconds_count"]
				sec.Note("Edge group commits during the run: %.0f, mean %.1f ms each (build + fsync), mean %.0f writes (batches) per group.",
					n, 1000*m["iotkv_commit_seconds_sum"]/n, m["iotkv_commit_group_writes_sum"]/m["iotkv_commit_group_writes_count"])
				sec.Raw["edge_commit_metrics"] = map[string]float64{"groups": n, "seconds_sum": m["iotkv_commit_seconds_sum"], "writes_sum": m["iotkv_commit_group_writes_sum"]}
			}
			n, err := r.appliedSeqs(ctx, s)
			if err != nil {
				sec.Note("could not read /v1/devices after the run: %v", err)
			}
			applied.Store(n)
		}}
	res := map[string]LoadResult{}
	outs, _, skipped, err := r.compareMQTT(ctx, []mqttRun{
		edge,
		{name: "mosquitto", start: r.StartMosquitto, topic: batchTopic, payload: batchPayload, inflight: []int{w}, devices: devs},
		{name: "bare mochi", start: r.StartMochi, topic: batchTopic, payload: batchPayload, inflight: []int{w}, devices: devs},
	})
	if err != nil {
		return err
	}
	for name, err := range skipped {
		sec.Note("%s baseline skipped: %v", name, err)
	}
	for name, out := range outs {
		res[name] = out[w]
	}
	pks, err := inRounds(r.rounds(), func(int) (float64, error) { return r.rawPebble(ctx, 50, r.dur(2*time.Second, 10*time.Second)) })
	if err != nil {
		return err
	}
	pk, pkRounds := medianRound(pks, func(v float64) float64 { return v })
	e, mq := res["iotkv edge"], res["mosquitto"]
	edgeOps := e.MsgsPerS * opsPerBatch
	for _, name := range []string{"iotkv edge", "mosquitto", "bare mochi"} {
		v, ok := res[name]
		if !ok {
			continue
		}
		ops := "– (not a store)"
		if name == "iotkv edge" {
			ops = fmtRate(edgeOps)
		}
		sec.Row(name, fmtRate(v.MsgsPerS), ops, fmt.Sprintf("%.1f / %.1f ms", v.P50ms, v.P99ms), fmt.Sprintf("%.0f µs", v.ServerCPUus),
			fmt.Sprintf("%.2f×", ratio(v.MsgsPerS*opsPerBatch, mq.MsgsPerS)), fmt.Sprintf("%.2f×", ratio(v.MsgsPerS*opsPerBatch, pk)))
	}
	sec.Row("raw Pebble, 50 writers, Sync batches of 100", fmtRate(pk/opsPerBatch), fmtRate(pk), "–", "–", fmt.Sprintf("%.2f×", ratio(pk, mq.MsgsPerS)), "1.00×")
	sec.Note("Same load generator (paho.mqtt.golang, MQTT 3.1.1, mTLS, password) for every broker: 50 devices, %d batches in flight each, %d-byte batches of %d puts. mosquitto and bare mochi acknowledge from memory; the edge acknowledges after the group fsync. All brokers run at once with their devices connected and are loaded in turn, round after round (%d round(s) of %s after %s of warm-up); each figure is the median round. Every device's seq continues from round to round, so no round replays a batch the edge has applied.", w, len(batchPayload("", 1)), opsPerBatch, r.rounds(), r.dur(2*time.Second, 5*time.Second), r.dur(500*time.Millisecond, time.Second))
	for _, name := range []string{"iotkv edge", "mosquitto", "bare mochi"} {
		if v, ok := res[name]; ok && name == "iotkv edge" {
			sec.Note("%s", roundsNote(name, "key-ops/s", v.Rounds, perS(opsPerBatch)))
		} else if ok {
			sec.Note("%s", roundsNote(name, "msgs/s", v.Rounds, perS(1)))
		}
	}
	sec.Note("%s", roundsNote("raw Pebble (a fresh store each round, after the brokers)", "keys/s", pkRounds, perS(1)))
	sec.Note("%s", checkNote(e.Checks, "batches", "the sum of last_seq over the 50 devices in the edge's /v1/devices"))
	if n := applied.Load(); n > 0 {
		sec.Note("After the last round the edge's /v1/devices reports %d batches applied in all for the 50 devices (warm-up and every round).", n)
	}
	sec.Rounds = r.rounds()
	if mq.MsgsPerS > 0 {
		x := ratio(edgeOps, mq.MsgsPerS)
		sec.Check("key-ops/s ≥ 12× mosquitto's QoS 1 msgs/s", x, x >= 12, "%.1f× (%s key-ops/s vs %s msgs/s)", x, fmtRate(edgeOps), fmtRate(mq.MsgsPerS))
	}
	x := ratio(edgeOps, pk)
	sec.Check("key-ops/s ≥ 0.6× raw Pebble synced batches", x, x >= 0.6, "%.2f× (%s vs %s keys/s)", x, fmtRate(edgeOps), fmtRate(pk))
	sec.Raw["results"] = res
	sec.Raw["raw_pebble_keys_per_s"], sec.Raw["raw_pebble_rounds_keys_per_s"] = pk, pkRounds
	labels, vals := []string{}, []float64{}
	for _, name := range []string{"iotkv edge", "mosquitto", "bare mochi"} {
		if v, ok := res[name]; ok {
			labels, vals = append(labels, name), append(vals, v.MsgsPerS*opsPerBatch)
		}
	}
	labels, vals = append(labels, "raw Pebble"), append(vals, pk)
	r.Bars(sec, "ingest.png", "Durable ingest: ops/s (batches of 100, 50 devices)", "ops/s", labels, vals)
	if x < 0.7 {
		r.profileMissed(ctx, sec, "ingest", mqttRun{name: "iotkv edge (profiled)", start: func(ctx context.Context) (*Server, error) { return r.StartEdge(ctx, "", 0) },
			topic: batchTopic, payload: batchPayload, inflight: []int{w}, devices: devs})
	}
	r.shared.Store("ingest_batches_per_s", e.MsgsPerS)
	return nil
}

// appliedSeqs sums last_seq over the devices the edge has seen.
func (r *Runner) appliedSeqs(ctx context.Context, s *Server) (int64, error) {
	return r.appliedSeqsOf(ctx, s, nil)
}

// appliedSeqsOf sums last_seq over devs (every device when nil) in the
// edge's /v1/devices: the batches it applied for them, as each device's
// seqs run 1, 2, 3, ...
func (r *Runner) appliedSeqsOf(ctx context.Context, s *Server, devs []string) (int64, error) {
	c, err := r.HTTPClient(1)
	if err != nil {
		return 0, err
	}
	var out struct {
		Devices []struct {
			Device  string `json:"device"`
			LastSeq int64  `json:"last_seq"`
		} `json:"devices"`
	}
	if _, err := GetJSON(ctx, c, "https://"+s.HTTPS+"/v1/devices", AdminName, &out); err != nil {
		return 0, err
	}
	var n int64
	for _, d := range out.Devices {
		if devs == nil || contains(devs, d.Device) {
			n += d.LastSeq
		}
	}
	return n, nil
}

// rawPebble measures synced batches of 100 keys from writers goroutines.
func (r *Runner) rawPebble(ctx context.Context, writers int, d time.Duration) (float64, error) {
	dir, err := os.MkdirTemp(r.Work, "pebble-")
	if err != nil {
		return 0, fmt.Errorf("raw pebble: %w", err)
	}
	db, err := pebble.Open(filepath.Join(dir, "db"), &pebble.Options{})
	if err != nil {
		return 0, fmt.Errorf("raw pebble: %w", err)
	}
	defer db.Close()
	val := []byte(`{"t":21.5,"h":40.25,"n":123456}`)
	var keys atomic.Int64
	var counting atomic.Bool
	var firstErr error
	var once sync.Once
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var seq uint64
			for cctx.Err() == nil {
				b := db.NewBatch()
				base := (seq % 50) * opsPerBatch
				for i := uint64(0); i < opsPerBatch; i++ {
					k := fmt.Appendf(nil, "d\x00%s\x00sensor/%d", DeviceName(w+1), base+i)
					_ = b.Set(k, val, nil)
				}
				seq++
				if err := b.Commit(pebble.Sync); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				_ = b.Close()
				if counting.Load() {
					keys.Add(opsPerBatch)
				}
			}
		}()
	}
	time.Sleep(r.dur(500*time.Millisecond, time.Second))
	counting.Store(true)
	t0 := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	counting.Store(false)
	secs := time.Since(t0).Seconds()
	n := keys.Load()
	cancel()
	wg.Wait()
	if firstErr != nil {
		return 0, fmt.Errorf("raw pebble: %w", firstErr)
	}
	r.Log.Info("measured", "system", "raw pebble", "keys/s", int(float64(n)/secs))
	return float64(n) / secs, nil
}

// scenKV is scenario 2.
func (r *Runner) scenKV(ctx context.Context, sec *Section) error {
	devs := r.devices(50)
	levels := []int{1, 16}
	natsDevs := r.devices(51)
	sub := natsDevs[50]
	runs := []mqttRun{
		{name: "iotkv edge", start: func(ctx context.Context) (*Server, error) { return r.StartEdge(ctx, "", 0) }, applied: r.opsApplied},
		{name: "mosquitto", start: r.StartMosquitto},
		{name: "bare mochi", start: r.StartMochi},
		{name: "NATS (JetStream sync always)", start: func(ctx context.Context) (*Server, error) { return r.StartNATS(ctx, natsDevs) },
			before: func(ctx context.Context, s *Server) error {
				// A durable QoS 1 session on the topics, so that NATS stores
				// (and fsyncs) every message; it then disconnects.
				c, err := r.MQTTClient(s.MQTT, sub, false)
				if err != nil {
					return err
				}
				tok := c.Subscribe("iotkv/v1/devices/#", 1, nil)
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					return fmt.Errorf("nats durable subscriber: %v", tok.Error())
				}
				c.Disconnect(100)
				return nil
			},
			after: func(_ context.Context, s *Server, out map[int]LoadResult) {
				var sent int64
				for _, v := range out {
					sent += v.Sent
				}
				sec.Note("Check: NATS's JetStream store holds %s after %d QoS 1 messages, so it did store them (it stores nothing without the durable subscriber).", fmtMiB(dirSize(s.Data)), sent)
			}},
	}
	for i := range runs {
		runs[i].topic, runs[i].payload, runs[i].inflight, runs[i].devices = kvTopic, kvPayload, levels, devs
	}
	res, _, skipped, err := r.compareMQTT(ctx, runs)
	if err != nil {
		return err
	}
	for name, err := range skipped {
		sec.Note("%s baseline skipped: %v", name, err)
	}
	sec.Row("system", "msgs/s, 1 in flight", "p99", "msgs/s, 16 in flight", "p99", "server CPU per msg (1 / 16)", "edge ÷ this (1 / 16)")
	e := res["iotkv edge"]
	for _, m := range runs {
		v, ok := res[m.name]
		if !ok {
			continue
		}
		sec.Row(m.name, fmtRate(v[1].MsgsPerS), fmt.Sprintf("%.1f ms", v[1].P99ms), fmtRate(v[16].MsgsPerS), fmt.Sprintf("%.1f ms", v[16].P99ms),
			fmt.Sprintf("%.0f / %.0f µs", v[1].ServerCPUus, v[16].ServerCPUus),
			fmt.Sprintf("%.2f× / %.2f×", ratio(e[1].MsgsPerS, v[1].MsgsPerS), ratio(e[16].MsgsPerS, v[16].MsgsPerS)))
	}
	sec.Note("Topic iotkv/v1/devices/{device}/kv/sensor/N, %d-byte JSON values, QoS 1, MQTT 3.1.1 over mTLS, 50 devices, the same paho load generator for all, brokers loaded in turn, median of %d round(s) of %s each. mosquitto and bare mochi acknowledge from memory; the edge and NATS fsync before the PUBACK.", len(kvPayload("", 123456)), r.rounds(), r.dur(2*time.Second, 5*time.Second))
	for _, m := range runs {
		for _, w := range levels {
			if v, ok := res[m.name]; ok {
				sec.Note("%s", roundsNote(fmt.Sprintf("%s, %d in flight", m.name, w), "msgs/s", v[w].Rounds, perS(1)))
			}
		}
	}
	for _, w := range levels {
		sec.Note("%s", checkNote(e[w].Checks, fmt.Sprintf("messages (%d in flight)", w), "the edge's iotkv_ops_applied_total"))
	}
	sec.Rounds = r.rounds()
	// With one message in flight per device every round trip waits for an
	// fsync, so the disk sets a ceiling: what one fsync costs here, now.
	fls, err := inRounds(r.rounds(), func(int) (FsyncLatency, error) { return measureFsync(r.Work, r.dur(time.Second, 3*time.Second)) })
	if err != nil {
		return err
	}
	fl, flRounds := medianRound(fls, func(x FsyncLatency) float64 { return x.PerSecOK })
	ceiling := float64(len(devs)) * fl.PerSecOK
	sec.Note("This disk, in this run: 4 KiB append + fdatasync back to back in the bench's work directory, %.0f syncs/s (mean %.2f ms; p50 %.2f ms, p99 %.2f ms; %d syncs). With 1 in flight each of the %d devices waits for at least one fsync per message, so even if every fsync carried all %d the edge could ack at most %d × %.0f = %s msgs/s; it reached %s (%.2f× that ceiling). mosquitto and bare mochi never wait for the disk.",
		fl.PerSecOK, 1000/fl.PerSecOK, fl.P50ms, fl.P99ms, fl.N, len(devs), len(devs), len(devs), fl.PerSecOK, fmtRate(ceiling), fmtRate(e[1].MsgsPerS), ratio(e[1].MsgsPerS, ceiling))
	sec.Note("%s", roundsNote("fsync probe", "syncs/s", flRounds, func(v float64) string { return fmt.Sprintf("%.0f", v) }))
	sec.Raw["fsync"], sec.Raw["fsync_rounds_per_s"] = fl, flRounds
	aims := map[int]struct{ nats, mosquitto float64 }{1: {10, 0.5}, 16: {15, 0.8}}
	for _, w := range levels {
		aim := aims[w]
		if n, ok := res["NATS (JetStream sync always)"]; ok {
			x := ratio(e[w].MsgsPerS, n[w].MsgsPerS)
			sec.Check(fmt.Sprintf("%d in flight: ≥ %g× NATS sync-always", w, aim.nats), x, x >= aim.nats, "%.1f× (%s vs %s msgs/s)", x, fmtRate(e[w].MsgsPerS), fmtRate(n[w].MsgsPerS))
		}
		if mq, ok := res["mosquitto"]; ok {
			x := ratio(e[w].MsgsPerS, mq[w].MsgsPerS)
			sec.Check(fmt.Sprintf("%d in flight: ≥ %g× mosquitto", w, aim.mosquitto), x, x >= aim.mosquitto, "%.2f× (%s vs %s msgs/s)", x, fmtRate(e[w].MsgsPerS), fmtRate(mq[w].MsgsPerS))
		}
	}
	sec.Raw["results"] = res
	var labels []string
	var vals []float64
	for _, m := range runs {
		if v, ok := res[m.name]; ok {
			for _, w := range levels {
				labels = append(labels, fmt.Sprintf("%s/%d", short(m.name), w))
				vals = append(vals, v[w].MsgsPerS)
			}
		}
	}
	r.Bars(sec, "kv.png", "Single-op QoS 1 msgs/s (50 devices; name/in-flight)", "msgs/s", labels, vals)
	if mq, ok := res["mosquitto"]; ok && ratio(e[16].MsgsPerS, mq[16].MsgsPerS) < 0.8 {
		r.profileMissed(ctx, sec, "kv", mqttRun{name: "iotkv edge (profiled)", start: func(ctx context.Context) (*Server, error) { return r.StartEdge(ctx, "", 0) },
			topic: kvTopic, payload: kvPayload, inflight: []int{16}, devices: devs})
	}
	r.shared.Store("kv16_msgs_per_s", e[16].MsgsPerS)
	return nil
}

// opsApplied is the edge's count of applied ops (one per single-op message).
func (r *Runner) opsApplied(ctx context.Context, s *Server) (int64, error) {
	m, err := r.metrics(ctx, s)
	if err != nil {
		return 0, err
	}
	v, ok := m["iotkv_ops_applied_total"]
	if !ok {
		return 0, errors.New("the edge's /metrics has no iotkv_ops_applied_total")
	}
	return int64(v), nil
}

func short(name string) string {
	switch name {
	case "iotkv edge":
		return "edge"
	case "NATS (JetStream sync always)":
		return "nats"
	case "bare mochi":
		return "mochi"
	}
	return name
}
