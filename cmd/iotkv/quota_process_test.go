package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// A device writes at its key quota (puts of new keys, deletes that make
// room, overwrites, batches refused for the quota) with 8 batches in
// flight when the edge is killed with SIGKILL. The counters on disk then
// equal a recount of the records, the restarted edge shows them, and it
// admits and refuses the device's writes exactly as they say.
func TestQuotaCountersExactAfterKill9(t *testing.T) {
	const quotaKeys = 120
	p := testenv.NewPKI(t)
	p.Identity(t, "dev", iotkv.RoleDevice)
	p.Identity(t, "admin", iotkv.RoleAdmin)
	p.Identity(t, "edge1", iotkv.RoleEdge)
	data := filepath.Join(t.TempDir(), "data")
	start := func() *edgeProc {
		addrFile := filepath.Join(t.TempDir(), "addrs.json")
		return runEdgeProc(t, p, exec.Command(iotkvBin, "edge", "--id", "edge1", "--data", data, "--certs", p.Dir, "--accounts", p.Accounts,
			"--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--addr-file", addrFile,
			"--quota-keys", fmt.Sprint(quotaKeys), "--quota-bytes", "1MiB", "--rate-ops", "0"), addrFile)
	}
	e := start()

	// Batch seq: 5 puts of new keys and 2 deletes of keys put 3 batches
	// earlier (net +3), an overwrite of "hot" with a value whose size
	// changes; every 4th batch only deletes (room for the next ones). From
	// about seq 40 on the device is at its quota and batches are refused
	// or admitted as deletes make room.
	batch := func(seq uint64) []byte {
		b := iotkv.Batch{Seq: seq}
		if seq%4 == 0 {
			for i := range 4 {
				b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpDel, Key: fmt.Sprintf("n/%d/%d", seq-8, i)})
			}
		} else {
			for i := range 5 {
				b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("n/%d/%d", seq, i), Value: json.RawMessage(fmt.Sprint(seq))})
			}
			for i := range 2 {
				b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpDel, Key: fmt.Sprintf("n/%d/%d", seq-3, i)})
			}
			b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpPut, Key: "hot", Value: json.RawMessage(`"` + strings.Repeat("h", int(seq%50)) + `"`)})
		}
		payload, _ := json.Marshal(b)
		return payload
	}
	c := p.Connect(t, e.MQTT, "dev")
	refused := make(chan struct{}, 1)
	if tok := c.Subscribe(iotkv.ErrorTopic("dev"), 1, func(_ paho.Client, m paho.Message) {
		select {
		case refused <- struct{}{}:
		default:
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe status/error: %v", tok.Error())
	}
	inflight := make(chan paho.Token, 8)
	acked := make(chan uint64, 1000)
	stop := make(chan struct{})
	go func() {
		defer close(inflight)
		for seq := uint64(1); ; seq++ {
			select {
			case <-stop:
				return
			case inflight <- c.Publish(iotkv.BatchTopic("dev"), 1, false, batch(seq)):
			}
		}
	}()
	go func() {
		defer close(acked)
		seq := uint64(0)
		for tok := range inflight {
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				break // the edge is gone
			}
			seq++
			acked <- seq
		}
		for range inflight { // let the publisher see stop
		}
	}()
	sawRefusal := false
	var last uint64
	for seq := range acked {
		last = seq
		select {
		case <-refused:
			sawRefusal = true
		default:
		}
		if sawRefusal && seq >= 60 {
			if err := e.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			close(stop)
			break
		}
	}
	if !sawRefusal || last < 60 {
		t.Fatalf("killed nothing: %d batches acknowledged, a quota refusal seen: %v", last, sawRefusal)
	}
	e.wait(t, 10*time.Second)
	c.Disconnect(0)
	for range acked {
	}

	// What the killed edge left: counters equal to a recount.
	stored, counted, err := edge.StoreUsage(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(stored, counted) {
		t.Fatalf("after kill -9: kept counters %v, a recount of the records %v", stored, counted)
	}
	keys := stored["dev"][0]
	if keys > quotaKeys || keys < quotaKeys-20 {
		t.Fatalf("after kill -9 the device holds %d keys; the load kept it near its quota of %d", keys, quotaKeys)
	}
	t.Logf("killed after %d acknowledged batches; the device holds %d keys, %d bytes", last, keys, stored["dev"][1])

	e = start()
	admin := p.HTTPClient(t, "admin")
	if got := shownUsage(t, admin, e.HTTPS); got != stored["dev"] {
		t.Fatalf("GET /v1/devices after the restart shows %v, the store keeps %v", got, stored["dev"])
	}
	hc := p.HTTPClient(t, "dev")
	put := func(key string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, "https://"+e.HTTPS+"/v1/kv/dev/"+key, strings.NewReader("1"))
		req.SetBasicAuth("dev", testenv.Password("dev"))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusForbidden && !strings.Contains(string(body), iotkv.CodeQuotaExceeded) {
			t.Fatalf("PUT %s: 403 %s, want quota_exceeded", key, body)
		}
		return resp.StatusCode
	}
	// Exactly quotaKeys-keys new keys fit, the next is refused.
	for i := range quotaKeys - keys {
		if code := put(fmt.Sprintf("probe/%d", i)); code != http.StatusOK {
			t.Fatalf("new key %d of the %d the counters leave room for: %d", i+1, quotaKeys-keys, code)
		}
	}
	if code := put("probe/over"); code != http.StatusForbidden {
		t.Fatalf("a new key at the quota: %d, want 403", code)
	}
	// A delete makes room for one.
	req, _ := http.NewRequest(http.MethodDelete, "https://"+e.HTTPS+"/v1/kv/dev/hot", nil)
	req.SetBasicAuth("dev", testenv.Password("dev"))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE dev/hot: %d", resp.StatusCode)
	}
	if code := put("probe/room"); code != http.StatusOK {
		t.Fatalf("a new key after a delete at the quota: %d, want 200", code)
	}
	if code := put("probe/over"); code != http.StatusForbidden {
		t.Fatalf("a new key at the quota again: %d, want 403", code)
	}
	shown := shownUsage(t, admin, e.HTTPS)
	if shown[0] != quotaKeys {
		t.Fatalf("GET /v1/devices shows %d keys at the quota of %d", shown[0], quotaKeys)
	}
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := e.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the edge exited %d on SIGTERM, want 0", code)
	}
	if stored, counted, err = edge.StoreUsage(data, nil); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(stored, counted) || stored["dev"] != shown {
		t.Fatalf("after the probes: kept counters %v, a recount %v, /v1/devices showed %v", stored, counted, shown)
	}
}

// shownUsage returns dev's {keys, bytes} from GET /v1/devices.
func shownUsage(t *testing.T, c *http.Client, addr string) [2]int64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/v1/devices", nil)
	req.SetBasicAuth("admin", testenv.Password("admin"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var devs struct {
		Devices []struct {
			Device      string
			Keys, Bytes int64
		}
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&devs) != nil {
		t.Fatalf("GET /v1/devices: %d", resp.StatusCode)
	}
	for _, d := range devs.Devices {
		if d.Device == "dev" {
			return [2]int64{d.Keys, d.Bytes}
		}
	}
	t.Fatal("GET /v1/devices does not list dev")
	return [2]int64{}
}
