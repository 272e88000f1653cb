package certs_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/iotkv/iotkv/certs"
)

func load(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(path, path[:len(path)-len(".crt")]+".key")
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestInitAndIssue(t *testing.T) {
	dir := t.TempDir()
	if err := certs.Init(dir, false); err != nil {
		t.Fatal(err)
	}
	if err := certs.Init(dir, false); !errors.Is(err, certs.ErrExists) {
		t.Fatalf("a second Init without force: %v, want ErrExists", err)
	}
	ca := load(t, filepath.Join(dir, "ca.crt"))
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("the CA certificate cannot sign: IsCA %v, usage %v", ca.IsCA, ca.KeyUsage)
	}
	if k, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("the CA key is %T, want ECDSA P-256", ca.PublicKey)
	}

	cases := []struct {
		name   string
		req    certs.Request
		server bool
		dns    []string
		ips    []string
	}{
		{"an edge gets the loopback SANs by default", certs.Request{Name: "edge1", Role: certs.RoleEdge}, true, []string{"localhost"}, []string{"127.0.0.1", "::1"}},
		{"a master gets the hosts it is given", certs.Request{Name: "master", Role: certs.RoleMaster, Hosts: []string{"m.example", " 10.1.2.3 ", ""}}, true, []string{"m.example"}, []string{"10.1.2.3"}},
		{"a device is a client only", certs.Request{Name: "dev1", Role: certs.RoleDevice, Days: 30}, false, nil, nil},
		{"a client is a client only", certs.Request{Name: "ops", Role: certs.RoleClient}, false, nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := certs.Issue(dir, tc.req); err != nil {
				t.Fatal(err)
			}
			p := certs.PathsFor(dir, tc.req.Name)
			c := load(t, p.Cert)
			if c.Subject.CommonName != tc.req.Name {
				t.Errorf("CN %q, want %q", c.Subject.CommonName, tc.req.Name)
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("not a client certificate of the CA: %v", err)
			}
			_, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if (err == nil) != tc.server {
				t.Errorf("server auth usage: verify error %v, want server=%v", err, tc.server)
			}
			if tc.server {
				var ips []string
				for _, ip := range c.IPAddresses {
					ips = append(ips, ip.String())
				}
				if !equal(c.DNSNames, tc.dns) || !equal(ips, tc.ips) {
					t.Errorf("SANs DNS %v IP %v, want %v %v", c.DNSNames, ips, tc.dns, tc.ips)
				}
			}
			if tc.req.Days == 30 && c.NotAfter.Sub(time.Now()) > 31*24*time.Hour {
				t.Errorf("--days 30 gave a certificate valid until %v", c.NotAfter)
			}
			if st, err := os.Stat(p.Key); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v (%v), want 0600", st.Mode().Perm(), err)
			}
		})
	}
	if st, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("ca.key mode %v (%v), want 0600", st.Mode().Perm(), err)
	}

	refusals := []struct {
		name string
		req  certs.Request
	}{
		{"an existing name without force", certs.Request{Name: "dev1", Role: certs.RoleDevice}},
		{"an unknown role", certs.Request{Name: "x", Role: "king"}},
		{"the CA's own name", certs.Request{Name: "ca", Role: certs.RoleDevice}},
		{"a name with a slash", certs.Request{Name: "../x", Role: certs.RoleDevice}},
	}
	for _, r := range refusals {
		if err := certs.Issue(dir, r.req); err == nil {
			t.Errorf("Issue of %s succeeded", r.name)
		}
	}
	if err := certs.Issue(dir, certs.Request{Name: "dev1", Role: certs.RoleDevice, Force: true}); err != nil {
		t.Errorf("Issue with force over an existing name: %v", err)
	}
	if err := certs.Issue(t.TempDir(), certs.Request{Name: "dev1", Role: certs.RoleDevice}); err == nil {
		t.Error("Issue without a CA succeeded")
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A server and client configured from the same CA complete a mutual TLS
// handshake, the server learns the client's CN, and TLS 1.1 is refused.
func TestTLSConfigsHandshake(t *testing.T) {
	dir := t.TempDir()
	if err := certs.Init(dir, false); err != nil {
		t.Fatal(err)
	}
	for _, r := range []certs.Request{{Name: "edge1", Role: certs.RoleEdge}, {Name: "dev1", Role: certs.RoleDevice}} {
		if err := certs.Issue(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	sc, err := certs.ServerConfig(certs.PathsFor(dir, "edge1"), tls.RequireAndVerifyClientCert)
	if err != nil {
		t.Fatal(err)
	}
	if sc.MinVersion != tls.VersionTLS12 {
		t.Errorf("server MinVersion %x, want TLS 1.2", sc.MinVersion)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", sc)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cns := make(chan string, 2)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			tc := conn.(*tls.Conn)
			_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.Handshake() == nil {
				cns <- certs.PeerCN(tc.ConnectionState())
			} else {
				cns <- ""
			}
			tc.Close()
		}
	}()
	cc, err := certs.ClientConfig(certs.PathsFor(dir, "dev1"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), cc)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if cn := <-cns; cn != "dev1" {
		t.Errorf("server saw CN %q, want dev1", cn)
	}
	old := cc.Clone()
	old.MaxVersion = tls.VersionTLS11
	old.MinVersion = tls.VersionTLS10
	if conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), old); err == nil {
		conn.Close()
		t.Error("a TLS 1.1 client was accepted")
	}
	<-cns
	if certs.PeerCN(tls.ConnectionState{}) != "" {
		t.Error("PeerCN of a connection without a verified chain is not empty")
	}
	if _, err := certs.CAPool(filepath.Join(dir, "edge1.key")); err == nil {
		t.Error("CAPool accepted a file with no certificate")
	}
}
