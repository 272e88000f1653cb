package edge_test

import (
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// mqttRefused reports whether a full MQTT login of user over tc fails
// before a successful CONNACK. With TLS 1.3 a refused client certificate
// shows up on the first read after the handshake, so the login is
// attempted to the end.
func (env *secEnv) mqttRefused(t *testing.T, user string, tc *tls.Config) (bool, string) {
	t.Helper()
	conn, err := secDialTLS(env.edge.MQTTAddr(), tc)
	if err != nil {
		return true, "handshake: " + err.Error()
	}
	defer conn.Close()
	c := &secMQTT{t: t, conn: conn, r: newReader(conn), version: 5}
	err = c.trySend(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: user + "-tls",
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(testenv.Password(user))},
	})
	if err != nil {
		return true, "write CONNECT: " + err.Error()
	}
	pk, err := c.read(10 * time.Second)
	if err != nil {
		return true, "read CONNACK: " + err.Error()
	}
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode != 0 {
		return true, "CONNACK refused"
	}
	return false, "logged in"
}

// httpsRefused reports whether an HTTPS request with tc fails at the TLS
// layer.
func (env *secEnv) httpsRefused(t *testing.T, tc *tls.Config) (bool, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	req, _ := http.NewRequest("GET", "https://"+env.edge.HTTPAddr()+"/healthz", nil)
	resp, err := c.Do(req)
	if err != nil {
		return true, err.Error()
	}
	resp.Body.Close()
	return false, resp.Status
}

// TestTLSPolicy: TLS 1.2 is the minimum; only certificates from our CA
// that are valid now are accepted, on MQTT always and on HTTPS whenever a
// certificate is presented or required.
func TestTLSPolicy(t *testing.T) {
	now := time.Now()
	env := secStartWith(t, func(p *testenv.PKI) {
		issue := func(name string, notBefore, notAfter time.Time) {
			if err := certs.Issue(p.Dir, certs.Request{Name: name, Role: certs.RoleDevice, NotBefore: notBefore, NotAfter: notAfter}); err != nil {
				t.Fatal(err)
			}
			secAddAccount(t, p, name, iotkv.RoleDevice, testenv.Password(name))
		}
		issue("dev-expired", now.Add(-48*time.Hour), now.Add(-time.Hour))
		issue("dev-future", now.Add(time.Hour), now.Add(48*time.Hour))
	}, nil)
	strict := testenv.StartEdge(t, env.pki, "edge-1", func(o *edge.Options) { o.RestClientCert = "require" })
	strictEnv := &secEnv{pki: env.pki, edge: strict, log: env.log}
	// A CA of its own, with an identity named like a real device.
	other := testenv.NewPKI(t)
	if err := certs.Issue(other.Dir, certs.Request{Name: "dev-1", Role: certs.RoleDevice}); err != nil {
		t.Fatal(err)
	}
	edgePool, err := certs.CAPool(env.pki.Paths("ca").CA)
	if err != nil {
		t.Fatal(err)
	}
	foreign := other.ClientTLS(t, "dev-1")
	foreign.RootCAs = edgePool
	version := func(name string, v uint16) *tls.Config {
		c := env.pki.ClientTLS(t, name)
		c.MinVersion, c.MaxVersion = v, v
		return c
	}
	noCert := &tls.Config{RootCAs: edgePool, MinVersion: tls.VersionTLS12}

	cases := []struct {
		name       string
		user       string
		tc         *tls.Config
		mqttOK     bool
		httpsOK    bool // REST with client certificates optional (the default)
		strictOK   bool // REST with --rest-client-cert=require
		skipMQTT   bool
		skipHTTPS  bool
		skipStrict bool
	}{
		{name: "TLS 1.3 with a valid certificate is accepted", user: "dev-1", tc: version("dev-1", tls.VersionTLS13), mqttOK: true, httpsOK: true, strictOK: true},
		{name: "TLS 1.2 with a valid certificate is accepted", user: "dev-1", tc: version("dev-1", tls.VersionTLS12), mqttOK: true, httpsOK: true, strictOK: true},
		{name: "TLS 1.1 is refused", user: "dev-1", tc: version("dev-1", tls.VersionTLS11)},
		{name: "TLS 1.0 is refused", user: "dev-1", tc: version("dev-1", tls.VersionTLS10)},
		{name: "an expired certificate is refused", user: "dev-expired", tc: env.pki.ClientTLS(t, "dev-expired")},
		{name: "a certificate not yet valid is refused", user: "dev-future", tc: env.pki.ClientTLS(t, "dev-future")},
		{name: "a certificate from another CA is refused", user: "dev-1", tc: foreign},
		{name: "no certificate: MQTT and required REST refuse, optional REST lets Basic auth decide", user: "dev-1", tc: noCert, httpsOK: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if refused, why := env.mqttRefused(t, tc.user, tc.tc.Clone()); refused == tc.mqttOK {
				t.Errorf("MQTT: refused=%v (%s), want refused=%v", refused, why, !tc.mqttOK)
			}
			if refused, why := env.httpsRefused(t, tc.tc.Clone()); refused == tc.httpsOK {
				t.Errorf("HTTPS (client cert optional): refused=%v (%s), want refused=%v", refused, why, !tc.httpsOK)
			}
			if refused, why := strictEnv.httpsRefused(t, tc.tc.Clone()); refused == tc.strictOK {
				t.Errorf("HTTPS (client cert required): refused=%v (%s), want refused=%v", refused, why, !tc.strictOK)
			}
		})
	}
}

