//go:build linux

package chaos

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/faultproxy"
)

// Cycles is how many faults each scenario injects.
type Cycles struct {
	EdgeKills, DeviceKills, MasterKills, NetFaults, DiskFaults, ClockSkew, DiskLost int
}

// Short is the version `make test` runs; Full is `make chaos`.
var (
	Short = Cycles{EdgeKills: 3, DeviceKills: 3, MasterKills: 2, NetFaults: 3, DiskFaults: 2, ClockSkew: 2, DiskLost: 2}
	Full  = Cycles{EdgeKills: 20, DeviceKills: 20, MasterKills: 10, NetFaults: 9, DiskFaults: 6, ClockSkew: 4, DiskLost: 4}
)

const recoverWithin = 60 * time.Second

// jitter sleeps between lo and hi.
func jitter(lo, hi time.Duration) { time.Sleep(lo + rand.N(hi-lo+1)) }

// finishAll stops every writer cleanly (each flushes its queues).
func finishAll(t testing.TB, ws []*writer) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(ws))
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.finish()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// startWriters starts the devices in groups of per on edgeAddr and waits
// until every device has an acknowledged batch.
func (e *env) startWriters(edgeAddr string, per int, o writerOpts) []*writer {
	var ws []*writer
	for i := 0; i < len(e.devices); i += per {
		ws = append(ws, e.startWriter(edgeAddr, e.devices[i:min(i+per, len(e.devices))], o))
	}
	if _, ok := e.ledger.waitProgress(e.devices, map[string]uint64{}, time.Now(), recoverWithin); !ok {
		e.t.Fatal("the devices did not get their first batches acknowledged")
	}
	return ws
}

