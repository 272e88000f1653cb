package live_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/certs/live"
)

// pki is a CA with an edge and two devices in a temp dir.
func pki(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := certs.Init(dir, false); err != nil {
		t.Fatal(err)
	}
	for _, r := range []certs.Request{{Name: "edge1", Role: certs.RoleEdge}, {Name: "dev1", Role: certs.RoleDevice}, {Name: "dev2", Role: certs.RoleDevice}} {
		if err := certs.Issue(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func open(t *testing.T, dir string, reg prometheus.Registerer, onChange func()) (*live.Certs, *logBuf) {
	t.Helper()
	var lb logBuf
	c, err := live.Open(live.Options{Files: certs.PathsFor(dir, "edge1"), Poll: 50 * time.Millisecond, Registry: reg, OnChange: onChange,
		Logger: slog.New(slog.NewTextHandler(io.MultiWriter(&lb, testWriter{t}), nil))})
	if err != nil {
		t.Fatal(err)
	}
	return c, &lb
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// serve accepts TLS connections with c's server config and completes their
// handshakes until the test ends.
func serve(t *testing.T, c *live.Certs) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", c.ServerConfig(tls.RequireAndVerifyClientCert))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				if conn.(*tls.Conn).Handshake() == nil {
					_, _ = conn.Write([]byte("ok"))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// client is the TLS configuration of identity name, read now.
func client(t *testing.T, dir, name string) *tls.Config {
	t.Helper()
	tc, err := certs.ClientConfig(certs.PathsFor(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	tc.ServerName = "localhost"
	return tc
}

// dial handshakes with tc and returns the server's certificate.
func dial(tc *tls.Config, addr string) (*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// TLS 1.3: a refused client certificate shows on the first read.
	if _, err := io.ReadFull(conn, make([]byte, 2)); err != nil {
		return nil, err
	}
	return conn.ConnectionState().PeerCertificates[0], nil
}

func serialOf(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := certs.ParseCertificates(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs.FormatSerial(cs[0].SerialNumber)
}

func TestNewHandshakesGetTheReissuedCertificate(t *testing.T) {
	dir := pki(t)
	c, _ := open(t, dir, nil, nil)
	addr := serve(t, c)
	before := serialOf(t, filepath.Join(dir, "edge1.crt"))
	got, err := dial(client(t, dir, "dev1"), addr)
	if err != nil || certs.FormatSerial(got.SerialNumber) != before {
		t.Fatalf("first handshake: %v, serial %v, want %s", err, got, before)
	}
	if err := certs.Issue(dir, certs.Request{Name: "edge1", Role: certs.RoleEdge, Force: true}); err != nil {
		t.Fatal(err)
	}
	after := serialOf(t, filepath.Join(dir, "edge1.crt"))
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	got, err = dial(client(t, dir, "dev1"), addr)
	if err != nil || certs.FormatSerial(got.SerialNumber) != after {
		t.Fatalf("after reload: %v, serial %s, want %s", err, certs.FormatSerial(got.SerialNumber), after)
	}
}

func TestWatchLoadsAChangeWithinTwoPolls(t *testing.T) {
	dir := pki(t)
	changed := make(chan struct{}, 10)
	c, _ := open(t, dir, nil, func() { changed <- struct{}{} })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Watch(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := certs.Issue(dir, certs.Request{Name: "edge1", Role: certs.RoleEdge, Force: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(2 * time.Second):
		t.Fatal("the new certificate was not loaded within 2 s")
	}
	if got, want := certs.FormatSerial(c.Leaf().SerialNumber), serialOf(t, filepath.Join(dir, "edge1.crt")); got != want {
		t.Fatalf("serial in force %s, want %s", got, want)
	}
}

func TestBadNewFilesAreRefusedAndTheOldOnesStay(t *testing.T) {
	cases := []struct {
		name  string
		spoil func(t *testing.T, dir string)
		want  string
	}{
		{"a corrupt certificate", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, "edge1.crt"), []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"))
		}, "edge1.crt"},
		{"a key that is not the certificate's", func(t *testing.T, dir string) {
			copyFile(t, filepath.Join(dir, "dev1.key"), filepath.Join(dir, "edge1.key"))
		}, "private key does not match"},
		{"an expired certificate", func(t *testing.T, dir string) {
			if err := certs.Issue(dir, certs.Request{Name: "edge1", Role: certs.RoleEdge, Force: true, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}); err != nil {
				t.Fatal(err)
			}
		}, "expired"},
		{"a certificate of another CA", func(t *testing.T, dir string) {
			other := pki(t)
			copyFile(t, filepath.Join(other, "edge1.crt"), filepath.Join(dir, "edge1.crt"))
			copyFile(t, filepath.Join(other, "edge1.key"), filepath.Join(dir, "edge1.key"))
		}, "not from a CA of the bundle"},
		{"an empty CA bundle", func(t *testing.T, dir string) { write(t, filepath.Join(dir, "ca.crt"), nil) }, "no PEM certificate"},
		{"a CRL of another CA", func(t *testing.T, dir string) {
			other := pki(t)
			if _, err := certs.Revoke(other, "dev1", nil, 0); err != nil {
				t.Fatal(err)
			}
			copyFile(t, filepath.Join(other, "crl.pem"), filepath.Join(dir, "crl.pem"))
		}, "not signed by a CA of the bundle"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := pki(t)
			reg := prometheus.NewRegistry()
			c, lb := open(t, dir, reg, nil)
			addr := serve(t, c)
			want := serialOf(t, filepath.Join(dir, "edge1.crt"))
			dev2 := client(t, dir, "dev2")
			tc.spoil(t, dir)
			err := c.Reload()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("reload: %v, want an error with %q", err, tc.want)
			}
			if n := strings.Count(lb.String(), "TLS reload refused"); n != 1 {
				t.Errorf("%d log lines of the refusal, want 1", n)
			}
			got, err := dial(dev2, addr)
			if err != nil {
				t.Fatalf("handshake after the refused reload: %v", err)
			}
			if s := certs.FormatSerial(got.SerialNumber); s != want {
				t.Fatalf("server serial %s, want the old %s", s, want)
			}
			if v := gauge(t, reg, "iotkv_tls_reloads_total", "refused"); v != 1 {
				t.Errorf("iotkv_tls_reloads_total{result=refused} = %v, want 1", v)
			}
		})
	}
}

func TestARevokedClientIsRefusedAtTheHandshake(t *testing.T) {
	dir := pki(t)
	c, _ := open(t, dir, nil, nil)
	addr := serve(t, c)
	if _, err := dial(client(t, dir, "dev2"), addr); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.Revoke(dir, "dev2", nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(client(t, dir, "dev2"), addr); err == nil {
		t.Fatal("a revoked certificate completed a handshake")
	}
	if _, err := dial(client(t, dir, "dev1"), addr); err != nil {
		t.Fatalf("dev1, not revoked: %v", err)
	}
	// The CRL cannot be taken away to lift revocations.
	if err := os.Remove(filepath.Join(dir, "crl.pem")); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(); err == nil {
		t.Fatal("a deleted CRL was accepted")
	}
	if _, err := dial(client(t, dir, "dev2"), addr); err == nil {
		t.Fatal("a revoked certificate completed a handshake after its CRL was deleted")
	}
}

func TestACRLPastItsNextUpdateIsLoggedAndKept(t *testing.T) {
	dir := pki(t)
	if _, err := certs.Revoke(dir, "dev2", nil, 0); err != nil {
		t.Fatal(err)
	}
	now := time.Now().AddDate(0, 0, certs.DefaultCRLDays+1)
	var lb logBuf
	c, err := live.Open(live.Options{Files: certs.PathsFor(dir, "edge1"), Now: func() time.Time { return now }, Logger: slog.New(slog.NewTextHandler(&lb, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(lb.String(), "level=ERROR") || !strings.Contains(lb.String(), "past its next update") {
		t.Errorf("no loud log of the stale CRL: %s", lb.String())
	}
	data, _ := os.ReadFile(filepath.Join(dir, "dev2.crt"))
	cs, _ := certs.ParseCertificates(data)
	if !c.Revoked(cs[0]) {
		t.Fatal("the stale CRL is not enforced")
	}
}

func TestExpiryMetricAndWarning(t *testing.T) {
	dir := pki(t)
	if err := certs.Issue(dir, certs.Request{Name: "edge1", Role: certs.RoleEdge, Force: true, Days: 10}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	_, lb := open(t, dir, reg, nil)
	server := gauge(t, reg, "iotkv_tls_cert_expiry_seconds", "server")
	if d := server - 10*24*3600; d > 60 || d < -60 {
		t.Errorf("server expiry %v s, want about 10 days", server)
	}
	if ca := gauge(t, reg, "iotkv_tls_cert_expiry_seconds", "ca"); ca < 9*365*24*3600 {
		t.Errorf("CA expiry %v s, want about 10 years", ca)
	}
	if !strings.Contains(lb.String(), "server certificate expires soon") {
		t.Errorf("no warning for a certificate 10 days from expiry: %s", lb.String())
	}
}

// TestReloadRaces runs handshakes while the files change and reloads run
// (go test -race): every handshake sees a whole pair, old or new.
func TestReloadRaces(t *testing.T) {
	dir := pki(t)
	c, _ := open(t, dir, prometheus.NewRegistry(), nil)
	addr := serve(t, c)
	dev1 := client(t, dir, "dev1")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.Watch(ctx) }()
	errs := make(chan error, 100)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, err := dial(dev1, addr); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := 0; i < 10; i++ {
		if err := certs.Issue(dir, certs.Request{Name: "edge1", Role: certs.RoleEdge, Force: true}); err != nil {
			t.Fatal(err)
		}
		_ = c.Reload() // may see the new key with the old certificate: refused, then loaded
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("handshake during reloads: %v", err)
	}
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, want := certs.FormatSerial(c.Leaf().SerialNumber), serialOf(t, filepath.Join(dir, "edge1.crt")); got != want {
		t.Fatalf("serial in force %s, want %s", got, want)
	}
}

func gauge(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					if m.Gauge != nil {
						return m.GetGauge().GetValue()
					}
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s} in the registry", name, label)
	return 0
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	write(t, to, data)
}
