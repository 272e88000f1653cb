package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/testenv"
)

// rotationWriter is a device that publishes batches through the whole CA
// rotation, reconnecting every few batches with the files of its own
// directory as they are then (a device picking up its new certificate).
type rotationWriter struct {
	name, dir, addr string
	seq             int
	acked           []int
	cycles          atomic.Int64
	failures        []string
}

func (w *rotationWriter) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		tc, err := certs.ClientConfig(certs.PathsFor(w.dir, w.name))
		if err != nil { // caught between the renames of key and certificate
			time.Sleep(10 * time.Millisecond)
			continue
		}
		o := (&testenv.PKI{}).MQTTOptionsTLS(w.addr, w.name, testenv.Password(w.name), tc)
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			w.failures = append(w.failures, fmt.Sprintf("connect at seq %d: %v", w.seq, tok.Error()))
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for i := 0; i < 5; i++ {
			w.seq++
			b, _ := json.Marshal(iotkv.Batch{Seq: uint64(w.seq), Ops: []iotkv.Op{{Op: iotkv.OpPut, Key: fmt.Sprintf("k%d", w.seq), Value: json.RawMessage(fmt.Sprint(w.seq))}}})
			tok := c.Publish(iotkv.DeviceNamespace(w.name)+"batch", 1, false, b)
			if !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
				w.failures = append(w.failures, fmt.Sprintf("publish seq %d: %v", w.seq, tok.Error()))
				break
			}
			w.acked = append(w.acked, w.seq)
		}
		c.Disconnect(100)
		w.cycles.Add(1)
	}
}

// waitCycles waits until w has connected n more times.
func (w *rotationWriter) waitCycles(t *testing.T, n int64) {
	t.Helper()
	target := w.cycles.Load() + n
	deadline := time.Now().Add(60 * time.Second)
	for w.cycles.Load() < target {
		if time.Now().After(deadline) {
			t.Fatalf("writer %s made no progress", w.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// install writes data to path by rename, as a deployment tool would.
func install(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestCARotationWithWritersRunningThroughout moves an edge and its devices
// from one CA to another with a bundle of both, device by device, then
// drops the old CA: the edge is never restarted, no write is lost, no
// connection of a device is refused, and the old CA's certificates are
// refused at the end.
func TestCARotationWithWritersRunningThroughout(t *testing.T) {
	testenv.RequireTool(t, "openssl")
	p := testenv.NewPKI(t)
	p.Identity(t, "edge1", iotkv.RoleEdge)
	for _, d := range []string{"dev1", "dev2", "dev3"} {
		p.Identity(t, d, iotkv.RoleDevice)
	}
	p.AddAccount(t, "admin", iotkv.RoleAdmin, testenv.Password("admin"))
	e := startServerProc(t, &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool(t, read(t, filepath.Join(p.Dir, "ca.crt")))}}},
		"edge", "edge", "--id", "edge1", "--data", filepath.Join(t.TempDir(), "data"),
		"--certs", p.Dir, "--accounts", p.Accounts, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	pid := e.cmd.Process.Pid

	var writers []*rotationWriter
	for _, d := range []string{"dev1", "dev2"} {
		dir := filepath.Join(t.TempDir(), d)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"ca.crt", d + ".crt", d + ".key"} {
			install(t, filepath.Join(dir, f), read(t, filepath.Join(p.Dir, f)), 0o600)
		}
		writers = append(writers, &rotationWriter{name: d, dir: dir, addr: e.addrs["mqtt"]})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, w := range writers {
		wg.Add(1)
		go func() { defer wg.Done(); w.run(stop) }()
	}
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	t.Cleanup(halt)
	for _, w := range writers {
		w.waitCycles(t, 1)
	}

	// 1. A new CA; every party trusts both.
	newDir := filepath.Join(t.TempDir(), "pki2")
	iotkvOK(t, "certs", "init", "--dir", newDir)
	oldCA, newCA := read(t, filepath.Join(p.Dir, "ca.crt")), read(t, filepath.Join(newDir, "ca.crt"))
	bundle := append(append([]byte{}, oldCA...), newCA...)
	for _, w := range writers {
		install(t, filepath.Join(w.dir, "ca.crt"), bundle, 0o600)
	}
	install(t, filepath.Join(p.Dir, "ca.crt"), bundle, 0o644)
	e.waitLog(t, "cas=2", 20*time.Second)

	// 2. The edge's certificate from the new CA.
	iotkvOK(t, "certs", "issue", "--dir", newDir, "--name", "edge1", "--role", "edge")
	install(t, filepath.Join(p.Dir, "edge1.key"), read(t, filepath.Join(newDir, "edge1.key")), 0o600)
	install(t, filepath.Join(p.Dir, "edge1.crt"), read(t, filepath.Join(newDir, "edge1.crt")), 0o644)
	e.waitLog(t, "serial="+fileSerial(t, filepath.Join(newDir, "edge1.crt")), 20*time.Second)
	for _, w := range writers {
		w.waitCycles(t, 2)
	}

	// 3. The devices, one by one.
	for _, w := range writers {
		iotkvOK(t, "certs", "issue", "--dir", newDir, "--name", w.name, "--role", "device")
		install(t, filepath.Join(w.dir, w.name+".key"), read(t, filepath.Join(newDir, w.name+".key")), 0o600)
		install(t, filepath.Join(w.dir, w.name+".crt"), read(t, filepath.Join(newDir, w.name+".crt")), 0o600)
		w.waitCycles(t, 2)
	}

	// 4. The old CA goes.
	for _, w := range writers {
		install(t, filepath.Join(w.dir, "ca.crt"), newCA, 0o600)
	}
	install(t, filepath.Join(p.Dir, "ca.crt"), newCA, 0o644)
	e.waitLog(t, "cas=1", 20*time.Second)
	for _, w := range writers {
		w.waitCycles(t, 2)
	}
	halt()

	// dev3 still has a certificate of the old CA: refused now.
	c := paho.NewClient(p.MQTTOptions(t, e.addrs["mqtt"], "dev3"))
	if tok := c.Connect(); tok.WaitTimeout(15*time.Second) && tok.Error() == nil {
		c.Disconnect(100)
		t.Fatal("a certificate of the removed CA still connects")
	}

	select {
	case <-e.exited:
		t.Fatal("the edge exited")
	default:
	}
	if e.cmd.Process.Pid != pid {
		t.Fatal("the edge was restarted")
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool(t, newCA)}}}
	for _, w := range writers {
		if len(w.failures) > 0 {
			t.Errorf("%s: %d failures during the rotation: %s", w.name, len(w.failures), strings.Join(w.failures, "; "))
		}
		for _, seq := range w.acked {
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://%s/v1/kv/%s/k%d", e.addrs["https"], w.name, seq), nil)
			req.SetBasicAuth("admin", testenv.Password("admin"))
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: acknowledged k%d reads %d", w.name, seq, resp.StatusCode)
			}
		}
		t.Logf("%s: %d batches acknowledged and read back over %d connections", w.name, len(w.acked), w.cycles.Load())
	}
}

func pool(t *testing.T, pemData []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemData) {
		t.Fatal("no CA certificate")
	}
	return p
}