// TestCertificateDoesNotGrantRole: the MQTT username must be the
// certificate's CN, and the role comes from the accounts file, never from
// the certificate.
func TestCertificateDoesNotGrantRole(t *testing.T) {
	env := secStartWith(t, func(p *testenv.PKI) {
		// A certificate issued for a server role, on a device account.
		if err := certs.Issue(p.Dir, certs.Request{Name: "impostor", Role: certs.RoleMaster}); err != nil {
			t.Fatal(err)
		}
		secAddAccount(t, p, "impostor", iotkv.RoleDevice, testenv.Password("impostor"))
	}, nil)
	t.Run("a device certificate cannot log in as the master or an edge, even with their passwords", func(t *testing.T) {
		for _, user := range []string{"master", "edge-1", "admin", "dev-2"} {
			tc := env.pki.ClientTLS(t, "dev-1")
			conn, code := env.mqttLoginTLS(t, user, testenv.Password(user), 5, tc)
			if code != packets.ErrBadUsernameOrPassword.Code {
				t.Errorf("dev-1's certificate as %s: CONNACK 0x%02x, want 0x86", user, code)
			}
			conn.conn.Close()
		}
		if !containsAll(env.log.String(), "certificate CN does not match username") {
			t.Error("CN mismatch not logged")
		}
	})
	t.Run("a master-role certificate on a device account gets device powers only", func(t *testing.T) {
		c, code := env.mqttLogin(t, "impostor", testenv.Password("impostor"), 5)
		if code != 0 {
			t.Fatalf("CONNACK 0x%02x", code)
		}
		got := c.subscribe(iotkv.BackupPrefix+"#", iotkv.BackupPrefix+"edge-1/#", iotkv.DeviceNamespace("impostor")+"#")
		want := []byte{packets.ErrNotAuthorized.Code, packets.ErrNotAuthorized.Code, 1}
		if string(got) != string(want) {
			t.Fatalf("SUBACK codes %x, want %x", got, want)
		}
		id := c.publish(iotkv.BackupPrefix+"edge-1/x", []byte(`{}`), false)
		if rc, err := c.puback(id); err != nil || rc != packets.ErrNotAuthorized.Code {
			t.Fatalf("publish on the backup stream: PUBACK 0x%02x, %v; want 0x87", rc, err)
		}
	})
	t.Run("the master account may subscribe to the backup stream", func(t *testing.T) {
		c, code := env.mqttLogin(t, "master", testenv.Password("master"), 5)
		if code != 0 {
			t.Fatalf("CONNACK 0x%02x", code)
		}
		if got := c.subscribe(iotkv.BackupPrefix + "#"); len(got) != 1 || got[0] >= 0x80 {
			t.Fatalf("SUBACK %x", got)
		}
	})
}
