package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

// Certificates and accounts changing under a running edge, seen by real
// clients: openssl, mosquitto_pub and mosquitto_sub.

func requireLifecycleTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"openssl", "mosquitto_pub", "mosquitto_sub"} {
		testenv.RequireTool(t, tool)
	}
}

// lifecycleEdge makes a PKI with edge1, dev1, dev2 and admin and runs
// `iotkv edge` on it.
func lifecycleEdge(t *testing.T) (*testenv.PKI, *serverProc) {
	t.Helper()
	p := testenv.NewPKI(t)
	p.Identity(t, "edge1", iotkv.RoleEdge)
	for _, d := range []string{"dev1", "dev2"} {
		p.Identity(t, d, iotkv.RoleDevice)
	}
	p.Identity(t, "admin", iotkv.RoleAdmin)
	e := startServerProc(t, p.HTTPClient(t, "admin"), "edge", "edge", "--id", "edge1", "--data", filepath.Join(t.TempDir(), "data"),
		"--certs", p.Dir, "--accounts", p.Accounts, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	return p, e
}

// mosqArgs are the connection flags of mosquitto_pub/sub as name with the
// files of dir.
func mosqArgs(addr, dir, name string) []string {
	host, port, _ := strings.Cut(addr, ":")
	return []string{"-h", host, "-p", port, "--cafile", filepath.Join(dir, "ca.crt"),
		"--cert", filepath.Join(dir, name+".crt"), "--key", filepath.Join(dir, name+".key"),
		"-u", name, "-P", testenv.Password(name)}
}

// mosqPub publishes one batch as name with QoS 1: exit 0 means the edge
// acknowledged it, which it does once the batch is durable.
func mosqPub(addr, dir, name string, seq int) (string, error) {
	payload := fmt.Sprintf(`{"seq":%d,"ops":[{"op":"put","key":"k%d","value":%d}]}`, seq, seq, seq)
	args := append(mosqArgs(addr, dir, name), "-V", "mqttv5", "-q", "1", "-t", iotkv.DeviceNamespace(name)+"batch", "-m", payload)
	out, err := exec.Command("mosquitto_pub", args...).CombinedOutput()
	return string(out), err
}

// subscriber is mosquitto_sub (MQTT v5, -d) watching name's status topics.
type subscriber struct {
	cmd    *exec.Cmd
	out    *testenv.Buffer
	exited chan struct{}
}

func startSub(t *testing.T, addr, dir, name string) *subscriber {
	t.Helper()
	s := &subscriber{out: &testenv.Buffer{}, exited: make(chan struct{})}
	args := append(mosqArgs(addr, dir, name), "-V", "mqttv5", "-d", "-q", "1", "-t", iotkv.DeviceNamespace(name)+"status/#")
	// Line-buffered: mosquitto_sub's -d lines go through stdio.
	s.cmd = exec.Command("stdbuf", append([]string{"-oL", "mosquitto_sub"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-s.exited
		if t.Failed() {
			t.Logf("mosquitto_sub %s:\n%s", name, s.out)
		}
	})
	s.waitFor(t, "Subscribed", 10*time.Second)
	return s
}

// waitFor waits until the subscriber's output holds text.
func (s *subscriber) waitFor(t *testing.T, text string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(s.out.String(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto_sub did not print %q within %v:\n%s", text, within, s.out)
		}
		time.Sleep(20 * time.Millisecond) // polling another process's output
	}
}

// servedSerial is the serial of the certificate the server at addr
// presents to a new `openssl s_client` handshake.
func servedSerial(t *testing.T, addr, dir string) string {
	t.Helper()
	script := fmt.Sprintf("openssl s_client -connect %s -CAfile %s -cert %s -key %s </dev/null 2>/dev/null | openssl x509 -noout -serial",
		addr, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "dev1.crt"), filepath.Join(dir, "dev1.key"))
	out, err := exec.Command("bash", "-c", script).CombinedOutput()
	if err != nil {
		return "error: " + strings.TrimSpace(string(out))
	}
	return strings.TrimPrefix(strings.TrimSpace(string(out)), "serial=")
}

func fileSerial(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("openssl", "x509", "-in", path, "-noout", "-serial").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509 %s: %v\n%s", path, err, out)
	}
	return strings.TrimPrefix(strings.TrimSpace(string(out)), "serial=")
}

