package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

// iotkvBin is the iotkv binary built once for the tests of this package.
var iotkvBin string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "iotkv-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	iotkvBin = filepath.Join(dir, "iotkv")
	build := exec.Command("go", "build", "-o", iotkvBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "go build ./cmd/iotkv:", err)
		return 1
	}
	return m.Run()
}

// edgeProc is `iotkv edge` running as a child process.
type edgeProc struct {
	cmd    *exec.Cmd
	out    *testenv.Buffer
	exited chan struct{}
	err    error // valid after exited is closed
	MQTT   string
	HTTPS  string
}

// startEdgeProc runs `iotkv edge` on loopback port 0 with dataDir, learns
// its addresses from --addr-file and waits until /readyz answers 200.
func startEdgeProc(t *testing.T, p *testenv.PKI, dataDir string) *edgeProc {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addrs.json")
	return runEdgeProc(t, p, exec.Command(iotkvBin, "edge", "--id", "edge1", "--data", dataDir, "--certs", p.Dir, "--accounts", p.Accounts,
		"--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--addr-file", addrFile, "--log-level", "debug"), addrFile)
}

// runEdgeProc starts cmd, an `iotkv edge` writing addrFile, and waits
// until /readyz answers 200.
func runEdgeProc(t *testing.T, p *testenv.PKI, cmd *exec.Cmd, addrFile string) *edgeProc {
	t.Helper()
	e := &edgeProc{cmd: cmd, out: &testenv.Buffer{}, exited: make(chan struct{})}
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		e.err = e.cmd.Wait()
		close(e.exited)
	}()
	t.Cleanup(func() {
		_ = e.cmd.Process.Kill()
		<-e.exited
		if t.Failed() {
			t.Logf("edge output (pid %d):\n%s", e.cmd.Process.Pid, e.out)
		}
	})
	client := p.HTTPClient(t, "dev")
	client.Timeout = time.Second
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-e.exited:
			t.Fatalf("the edge exited before it was ready: %v", e.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the edge was not ready within 60s")
		}
		if e.HTTPS == "" {
			if data, err := os.ReadFile(addrFile); err == nil {
				var addrs map[string]string
				if err := json.Unmarshal(data, &addrs); err != nil {
					t.Fatalf("--addr-file %s: %v: %s", addrFile, err, data)
				}
				e.MQTT, e.HTTPS = addrs["mqtt"], addrs["https"]
			}
		}
		if e.HTTPS != "" {
			if resp, err := client.Get("https://" + e.HTTPS + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return e
				}
			}
		}
		time.Sleep(20 * time.Millisecond) // polling: the child tells us nothing else
	}
}

// wait waits for the process to exit and returns its exit code.
func (e *edgeProc) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-e.exited:
	case <-time.After(within):
		t.Fatalf("the edge did not exit within %v", within)
	}
	var ee *exec.ExitError
	if errors.As(e.err, &ee) {
		return ee.ExitCode()
	}
	if e.err != nil {
		t.Fatal(e.err)
	}
	return 0
}

func getRecord(t *testing.T, c *http.Client, addr, device, key string) (int, iotkv.Record) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/v1/kv/"+device+"/"+key, nil)
	req.SetBasicAuth(device, testenv.Password(device))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s/%s: %v", device, key, err)
	}
	defer resp.Body.Close()
	var rec iotkv.Record
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&rec); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, rec
}

// A PUBACK means durable: the edge is killed with SIGKILL while a device
// publishes, and after a restart on the same data dir every acknowledged
// key is there and the retained status/ack is back. SIGTERM then exits 0.
func TestEveryAcknowledgedBatchSurvivesKill9(t *testing.T) {
	p := testenv.NewPKI(t)
	p.Identity(t, "dev", iotkv.RoleDevice)
	p.Identity(t, "edge1", iotkv.RoleEdge)
	data := filepath.Join(t.TempDir(), "data")
	e := startEdgeProc(t, p, data)

	c := p.Connect(t, e.MQTT, "dev")
	const opsPerBatch = 10
	acked := make(chan uint64, 1000)
	stop := make(chan struct{})
	publisherDone := make(chan struct{})
	go func() {
		defer close(publisherDone)
		defer close(acked)
		for seq := uint64(1); ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			b := iotkv.Batch{Seq: seq}
			for i := range opsPerBatch {
				b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("k/%d/%d", seq, i), Value: json.RawMessage(fmt.Sprint(seq*100 + uint64(i)))})
			}
			payload, _ := json.Marshal(b)
			tok := c.Publish(iotkv.BatchTopic("dev"), 1, false, payload)
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				return // the edge is gone
			}
			acked <- seq
		}
	}()
	var last uint64
	for seq := range acked {
		last = seq
		if seq == 30 {
			if err := e.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	<-publisherDone
	if last < 30 {
		t.Fatalf("only %d batches were acknowledged before the edge went away", last)
	}
	e.wait(t, 10*time.Second)
	t.Logf("%d batches acknowledged before the kill took effect", last)

	e = startEdgeProc(t, p, data)
	hc := p.HTTPClient(t, "dev")
	for seq := uint64(1); seq <= last; seq++ {
		for i := range opsPerBatch {
			key := fmt.Sprintf("k/%d/%d", seq, i)
			code, rec := getRecord(t, hc, e.HTTPS, "dev", key)
			if code != http.StatusOK || string(rec.Value) != fmt.Sprint(seq*100+uint64(i)) || rec.Seq != seq {
				t.Fatalf("acknowledged key dev/%s after kill -9 and restart: %d %+v", key, code, rec)
			}
		}
	}
	sub := p.Connect(t, e.MQTT, "dev")
	acks := make(chan []byte, 1)
	if tok := sub.Subscribe(iotkv.AckTopic("dev"), 1, func(_ paho.Client, m paho.Message) {
		select {
		case acks <- m.Payload():
		default:
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe status/ack: %v", tok.Error())
	}
	select {
	case payload := <-acks:
		var ack iotkv.AckMessage
		if err := json.Unmarshal(payload, &ack); err != nil || ack.Seq < last {
			t.Errorf("retained status/ack after restart = %s, want seq >= %d", payload, last)
		}
	case <-time.After(10 * time.Second):
		t.Error("no retained status/ack after the restart")
	}

	// SIGTERM: finish, flush, exit 0; the data stays readable.
	publishOrFail(t, sub, iotkv.BatchTopic("dev"), fmt.Sprintf(`{"seq":%d,"ops":[{"op":"put","key":"last","value":true}]}`, last+1000))
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := e.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the edge exited %d on SIGTERM, want 0", code)
	}
	e = startEdgeProc(t, p, data)
	if code, rec := getRecord(t, hc, e.HTTPS, "dev", "last"); code != http.StatusOK || string(rec.Value) != "true" {
		t.Errorf("dev/last after a SIGTERM restart: %d %+v", code, rec)
	}
}

func publishOrFail(t *testing.T, c paho.Client, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}
