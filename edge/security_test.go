package edge_test

// Security tests of the edge. Helpers used by every
// *security_test.go file of this package are here, prefixed sec so they
// never collide with the functional tests' helpers.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"golang.org/x/crypto/bcrypt"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// secEnv is an edge with a PKI, one account per role and its log.
type secEnv struct {
	pki  *testenv.PKI
	edge *edge.Edge
	log  *testenv.Buffer
}

// secRoles are the accounts every secEnv has: name → role.
var secRoles = []struct {
	name string
	role iotkv.Role
}{
	{"dev-1", iotkv.RoleDevice}, {"dev-2", iotkv.RoleDevice}, {"reader", iotkv.RoleReader},
	{"writer", iotkv.RoleWriter}, {"admin", iotkv.RoleAdmin}, {"master", iotkv.RoleMaster},
}

func secStart(t *testing.T, mod func(*edge.Options)) *secEnv {
	t.Helper()
	return secStartWith(t, nil, mod)
}

// secStartWith runs setup on the PKI before the edge starts, so that the
// accounts it adds are loaded from the start.
func secStartWith(t *testing.T, setup func(*testenv.PKI), mod func(*edge.Options)) *secEnv {
	t.Helper()
	env := &secEnv{pki: testenv.NewPKI(t), log: &testenv.Buffer{}}
	for _, r := range secRoles {
		secIdentity(t, env.pki, r.name, r.role)
	}
	secIdentity(t, env.pki, "edge-1", iotkv.RoleEdge)
	if setup != nil {
		setup(env.pki)
	}
	env.edge = testenv.StartEdge(t, env.pki, "edge-1", func(o *edge.Options) {
		o.Logger = slog.New(slog.NewTextHandler(env.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
		if mod != nil {
			mod(o)
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("edge log:\n%s", env.log)
		}
	})
	return env
}

// secIdentity is testenv's Identity with a bcrypt cost of 4 (below what
// the CLI allows), so that the race detector on a busy machine spends its
// time on the code under test rather than on hashing.
func secIdentity(t *testing.T, p *testenv.PKI, name string, role iotkv.Role) {
	t.Helper()
	certRole := map[iotkv.Role]string{iotkv.RoleEdge: certs.RoleEdge, iotkv.RoleMaster: certs.RoleMaster, iotkv.RoleDevice: certs.RoleDevice}[role]
	if certRole == "" {
		certRole = certs.RoleClient
	}
	if err := certs.Issue(p.Dir, certs.Request{Name: name, Role: certRole}); err != nil {
		t.Fatal(err)
	}
	secAddAccount(t, p, name, role, testenv.Password(name))
}

var secAccountsMu sync.Mutex

func secAddAccount(t *testing.T, p *testenv.PKI, name string, role iotkv.Role, password string) {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	secAccountsMu.Lock()
	defer secAccountsMu.Unlock()
	f, err := accounts.Load(p.Accounts)
	if err != nil {
		t.Fatal(err)
	}
	f.Accounts = append(f.Accounts, accounts.Account{Name: name, Role: role, Hash: string(h)})
	if err := f.Save(p.Accounts); err != nil {
		t.Fatal(err)
	}
}

// secClientFrom is an HTTPS client trusting the CA, presenting no
// certificate, whose connections come from the loopback address local.
func (env *secEnv) httpClientFrom(t *testing.T, local string) *http.Client {
	t.Helper()
	pool, err := certs.CAPool(env.pki.Paths("ca").CA)
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{Timeout: 10 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext:     d.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
}

type secAnswer struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request; user "" sends no credentials.
func (env *secEnv) do(t *testing.T, c *http.Client, method, path, user, password, body string) secAnswer {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+env.edge.HTTPAddr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return secAnswer{resp.StatusCode, resp.Header, b}
}

// secMQTT is a raw MQTT client over TLS built from mochi's packet codec,
// so tests can send what no well-behaved client library would.
type secMQTT struct {
	t       *testing.T
	conn    *tls.Conn
	r       *bufio.Reader
	version byte
	nextID  uint16
	connack packets.Packet
}

func secDialTLS(addr string, tc *tls.Config) (*tls.Conn, error) {
	return secDialTLSFrom(addr, tc, "")
}

// secDialTLSFrom dials from the loopback address local ("" for any).
func secDialTLSFrom(addr string, tc *tls.Config, local string) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	return tls.DialWithDialer(d, "tcp", addr, tc)
}

// mqttLogin connects name over TLS with its own certificate and logs in
// with password; it returns the client and the CONNACK reason code.
func (env *secEnv) mqttLogin(t *testing.T, name, password string, version byte) (*secMQTT, byte) {
	t.Helper()
	return env.mqttLoginTLS(t, name, password, version, env.pki.ClientTLS(t, name))
}

func (env *secEnv) mqttLoginTLS(t *testing.T, user, password string, version byte, tc *tls.Config) (*secMQTT, byte) {
	t.Helper()
	return env.mqttLoginFrom(t, user, password, version, tc, "")
}

func (env *secEnv) mqttLoginFrom(t *testing.T, user, password string, version byte, tc *tls.Config, local string) (*secMQTT, byte) {
	t.Helper()
	conn, err := secDialTLSFrom(env.edge.MQTTAddr(), tc, local)
	if err != nil {
		t.Fatalf("tls dial as %s: %v", user, err)
	}
	c := &secMQTT{t: t, conn: conn, r: bufio.NewReader(conn), version: version}
	t.Cleanup(func() { conn.Close() })
	c.send(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName: []byte(map[byte]string{4: "MQTT", 5: "MQTT"}[version]), Clean: true, Keepalive: 30,
			ClientIdentifier: fmt.Sprintf("%s-sec-%d", user, time.Now().UnixNano()),
			UsernameFlag:     true, Username: []byte(user), PasswordFlag: true, Password: []byte(password),
		},
	})
	pk, err := c.read(10 * time.Second)
	if err != nil {
		t.Fatalf("read CONNACK as %s: %v", user, err)
	}
	if pk.FixedHeader.Type != packets.Connack {
		t.Fatalf("got packet type %d, want CONNACK", pk.FixedHeader.Type)
	}
	c.connack = pk
	return c, pk.ReasonCode
}

