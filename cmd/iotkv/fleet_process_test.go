//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

// fleetDevices is GET /v1/fleet/devices on the master, as admin.
func fleetDevices(t *testing.T, c *http.Client, addr, query string) (items []map[string]any, next string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/v1/fleet/devices?"+query, nil)
	req.SetBasicAuth("admin", testenv.Password("admin"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /v1/fleet/devices?%s: %s %s", query, resp.Status, b)
	}
	var body struct {
		Items []map[string]any `json:"items"`
		Next  string           `json:"next"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return body.Items, body.Next
}

// metricValue reads one sample of the master's /metrics (as admin); 0 when
// absent.
func metricValue(t *testing.T, c *http.Client, addr, sample string) float64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/metrics", nil)
	req.SetBasicAuth("admin", testenv.Password("admin"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", sample, err)
			}
			return f
		}
	}
	return 0
}

func passwordFile(t *testing.T, name string) string {
	t.Helper()
	pw := filepath.Join(t.TempDir(), name+".pw")
	if err := os.WriteFile(pw, []byte(testenv.Password(name)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return pw
}

// Edges that dial out, as users run them: `iotkv master --listen-edges`
// with no --edges (it has no address for any edge) and `iotkv edge
// --master mqtts://...` with its MQTT port on 127.0.0.1. e1 takes writes
// before any master runs, then is backed up over the connection it opens
// and restored from that master; e2 joins the running master later (no
// restart) and the fleet directory finds its devices; e2's certificate
// cannot publish e1's stream (refused and counted), and e1's backup is
// untouched by the attempt.
func TestEdgesThatDialOutAreBackedUpLearnedAndBoundToTheirCertificates(t *testing.T) {
	p := testenv.NewPKI(t)
	for _, id := range []string{"e1", "e2"} {
		p.Identity(t, id, iotkv.RoleEdge)
	}
	for _, d := range []string{"dev-a", "dev-b", "dev-c"} {
		p.Identity(t, d, iotkv.RoleDevice)
	}
	p.Identity(t, "master", iotkv.RoleMaster)
	p.Identity(t, "admin", iotkv.RoleAdmin)
	hc := p.HTTPClient(t, "admin")
	root := t.TempDir()

	// e1 starts first, dialling a master that is not there yet: it
	// accepts writes and keeps its change log; the master then starts on
	// that address and e1 catches up over the connection it opens.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	edgesAddr := l.Addr().String()
	l.Close()
	dial := "mqtts://" + edgesAddr
	startEdge := func(id string, extra ...string) *serverProc {
		args := append([]string{"edge", "--id", id, "--data", filepath.Join(root, id), "--certs", p.Dir, "--accounts", p.Accounts,
			"--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--master", dial, "--password-file", passwordFile(t, id)}, extra...)
		return startServerProc(t, hc, id, args...)
	}

	e1 := startEdge("e1")
	model := &s3Model{state: kvState{}, pending: map[string][]iotkv.Batch{}, lastSeq: map[string]uint64{}}
	for i := range 40 {
		model.batch("dev-a", put(fmt.Sprintf("k/%02d", i), fmt.Sprint(i), nil), put("last", fmt.Sprintf(`{"i":%d}`, i), nil))
	}
	model.batch("dev-b", put("x", `"y"`, nil), iotkv.Op{Op: iotkv.OpDel, Key: "k/00"})
	model.publish(t, p, e1.addrs["mqtt"])

	m := startServerProc(t, hc, "master", "master", "--data", filepath.Join(root, "backups"), "--certs", p.Dir,
		"--accounts", p.Accounts, "--listen-edges", edgesAddr, "--http-addr", "127.0.0.1:0", "--snapshot-interval", "1s")
	st := waitBackup(t, hc, m.addrs["https"], "e1", 30*time.Second, "e1 backed up over its own connection",
		func(s backupStatus) bool { return s.Connected && s.Seq == model.changes && s.Lag == 0 })
	t.Logf("e1 backed up over the connection it opened: %+v", st)

	// The fleet directory names e1 for its devices, from the master alone.
	items, next := fleetDevices(t, hc, m.addrs["https"], "prefix=dev-&limit=1")
	if len(items) != 1 || items[0]["device"] != "dev-a" || items[0]["edge"] != "e1" || items[0]["last_seq"] != float64(40) || next != "dev-a" {
		t.Fatalf("fleet directory page 1: %v next %q", items, next)
	}
	if w, _ := items[0]["last_write"].(float64); w < float64(time.Now().Add(-time.Minute).UnixMilli()) {
		t.Fatalf("dev-a last_write %v: not a recent write time", items[0]["last_write"])
	}

	// e2's certificate and account cannot publish into e1's stream.
	refusedBefore := metricValue(t, hc, m.addrs["https"], `iotkv_master_edge_refused_total{edge="e2"}`)
	o := paho.NewClientOptions().AddBroker("tls://" + m.addrs["edges"]).SetClientID("e2-forger").
		SetUsername("e2").SetPassword(testenv.Password("e2")).SetTLSConfig(p.ClientTLS(t, "e2")).SetAutoReconnect(false)
	forger := paho.NewClient(o)
	if tok := forger.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("e2 connect to the master's edge listener: %v", tok.Error())
	}
	forged, _ := json.Marshal(iotkv.BackupChanges{Edge: "e1", Inc: "forged", From: st.Seq + 1, To: st.Seq + 1,
		Changes: []json.RawMessage{json.RawMessage(fmt.Sprintf(`{"cseq":%d,"device":"dev-a","key":"evil","op":"put","value":1,"updated_at":1}`, st.Seq+1))}})
	forger.Publish(iotkv.BackupTopic("e1", iotkv.BackupKindChanges), 1, false, forged).WaitTimeout(5 * time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, hc, m.addrs["https"], `iotkv_master_edge_refused_total{edge="e2"}`) <= refusedBefore {
		if time.Now().After(deadline) {
			t.Fatal("e2 publishing e1's stream was not counted as refused within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	forger.Disconnect(100)

	// e2 joins the running master: it appears in /v1/backups and its
	// devices in the fleet directory.
	e2 := startEdge("e2")
	joined := time.Now()
	model2 := &s3Model{state: kvState{}, pending: map[string][]iotkv.Batch{}, lastSeq: map[string]uint64{}}
	model2.batch("dev-c", put("t", `21.5`, nil))
	model2.publish(t, p, e2.addrs["mqtt"])
	waitBackup(t, hc, m.addrs["https"], "e2", 30*time.Second, "e2 learned by the running master",
		func(s backupStatus) bool { return s.Connected && s.Seq == model2.changes })
	t.Logf("e2 listed and backed up %v after it started", time.Since(joined).Round(time.Millisecond))
	items, _ = fleetDevices(t, hc, m.addrs["https"], "prefix=")
	found := map[string]string{}
	for _, it := range items {
		found[it["device"].(string)], _ = it["edge"].(string)
	}
	if found["dev-a"] != "e1" || found["dev-b"] != "e1" || found["dev-c"] != "e2" || len(found) != 3 {
		t.Fatalf("fleet directory: %v", found)
	}

	// e1's backup is what its devices wrote (the forged change is not in
	// it): kill e1, restore an empty data dir from the master, compare.
	if err := e1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-e1.exited
	waitBackup(t, hc, m.addrs["https"], "e1", 30*time.Second, "e1 shown as away, still listed",
		func(s backupStatus) bool { return !s.Connected && s.Seq == model.changes })
	restored := startServerProc(t, hc, "e1-restored", "edge", "--id", "e1", "--data", filepath.Join(root, "e1-new"),
		"--certs", p.Dir, "--accounts", p.Accounts, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--restore-from", "https://"+m.addrs["https"], "--password-file", passwordFile(t, "e1"), "--master", dial)
	if d := diffStates(model.state, restState(t, hc, restored.addrs["https"], "admin")); d != "" {
		t.Fatalf("e1 restored from the master it dialled differs from what was acknowledged: %s", d)
	}
}