func iotkvOK(t *testing.T, args ...string) string {
	t.Helper()
	code, out := runCLI(t, "", args...)
	if code != 0 {
		t.Fatalf("iotkv %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

func TestAnOpenSSLRequestSignedByCertsSignConnectsWithMosquittoPub(t *testing.T) {
	requireLifecycleTools(t)
	p, e := lifecycleEdge(t)
	// A device that made its own key with openssl.
	work := t.TempDir()
	req := exec.Command("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", filepath.Join(p.Dir, "devx.key"), "-out", filepath.Join(work, "devx.csr"), "-subj", "/CN=devx")
	if out, err := req.CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	code, out := runCLI(t, "", "certs", "sign", "--dir", p.Dir, "--csr", filepath.Join(work, "devx.csr"), "--name", "devy", "--role", "device")
	if code != 1 || !strings.Contains(out, "CN") {
		t.Fatalf("signing a request for devx as devy: exit %d %q, want 1 and the CN named", code, out)
	}
	iotkvOK(t, "certs", "sign", "--dir", p.Dir, "--csr", filepath.Join(work, "devx.csr"), "--name", "devx", "--role", "device")
	// And one made by iotkv-device's enroll (here through iotkv device).
	out = iotkvOK(t, "device", "enroll", "--name", "devz", "--certs", p.Dir)
	if strings.Contains(out, "PRIVATE KEY") {
		t.Fatalf("enroll printed the key: %s", out)
	}
	iotkvOK(t, "certs", "sign", "--dir", p.Dir, "--csr", filepath.Join(p.Dir, "devz.csr"), "--name", "devz", "--role", "device")
	for i, d := range []string{"devx", "devz"} {
		p.AddAccount(t, d, iotkv.RoleDevice, testenv.Password(d))
		var out string
		var err error
		// The edge reads the accounts file every second.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if out, err = mosqPub(e.addrs["mqtt"], p.Dir, d, 1); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("mosquitto_pub as %s: %v\n%s", d, err, out)
		}
		code, rec := getRecord(t, p.HTTPClient(t, "admin"), e.addrs["https"], d, "k1")
		if code != http.StatusOK || string(rec.Value) != "1" {
			t.Fatalf("device %d (%s): GET k1: %d %s", i, d, code, rec.Value)
		}
	}
}

func TestAReissuedEdgeCertificateIsServedWithoutARestart(t *testing.T) {
	requireLifecycleTools(t)
	p, e := lifecycleEdge(t)
	mqtt := e.addrs["mqtt"]
	pid := e.cmd.Process.Pid
	sub := startSub(t, mqtt, p.Dir, "dev1")
	if out, err := mosqPub(mqtt, p.Dir, "dev1", 1); err != nil {
		t.Fatalf("publish before the rotation: %v\n%s", err, out)
	}
	sub.waitFor(t, `{"seq":1}`, 10*time.Second)
	old := servedSerial(t, mqtt, p.Dir)
	if old != fileSerial(t, filepath.Join(p.Dir, "edge1.crt")) {
		t.Fatalf("served serial %s is not edge1.crt's", old)
	}

	iotkvOK(t, "certs", "issue", "--dir", p.Dir, "--name", "edge1", "--role", "edge", "--force")
	want := fileSerial(t, filepath.Join(p.Dir, "edge1.crt"))
	start := time.Now()
	for got := servedSerial(t, mqtt, p.Dir); got != want; got = servedSerial(t, mqtt, p.Dir) {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("the edge still serves %s, want the new %s", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the new certificate was served %v after it was written", time.Since(start).Round(time.Millisecond))
	if out, err := mosqPub(mqtt, p.Dir, "dev1", 2); err != nil {
		t.Fatalf("publish after the rotation: %v\n%s", err, out)
	}
	sub.waitFor(t, `{"seq":2}`, 10*time.Second)

	// A corrupt certificate written over the good one is refused; the edge
	// keeps serving the one in force, also after SIGHUP.
	if err := os.WriteFile(filepath.Join(p.Dir, "edge1.crt"), []byte("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.waitLog(t, "TLS reload refused", 20*time.Second)
	if err := e.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.waitLogCount(t, "TLS reload refused", 2, 10*time.Second)
	if got := servedSerial(t, mqtt, p.Dir); got != want {
		t.Fatalf("after a corrupt certificate the edge serves %q, want %s", got, want)
	}
	if out, err := mosqPub(mqtt, p.Dir, "dev1", 3); err != nil {
		t.Fatalf("publish after the corrupt certificate: %v\n%s", err, out)
	}
	sub.waitFor(t, `{"seq":3}`, 10*time.Second)

	select {
	case <-sub.exited:
		t.Fatal("mosquitto_sub exited")
	default:
	}
	if n := strings.Count(sub.out.String(), "sending CONNECT"); n != 1 {
		t.Fatalf("mosquitto_sub connected %d times, want once (never disconnected)", n)
	}
	select {
	case <-e.exited:
		t.Fatal("the edge exited")
	default:
	}
	if e.cmd.Process.Pid != pid {
		t.Fatal("the edge process changed")
	}
}

func TestARevokedCertificateLosesItsSessionAndItsHandshakes(t *testing.T) {
	requireLifecycleTools(t)
	p, e := lifecycleEdge(t)
	mqtt := e.addrs["mqtt"]
	dev2 := p.HTTPClient(t, "dev2")
	dev2.Timeout = 5 * time.Second
	sub2 := startSub(t, mqtt, p.Dir, "dev2")
	sub1 := startSub(t, mqtt, p.Dir, "dev1")

	out := iotkvOK(t, "certs", "revoke", "--dir", p.Dir, "--name", "dev2")
	revokedAt := time.Now()
	select {
	case <-sub2.exited:
		t.Logf("dev2's session ended %v after certs revoke", time.Since(revokedAt).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatalf("dev2's session outlived its revocation by 5 s (%s)", out)
	}
	if !strings.Contains(sub2.out.String(), "DISCONNECT (135)") {
		t.Errorf("mosquitto_sub did not get DISCONNECT 0x87 (not authorized):\n%s", sub2.out)
	}
	if out, err := mosqPub(mqtt, p.Dir, "dev2", 1); err == nil {
		t.Fatalf("dev2 published after its revocation: %s", out)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+e.addrs["https"]+"/v1/kv/dev2", nil)
	req.SetBasicAuth("dev2", testenv.Password("dev2"))
	if resp, err := dev2.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("REST with dev2's revoked certificate answered %d", resp.StatusCode)
	}
	// dev1 is untouched.
	if out, err := mosqPub(mqtt, p.Dir, "dev1", 1); err != nil {
		t.Fatalf("dev1: %v\n%s", err, out)
	}
	sub1.waitFor(t, `{"seq":1}`, 10*time.Second)
	crl, err := exec.Command("openssl", "crl", "-in", filepath.Join(p.Dir, "crl.pem"), "-noout", "-text").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl crl: %v\n%s", err, crl)
	}
	if serial := fileSerial(t, filepath.Join(p.Dir, "dev2.crt")); !strings.Contains(string(crl), "Serial Number: "+serial) {
		t.Fatalf("openssl crl does not list %s:\n%s", serial, crl)
	}
	list := iotkvOK(t, "certs", "list", "--dir", p.Dir)
	if !strings.Contains(list, "dev2.crt") || !regexpLine(list, "dev2.crt", "revoked") || !regexpLine(list, "dev1.crt", "valid") {
		t.Fatalf("certs list:\n%s", list)
	}
}

func regexpLine(text, has, state string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, has) {
			return strings.HasSuffix(strings.TrimSpace(l), state)
		}
	}
	return false
}

func TestADeletedOrDisabledAccountLosesItsSession(t *testing.T) {
	requireLifecycleTools(t)
	for _, sub := range []string{"del", "disable"} {
		t.Run("users "+sub, func(t *testing.T) {
			p, e := lifecycleEdge(t)
			s := startSub(t, e.addrs["mqtt"], p.Dir, "dev1")
			client := p.HTTPClient(t, "dev2") // the account is refused, whatever the certificate
			get := func() int {
				req, _ := http.NewRequest(http.MethodGet, "https://"+e.addrs["https"]+"/v1/kv/dev1", nil)
				req.SetBasicAuth("dev1", testenv.Password("dev1"))
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			if code := get(); code != http.StatusOK {
				t.Fatalf("REST as dev1 before: %d", code)
			}
			iotkvOK(t, "users", sub, "--file", p.Accounts, "--name", "dev1")
			changed := time.Now()
			select {
			case <-s.exited:
				t.Logf("dev1's session ended %v after users %s", time.Since(changed).Round(time.Millisecond), sub)
			case <-time.After(5 * time.Second):
				t.Fatalf("dev1's session outlived users %s by 5 s", sub)
			}
			if code := get(); code != http.StatusUnauthorized {
				t.Fatalf("REST as dev1 after users %s: %d, want 401", sub, code)
			}
			if out, err := mosqPub(e.addrs["mqtt"], p.Dir, "dev1", 1); err == nil {
				t.Fatalf("dev1 published after users %s: %s", sub, out)
			}
			if sub == "disable" {
				iotkvOK(t, "users", "enable", "--file", p.Accounts, "--name", "dev1")
				var code int
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
					if code = get(); code == http.StatusOK {
						break
					}
				}
				if code != http.StatusOK {
					t.Fatalf("REST as dev1 after users enable: %d", code)
				}
			}
		})
	}
}

// waitLog waits until the server's output holds text.
func (s *serverProc) waitLog(t *testing.T, text string, within time.Duration) {
	t.Helper()
	s.waitLogCount(t, text, 1, within)
}

func (s *serverProc) waitLogCount(t *testing.T, text string, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for strings.Count(s.out.String(), text) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q %d times within %v", s.name, text, n, within)
		}
		time.Sleep(20 * time.Millisecond) // polling another process's output
	}
}