func (c *secMQTT) send(pk packets.Packet) {
	c.t.Helper()
	if err := c.trySend(pk); err != nil {
		c.t.Fatalf("send packet type %d: %v", pk.FixedHeader.Type, err)
	}
}

func (c *secMQTT) trySend(pk packets.Packet) error {
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	default:
		return fmt.Errorf("secMQTT cannot encode packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err = c.conn.Write(buf.Bytes())
	return err
}

// publish sends a QoS 1 publish and returns its packet id.
func (c *secMQTT) publish(topic string, payload []byte, retain bool) uint16 {
	c.t.Helper()
	c.nextID++
	c.send(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: retain},
		ProtocolVersion: c.version, TopicName: topic, PacketID: c.nextID, Payload: payload,
	})
	return c.nextID
}

// subscribe subscribes to filters at QoS 1 and returns the SUBACK codes.
func (c *secMQTT) subscribe(filters ...string) []byte {
	c.t.Helper()
	c.nextID++
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: c.version, PacketID: c.nextID}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	c.send(pk)
	for {
		got, err := c.read(10 * time.Second)
		if err != nil {
			c.t.Fatalf("waiting for SUBACK: %v", err)
		}
		if got.FixedHeader.Type == packets.Suback && got.PacketID == pk.PacketID {
			return got.ReasonCodes
		}
	}
}

// read reads one packet. PUBACK and DISCONNECT reason codes are decoded
// here (mochi's decoder skips a DISCONNECT reason code without properties).
func (c *secMQTT) read(timeout time.Duration) (packets.Packet, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	var pk packets.Packet
	b, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	if pk.FixedHeader.Remaining, _, err = packets.DecodeLength(c.r); err != nil {
		return pk, err
	}
	body := make([]byte, pk.FixedHeader.Remaining)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = c.version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		if len(body) < 2 {
			return pk, errors.New("short PUBACK")
		}
		pk.PacketID = uint16(body[0])<<8 | uint16(body[1])
		if len(body) > 2 {
			pk.ReasonCode = body[2]
		}
	case packets.Disconnect:
		if len(body) > 0 {
			pk.ReasonCode = body[0]
		}
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	}
	return pk, err
}

