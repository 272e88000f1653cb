package master

import (
	"crypto/tls"
	"io"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv/certs"
)

// The master's HTTPS listener serves a reissued certificate to the next
// handshake, refuses a certificate revoked since, and shows its expiry.
func TestMasterReloadsItsCertificateAndEnforcesTheCRL(t *testing.T) {
	r := newRig(t)
	e := r.startEdge("e1", "", "", nil)
	reg := prometheus.NewRegistry()
	m := r.startMaster(nil, func(o *Options) {
		o.Edges = []Edge{{ID: "e1", Addr: e.MQTTAddr()}}
		o.Registry = reg
	})
	serial := func(name string) (string, error) {
		tc := r.pki.ClientTLS(t, name)
		tc.ServerName = "127.0.0.1"
		conn, err := tls.Dial("tcp", m.HTTPAddr(), tc)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		// TLS 1.3 reports a refused client certificate on the first read.
		_, _ = conn.Write([]byte("GET /healthz HTTP/1.0\r\n\r\n"))
		if _, err := io.ReadAll(conn); err != nil {
			return "", err
		}
		return certs.FormatSerial(conn.ConnectionState().PeerCertificates[0].SerialNumber), nil
	}
	fileSerial := func() string {
		data, err := os.ReadFile(r.pki.Paths("master").Cert)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := certs.ParseCertificates(data)
		if err != nil {
			t.Fatal(err)
		}
		return certs.FormatSerial(cs[0].SerialNumber)
	}
	if got, err := serial("admin"); err != nil || got != fileSerial() {
		t.Fatalf("first handshake: %v, serial %s, want %s", err, got, fileSerial())
	}
	if err := certs.Issue(r.pki.Dir, certs.Request{Name: "master", Role: certs.RoleMaster, Force: true}); err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, err := serial("admin"); err != nil || got != fileSerial() {
		t.Fatalf("after the reissue: %v, serial %s, want %s", err, got, fileSerial())
	}
	if _, err := certs.Revoke(r.pki.Dir, "rd", nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := serial("rd"); err == nil {
		t.Fatal("a revoked client certificate completed a handshake with the master")
	}
	if _, err := serial("admin"); err != nil {
		t.Fatalf("admin, not revoked: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "iotkv_tls_cert_expiry_seconds" {
			for _, mt := range mf.GetMetric() {
				if v := mt.GetGauge().GetValue(); v < 800*24*3600 {
					t.Errorf("expiry %v s, want about 825 days or more", v)
				}
				found = true
			}
		}
	}
	if !found {
		t.Fatal("no iotkv_tls_cert_expiry_seconds on the master")
	}
	// The master still follows the edge after all that.
	r.restPut(e, "d1", "k", `1`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		h, st := r.latest("e1")
		if _, ok := st["d1/k"]; ok && h.Seq > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the master stopped following e1")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