// finishEdge verifies the edge after the writers flushed, stops it, and
// checks its change log for ops applied twice.
func (e *env) finishEdge(ep *edgeProc, row *Row, exact, changeLog bool) check {
	t := e.t
	t.Helper()
	c, err := e.verifyEdge(ep.url(), exact)
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.p.stop(30 * time.Second); err != nil {
		t.Errorf("edge: SIGTERM: %v", err)
	}
	if changeLog {
		n, dups, err := changeLogDuplicates(ep.data, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.changes, c.twice = n, c.twice+dups
		if len(c.lostOps) > 0 {
			if trace, err := changeLogTrace(ep.data, c.lostOps); err == nil {
				t.Logf("change log of the devices with lost ops (change seq, batch seq, key, op):\n%s", trace)
			}
		}
	}
	row.Acked, row.Lost, row.Twice = c.acked, c.lost+c.badTS, c.twice
	return c
}

func report(t testing.TB, row Row, c check) {
	t.Helper()
	if row.Lost > 0 || row.Twice > 0 || c.badTS > 0 {
		for i, l := range c.lostOps {
			if i == 10 {
				break
			}
			t.Errorf("lost: %s/%s op %d (ts %d); the edge has %s", l.device, l.key, l.p.n, l.p.ts, l.got)
		}
		t.Errorf("%s: lost %d (wrong ts %d), applied twice %d", row.Scenario, row.Lost, c.badTS, row.Twice)
	}
	t.Logf("%s: cycles %d, ops acked %d, keys %d, lost %d, twice %d, change log entries checked %d, recovery %s",
		row.Scenario, row.Cycles, row.Acked, c.keys, row.Lost, row.Twice, c.changes, row.recovery())
}

// EdgeKills: kill -9 of the edge every few seconds under load from 20
// devices; the edge restarts on the same data dir and ports.
func EdgeKills(t *testing.T, bins Bins, cycles int) Row {
	start := time.Now()
	row := Row{Scenario: "1. kill -9 edge under load (20 devices)", Cycles: cycles}
	e := newEnv(t, bins, 20)
	ep := e.startEdge()
	ws := e.startWriters(ep.mqtt, 5, writerOpts{rate: 20, keys: 50})
	for range cycles {
		jitter(time.Second, 2500*time.Millisecond)
		ep.p.kill()
		from := e.ledger.ackSeqs(e.devices)
		at := time.Now()
		ep.start("")
		d, ok := e.ledger.waitProgress(e.devices, from, at, recoverWithin)
		if !ok {
			t.Fatalf("the devices did not recover within %v of the edge restart", recoverWithin)
		}
		row.Recovery = append(row.Recovery, d)
	}
	finishAll(t, ws)
	c := e.finishEdge(ep, &row, true, true)
	row.Notes = fmt.Sprintf("recovery: edge restart to every device acked again; change log of %d puts checked", c.changes)
	row.Wall = time.Since(start)
	report(t, row, c)
	return row
}

// DeviceKills: kill -9 of device processes mid-batch; each restarts on its
// queue.
func DeviceKills(t *testing.T, bins Bins, cycles int) Row {
	start := time.Now()
	row := Row{Scenario: "2. kill -9 device processes mid-batch", Cycles: cycles}
	e := newEnv(t, bins, 6)
	ep := e.startEdge()
	ws := e.startWriters(ep.mqtt, 1, writerOpts{rate: 100, keys: 20})
	for i := range cycles {
		jitter(300*time.Millisecond, 900*time.Millisecond)
		w := ws[i%len(ws)]
		w.kill()
		from := e.ledger.ackSeqs(w.devices)
		at := time.Now()
		w.start(false)
		d, ok := e.ledger.waitProgress(w.devices, from, at, recoverWithin)
		if !ok {
			t.Fatalf("%v did not recover within %v of its restart", w.devices, recoverWithin)
		}
		row.Recovery = append(row.Recovery, d)
	}
	finishAll(t, ws)
	c := e.finishEdge(ep, &row, true, true)
	row.Notes = fmt.Sprintf("recovery: device restart to its next ack; change log of %d puts checked", c.changes)
	row.Wall = time.Since(start)
	report(t, row, c)
	return row
}

// MasterKills: kill -9 of the master while a reader checks that
// latest.json parses at every instant.
func MasterKills(t *testing.T, bins Bins, cycles int) Row {
	start := time.Now()
	row := Row{Scenario: "3. kill -9 master", Cycles: cycles}
	e := newEnv(t, bins, 5)
	ep := e.startEdge()
	m := e.startMaster(ep.mqtt)
	ws := e.startWriters(ep.mqtt, 5, writerOpts{rate: 40, keys: 40})
	var reads, invalid atomic.Int64
	var firstBad atomic.Pointer[string]
	stop := make(chan struct{})
	var rwg sync.WaitGroup
	rwg.Add(1)
	go func() { // the reader: latest.json must parse whenever it exists
		defer rwg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			data, err := os.ReadFile(m.latestPath())
			if err == nil {
				reads.Add(1)
				if _, err := parseLatest(data); err != nil {
					invalid.Add(1)
					s := err.Error()
					firstBad.CompareAndSwap(nil, &s)
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	for range cycles {
		jitter(500*time.Millisecond, 1500*time.Millisecond)
		m.p.kill()
		seq := latestSeq(m.latestPath())
		at := time.Now()
		m.start()
		for latestSeq(m.latestPath()) <= seq {
			if time.Since(at) > recoverWithin {
				t.Fatalf("latest.json did not move past seq %d within %v of the master restart", seq, recoverWithin)
			}
			time.Sleep(10 * time.Millisecond)
		}
		row.Recovery = append(row.Recovery, time.Since(at))
	}
	finishAll(t, ws)
	catchUp, err := e.waitMasterMatches(ep.url(), m.latestPath(), recoverWithin)
	if err != nil {
		t.Error(err)
	}
	close(stop)
	rwg.Wait()
	c := e.finishEdge(ep, &row, true, false)
	if n := invalid.Load(); n > 0 {
		t.Errorf("latest.json did not parse %d times of %d: %s", n, reads.Load(), *firstBad.Load())
		row.Lost += int(n)
	}
	row.Notes = fmt.Sprintf("recovery: master restart to latest.json moving on; latest.json read %d times, invalid %d; latest.json = edge %v after the load", reads.Load(), invalid.Load(), catchUp.Round(10*time.Millisecond))
	row.Wall = time.Since(start)
	report(t, row, c)
	return row
}

func latestSeq(path string) uint64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	d, err := parseLatest(data)
	if err != nil {
		return 0
	}
	return *d.Seq
}

// NetFaults: a fault proxy between the devices and the edge and one
// between the master and the edge stall, blackhole or cut traffic.
func NetFaults(t *testing.T, bins Bins, cycles int) Row {
	start := time.Now()
	row := Row{Scenario: "4. network faults (stall, blackhole, cut) device↔edge and master↔edge", Cycles: cycles}
	e := newEnv(t, bins, 6)
	ep := e.startEdge()
	pd, err := faultproxy.Start(ep.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pd.Close() })
	pm, err := faultproxy.Start(ep.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pm.Close() })
	m := e.startMaster(pm.Addr())
	ws := e.startWriters(pd.Addr(), 3, writerOpts{rate: 40, keys: 25})
	kinds := []string{"stall", "blackhole", "cut"}
	var seen []string
	for i := range cycles {
		jitter(500*time.Millisecond, 1500*time.Millisecond)
		kind := kinds[i%len(kinds)]
		from := e.ledger.ackSeqs(e.devices)
		switch kind {
		case "stall":
			pd.SetMode(faultproxy.Stall)
			pm.SetMode(faultproxy.Stall)
			jitter(1500*time.Millisecond, 3*time.Second)
		case "blackhole":
			pd.SetMode(faultproxy.Blackhole)
			pm.SetMode(faultproxy.Blackhole)
			jitter(1500*time.Millisecond, 3*time.Second)
		case "cut":
			pd.Cut()
			pm.Cut()
		}
		pd.SetMode(faultproxy.Pass)
		pm.SetMode(faultproxy.Pass)
		at := time.Now()
		d, ok := e.ledger.waitProgress(e.devices, from, at, recoverWithin)
		if !ok {
			t.Fatalf("the devices did not recover within %v of the end of a %s", recoverWithin, kind)
		}
		row.Recovery = append(row.Recovery, d)
		seen = append(seen, kind)
	}
	finishAll(t, ws)
	catchUp, err := e.waitMasterMatches(ep.url(), m.latestPath(), recoverWithin)
	if err != nil {
		t.Error(err)
	}
	c := e.finishEdge(ep, &row, true, false)
	row.Notes = fmt.Sprintf("faults %s on both links; recovery: end of fault to every device acked again; latest.json = edge %v after the load", strings.Join(seen, ","), catchUp.Round(10*time.Millisecond))
	row.Wall = time.Since(start)
	report(t, row, c)
	return row
}

// ClockSkew: devices whose clocks are hours off (and jump back): ts is
// stored as given and the newest op by seq wins, whatever its ts.
func ClockSkew(t *testing.T, bins Bins, cycles int) Row {
	start := time.Now()
	row := Row{Scenario: "6. clock skew (devices ±hours, clocks jumping back)", Cycles: cycles}
	e := newEnv(t, bins, 4)
	ep := e.startEdge()
	skews := [][]string{{"5h", "-5h"}, {"-9h"}, {"26h", "-1h", "13h"}, {"0s", "-48h"}}
	for i := range cycles {
		var ws []*writer
		for j, d := range e.devices {
			ws = append(ws, e.startWriter(ep.mqtt, []string{d}, writerOpts{rate: 60, keys: 10, skews: skews[(i+j)%len(skews)]}))
		}
		jitter(time.Second, 1500*time.Millisecond)
		finishAll(t, ws)
	}
	c := e.finishEdge(ep, &row, true, true)
	row.Notes = "exact check: each key holds its newest op by seq with the ts given (not the newest ts)"
	row.Wall = time.Since(start)
	report(t, row, c)
	return row
}

// DiskLost: the edge's data dir is deleted under load and the edge
// restored from the master. What is lost must be only what the master had
// not received when the edge died.
func DiskLost(t *testing.T, bins Bins, cycles int) Row {
	start := time.Now()
	row := Row{Scenario: "7. edge disk lost, restored from the master", Cycles: cycles}
	e := newEnv(t, bins, 8)
	ep := e.startEdge()
	pm, err := faultproxy.Start(ep.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pm.Close() })
	m := e.startMaster(pm.Addr())
	ws := e.startWriters(ep.mqtt, 4, writerOpts{rate: 30}) // a new key per op: every loss shows
	confirmed := map[[2]string]int64{}                     // (device, key) -> op number the master had
	lagged := 0
	for i := range cycles {
		jitter(1500*time.Millisecond, 2500*time.Millisecond)
		if i%2 == 1 { // open a backup lag window: the master hears nothing for a second
			pm.SetMode(faultproxy.Stall)
			time.Sleep(time.Second)
			lagged++
		}
		ep.p.kill()
		pm.SetMode(faultproxy.Pass)
		n := 0
		for _, en := range e.masterState(m) {
			var v value
			if err := json.Unmarshal(en.Value, &v); err == nil {
				k := [2]string{en.Device, en.Key}
				confirmed[k] = max(confirmed[k], v.N)
				n++
			}
		}
		if err := os.RemoveAll(ep.data); err != nil {
			t.Fatal(err)
		}
		from := e.ledger.ackSeqs(e.devices)
		at := time.Now()
		ep.start(m.url())
		d, ok := e.ledger.waitProgress(e.devices, from, at, recoverWithin)
		if !ok {
			t.Fatalf("the devices did not recover within %v of the restore", recoverWithin)
		}
		row.Recovery = append(row.Recovery, d)
		t.Logf("disk lost: the master had %d keys; restored and recovered in %v", n, d.Round(time.Millisecond))
	}
	finishAll(t, ws)
	catchUp, err := e.waitMasterMatches(ep.url(), m.latestPath(), recoverWithin)
	if err != nil {
		t.Error(err)
	}
	c := e.finishEdge(ep, &row, false, false)
	confirmedLost := 0
	for _, l := range c.lostOps {
		if confirmed[[2]string{l.device, l.key}] >= l.p.n {
			confirmedLost++
			t.Errorf("lost although the master had it when the edge died: %s/%s op %d", l.device, l.key, l.p.n)
		}
	}
	if c.twice > 0 || c.badTS > 0 {
		t.Errorf("applied twice %d, wrong ts %d", c.twice, c.badTS)
	}
	row.Notes = fmt.Sprintf("lost = acked by the edge but not at the master when the edge died (the backup lag window; %d of %d cycles stalled the master's link for 1s before the kill to open one); lost that the master had: %d; recovery: restore start to every device acked again; latest.json = edge %v after", lagged, cycles, confirmedLost, catchUp.Round(10*time.Millisecond))
	row.Wall = time.Since(start)
	t.Logf("%s: ops acked %d, keys %d, lost in the lag window %d, lost that the master had %d, twice %d, recovery %s",
		row.Scenario, row.Acked, c.keys, row.Lost, confirmedLost, row.Twice, row.recovery())
	return row
}

// masterState reads the master's full state of the edge (what a restore
// loads).
func (e *env) masterState(m *masterProc) []iotkv.BackupEntry {
	var doc struct {
		Entries []iotkv.BackupEntry `json:"entries"`
	}
	if code, err := e.get(m.url()+"/v1/backups/"+edgeID, &doc); err != nil || code != 200 {
		e.t.Fatalf("GET /v1/backups/%s: %d %v", edgeID, code, err)
	}
	return doc.Entries
}