// puback reads until the PUBACK of id and returns its reason code; a
// DISCONNECT or a closed connection is an error carrying its reason.
func (c *secMQTT) puback(id uint16) (byte, error) {
	for {
		pk, err := c.read(10 * time.Second)
		if err != nil {
			return 0, err
		}
		switch {
		case pk.FixedHeader.Type == packets.Puback && pk.PacketID == id:
			return pk.ReasonCode, nil
		case pk.FixedHeader.Type == packets.Disconnect:
			return pk.ReasonCode, fmt.Errorf("DISCONNECT 0x%02x", pk.ReasonCode)
		}
	}
}

// secBatch is a one-put batch payload.
func secBatch(seq uint64, key, value string) []byte {
	b, _ := json.Marshal(iotkv.Batch{Seq: seq, Ops: []iotkv.Op{{Op: iotkv.OpPut, Key: key, Value: json.RawMessage(value)}}})
	return b
}

// healthy proves the edge still serves a normal device end to end: a
// batch from dev-2 is acknowledged with success and readable over REST.
func (env *secEnv) healthy(t *testing.T) {
	t.Helper()
	c, code := env.mqttLogin(t, "dev-2", testenv.Password("dev-2"), 5)
	if code != 0 {
		t.Fatalf("a normal device cannot log in any more: CONNACK 0x%02x", code)
	}
	seq := uint64(time.Now().UnixNano())
	id := c.publish(iotkv.BatchTopic("dev-2"), secBatch(seq, "alive", fmt.Sprint(seq)), false)
	if rc, err := c.puback(id); err != nil || rc != 0 {
		t.Fatalf("a normal device's batch: PUBACK 0x%02x, %v", rc, err)
	}
	a := env.do(t, env.httpClientFrom(t, ""), "GET", "/v1/kv/dev-2/alive", "dev-2", testenv.Password("dev-2"), "")
	var rec iotkv.Record
	if a.status != 200 || json.Unmarshal(a.body, &rec) != nil || string(rec.Value) != fmt.Sprint(seq) {
		t.Fatalf("a normal device's read: %d %s", a.status, a.body)
	}
	c.conn.Close()
}

