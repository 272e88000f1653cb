//go:build linux

package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/memdisk"
	"github.com/iotkv/iotkv/internal/testenv"
)

// memEdge is an in-process edge on a faultyDisk, restarted on the same
// ports.
type memEdge struct {
	e           *env
	disk        *memdisk.Disk
	mqtt, https string
	edge        *edge.Edge
	reg         *prometheus.Registry
	log         *testenv.Buffer
}

const memDataDir = "/edge-data"

func (m *memEdge) open() {
	m.reg = prometheus.NewRegistry()
	m.log = &testenv.Buffer{}
	o := edge.Options{
		ID: edgeID, DataDir: memDataDir, TLSFiles: m.e.pki.Paths(edgeID), Accounts: m.e.pki.Accounts,
		MQTTAddr: m.mqtt, HTTPAddr: m.https, AccountsPoll: 100 * time.Millisecond, MaxKeepalive: 10,
		StoreFS: m.disk.FS(), Registry: m.reg,
		Logger: slog.New(slog.NewTextHandler(m.log, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for m.edge, err = edge.Open(o); err != nil && time.Now().Before(deadline); m.edge, err = edge.Open(o) {
		time.Sleep(50 * time.Millisecond) // the port of the closed edge may linger for a moment
	}
	if err != nil {
		m.e.t.Fatal(err)
	}
	m.mqtt, m.https = m.edge.MQTTAddr(), m.edge.HTTPAddr()
}

func (m *memEdge) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return m.edge.Close(ctx)
}

func (m *memEdge) commitErrors() float64 {
	mfs, _ := m.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "iotkv_commit_errors_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return -1
}

// DiskFaults: fsync errors and a full disk under the edge's WAL. The edge
// must stop acknowledging, report not ready, log and count it; then the
// machine "loses power" (only synced data survives), the disk is fixed and
// the edge restarts on it: nothing it acknowledged may be missing.
func DiskFaults(t *testing.T, bins Bins, cycles int) Row {
	start := time.Now()
	row := Row{Scenario: "5. fsync errors and disk full on the edge, power loss, restart", Cycles: cycles}
	e := newEnv(t, bins, 5)
	m := &memEdge{e: e, disk: memdisk.New(), mqtt: freeAddr(t), https: freeAddr(t)}
	m.open()
	t.Cleanup(func() { _ = m.close() })
	ws := e.startWriters(m.mqtt, 5, writerOpts{rate: 40, keys: 25})
	var seen []string
	for i := range cycles {
		jitter(700*time.Millisecond, 1500*time.Millisecond)
		fault := []memdisk.Fault{memdisk.FsyncFail, memdisk.DiskFull}[i%2]
		m.disk.SetFault(fault)
		deadline := time.Now().Add(20 * time.Second)
		for m.edge.Ready() == nil {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the edge still reports ready", fault)
			}
			time.Sleep(5 * time.Millisecond)
		}
		// What the devices saw acknowledged once the last good acks landed
		// must not move while the disk is bad.
		failedAt, reBefore := time.Now(), e.ledger.reconnectCounts(e.devices)
		time.Sleep(300 * time.Millisecond)
		before := e.ledger.ackSeqs(e.devices)
		m.probe(t, uint64(i+1))
		if code, _ := e.get("https://"+m.https+"/readyz", nil); code != http.StatusServiceUnavailable {
			t.Errorf("%s: /readyz answered %d, want 503", fault, code)
		}
		if n := m.commitErrors(); n < 1 {
			t.Errorf("%s: iotkv_commit_errors_total = %v, want ≥ 1", fault, n)
		}
		if !strings.Contains(m.log.String(), "commit failed") {
			t.Errorf("%s: no \"commit failed\" in the edge's log", fault)
		}
		time.Sleep(500 * time.Millisecond)
		for d, s := range e.ledger.ackSeqs(e.devices) {
			if s != before[d] {
				t.Errorf("%s: %s got seq %d acknowledged (was %d) while the disk was failing", fault, d, s, before[d])
			}
		}
		// A failed edge drops each session at its first write; the devices
		// must back off, not reconnect every ReconnectMin (50ms here).
		window := time.Since(failedAt)
		for d, n := range e.ledger.reconnectCounts(e.devices) {
			if re := n - reBefore[d]; float64(re) > 8*window.Seconds()/1.2 {
				t.Errorf("%s: %s reconnected %d times in %v to an edge that cannot write (no backoff)", fault, d, re, window.Round(time.Millisecond))
			}
		}
		// Power loss, disk replaced by what was synced, edge restarted.
		m.disk.Crash()
		if err := m.close(); err != nil {
			t.Logf("%s: closing the failed edge: %v", fault, err)
		}
		at := time.Now()
		m.open()
		d, ok := e.ledger.waitProgress(e.devices, before, at, recoverWithin)
		if !ok {
			t.Fatalf("%s: the devices did not recover within %v of the restart", fault, recoverWithin)
		}
		row.Recovery = append(row.Recovery, d)
		seen = append(seen, fault.String())
	}
	finishAll(t, ws)
	c, err := e.verifyEdge("https://"+m.https, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.close(); err != nil {
		t.Error(err)
	}
	n, dups, err := changeLogDuplicates(memDataDir, m.disk.FS())
	if err != nil {
		t.Fatal(err)
	}
	c.changes, c.twice = n, c.twice+dups
	row.Acked, row.Lost, row.Twice = c.acked, c.lost+c.badTS, c.twice
	row.Notes = fmt.Sprintf("faults %s; each: not ready (503), counted, logged, no PUBACK, no ack moved; then power loss (unsynced data dropped) and restart on the fixed disk; recovery: restart to every device acked again", strings.Join(seen, ","))
	row.Wall = time.Since(start)
	report(t, row, c)
	return row
}

// probe publishes a QoS 1 batch on the failed edge: no PUBACK may come.
func (m *memEdge) probe(t *testing.T, seq uint64) {
	t.Helper()
	o := m.e.pki.MQTTOptions(t, m.mqtt, "probe")
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("probe connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	tok := c.Publish(iotkv.BatchTopic("probe"), 1, false, fmt.Sprintf(`{"seq":%d,"ops":[{"op":"put","key":"probe","value":%d}]}`, seq, seq))
	if tok.WaitTimeout(1500*time.Millisecond) && tok.Error() == nil {
		t.Errorf("probe: a QoS 1 batch got a PUBACK from an edge whose disk is failing")
	} else if err := tok.Error(); err != nil && !errors.Is(err, paho.ErrNotConnected) {
		t.Logf("probe: %v (no PUBACK, as required)", err)
	}
}