// TestAuthorizationMatrix: every REST route × every kind of caller gets
// exactly the status the roles of docs/protocol.md imply.
func TestAuthorizationMatrix(t *testing.T) {
	env := secStartWith(t, func(p *testenv.PKI) {
		secIdentity(t, p, "edge-2", iotkv.RoleEdge) // an edge account that is not this edge
	}, nil)
	c := env.httpClientFrom(t, "")
	for _, d := range []string{"dev-1", "dev-2"} {
		if a := env.do(t, c, "PUT", "/v1/kv/"+d+"/k", "admin", testenv.Password("admin"), `"v"`); a.status != 200 {
			t.Fatalf("setup put %s: %d %s", d, a.status, a.body)
		}
	}
	for _, n := range []string{"dev-1", "reader", "writer", "admin"} { // seed API reads the caller's own namespace
		if a := env.do(t, c, "GET", "/put?key=k&value=v", n, testenv.Password(n), ""); a.status != 200 && n != "reader" {
			t.Fatalf("setup seed put as %s: %d %s", n, a.status, a.body)
		}
	}

	type caller struct {
		name, user, password, target string
		client                       *http.Client
	}
	callers := []caller{
		{"device, own namespace", "dev-1", testenv.Password("dev-1"), "dev-1", c},
		{"device, other namespace", "dev-1", testenv.Password("dev-1"), "dev-2", c},
		{"reader", "reader", testenv.Password("reader"), "dev-2", c},
		{"writer", "writer", testenv.Password("writer"), "dev-2", c},
		{"admin", "admin", testenv.Password("admin"), "dev-2", c},
		{"master", "master", testenv.Password("master"), "dev-2", c},
		{"edge", "edge-2", testenv.Password("edge-2"), "dev-2", c},
		{"no credentials", "", "", "dev-2", c},
		// nil: a client of its own per route (below).
		{"wrong password", "admin", "not-the-password", "dev-2", nil},
		{"unknown user", "nobody", "x", "dev-2", nil},
	}
	// Columns, in the order of the callers above.
	routes := []struct {
		method, path, body string
		want               [10]int
	}{
		{"GET", "/v1/kv/{t}/k", "", [10]int{200, 403, 200, 200, 200, 403, 403, 401, 401, 401}},
		{"GET", "/v1/kv/{t}?prefix=k&limit=10", "", [10]int{200, 403, 200, 200, 200, 403, 403, 401, 401, 401}},
		{"PUT", "/v1/kv/{t}/k", `"v"`, [10]int{200, 403, 403, 200, 200, 403, 403, 401, 401, 401}},
		{"DELETE", "/v1/kv/{t}/gone", "", [10]int{204, 403, 403, 204, 204, 403, 403, 401, 401, 401}},
		{"GET", "/v1/devices", "", [10]int{200, 200, 200, 200, 200, 200, 200, 401, 401, 401}},
		{"GET", "/metrics", "", [10]int{403, 403, 403, 403, 200, 403, 403, 401, 401, 401}},
		{"GET", "/get?key=k", "", [10]int{200, 200, 404, 200, 200, 403, 403, 401, 401, 401}},
		{"GET", "/put?key=k&value=v", "", [10]int{200, 200, 403, 200, 200, 403, 403, 401, 401, 401}},
		{"GET", "/delete?key=gone", "", [10]int{200, 200, 403, 200, 200, 403, 403, 401, 401, 401}},
		{"GET", "/healthz", "", [10]int{200, 200, 200, 200, 200, 200, 200, 200, 200, 200}},
		{"GET", "/readyz", "", [10]int{200, 200, 200, 200, 200, 200, 200, 200, 200, 200}},
		{"GET", "/v1/openapi.json", "", [10]int{200, 200, 200, 200, 200, 200, 200, 200, 200, 200}},
		{"GET", "/v1/nothing-here", "", [10]int{404, 404, 404, 404, 404, 404, 404, 404, 404, 404}},
	}
	for ri, r := range routes {
		// Wrong passwords come from an address of their own per route, so
		// that the throttle they feed (tested in the brute-force tests)
		// cannot turn later rows into 429s.
		wrong := env.httpClientFrom(t, fmt.Sprintf("127.0.1.%d", ri+1))
		for i, cl := range callers {
			if cl.client == nil {
				cl.client = wrong
			}
			path := strings.ReplaceAll(r.path, "{t}", cl.target)
			t.Run(fmt.Sprintf("%s %s as %s", r.method, r.path, cl.name), func(t *testing.T) {
				a := env.do(t, cl.client, r.method, path, cl.user, cl.password, r.body)
				if a.status != r.want[i] {
					t.Fatalf("%s %s as %s: status %d, want %d: %s", r.method, path, cl.name, a.status, r.want[i], a.body)
				}
				if a.status == 401 && a.header.Get("WWW-Authenticate") != `Basic realm="iotkv"` {
					t.Errorf("401 without WWW-Authenticate: %q", a.header.Get("WWW-Authenticate"))
				}
				if a.status >= 400 && strings.HasPrefix(path, "/v1/") {
					var e struct{ Error iotkv.Error }
					if json.Unmarshal(a.body, &e) != nil || e.Error.Code == "" {
						t.Errorf("error body is not {\"error\":{...}}: %s", a.body)
					}
				}
				if r.path == "/v1/devices" && a.status == 200 && cl.user == "dev-1" && bytes.Contains(a.body, []byte(`"dev-2"`)) {
					t.Errorf("a device sees another device in /v1/devices: %s", a.body)
				}
			})
		}
	}
	// The checks above must not have left anything behind that a caller
	// without the right could have written: dev-2's k still holds admin's
	// value, and master or edge never created a namespace.
	a := env.do(t, c, "GET", "/v1/kv/dev-2/k", "admin", testenv.Password("admin"), "")
	if a.status != 200 {
		t.Fatalf("dev-2/k after the matrix: %d %s", a.status, a.body)
	}
	for _, ns := range []string{"master", "edge-2", "reader"} {
		if a := env.do(t, c, "GET", "/v1/kv/"+ns+"/k", "admin", testenv.Password("admin"), ""); a.status != 404 {
			t.Errorf("%s's namespace holds k after the matrix: %d %s", ns, a.status, a.body)
		}
	}
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
