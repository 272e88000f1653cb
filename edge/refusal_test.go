package edge_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pahov5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/testenv"
)

// Every MQTT login needs a certificate from our CA whose CN is the
// username, and the account's password; each missing piece is refused in
// both protocol versions.
func TestLoginsAreRefused(t *testing.T) {
	r := shared
	own := func(t *testing.T) *tls.Config { return r.pki.ClientTLS(t, "ref-a") }
	cases := []struct {
		name     string
		tls      func(t *testing.T) *tls.Config
		user, pw string
	}{
		{"a username that differs from the certificate CN", own, "ref-b", testenv.Password("ref-b")},
		{"a wrong password", own, "ref-a", "not-the-password"},
		{"a certificate from another CA", func(t *testing.T) *tls.Config {
			dir := filepath.Join(t.TempDir(), "rogue")
			if err := certs.Init(dir, false); err != nil {
				t.Fatal(err)
			}
			if err := certs.Issue(dir, certs.Request{Name: "ref-a", Role: certs.RoleDevice}); err != nil {
				t.Fatal(err)
			}
			rogue, err := certs.ClientConfig(certs.PathsFor(dir, "ref-a"))
			if err != nil {
				t.Fatal(err)
			}
			tc := own(t) // trusts our CA, presents the rogue certificate
			tc.Certificates = rogue.Certificates
			return tc
		}, "ref-a", testenv.Password("ref-a")},
		{"no client certificate", func(t *testing.T) *tls.Config {
			tc := own(t)
			tc.Certificates = nil
			return tc
		}, "ref-a", testenv.Password("ref-a")},
	}
	for _, tc := range cases {
		t.Run(tc.name+" over MQTT 5", func(t *testing.T) {
			if c, ack, err := r.dialV5(t, tc.user, tc.tls(t), tc.pw); err == nil {
				_ = c.Disconnect(&pahov5.Disconnect{})
				t.Fatalf("login accepted: %+v", ack)
			}
		})
		t.Run(tc.name+" over MQTT 3.1.1", func(t *testing.T) {
			o := r.pki.MQTTOptionsTLS(r.edge.MQTTAddr(), tc.user, tc.pw, tc.tls(t))
			o.SetProtocolVersion(4)
			c := paho.NewClient(o)
			tok := c.Connect()
			if !tok.WaitTimeout(15 * time.Second) {
				t.Fatal("no answer to CONNECT within 15s")
			}
			if tok.Error() == nil {
				c.Disconnect(100)
				t.Fatal("login accepted")
			}
		})
	}
	t.Run("a plaintext connection", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", r.edge.MQTTAddr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// CONNECT, MQTT 3.1.1, clean session, keepalive 30, client id "x",
		// username ref-a and its password: valid MQTT, but not TLS.
		user, pw := "ref-a", testenv.Password("ref-a")
		var body []byte
		body = append(body, 0, 4, 'M', 'Q', 'T', 'T', 4, 0xC2, 0, 30, 0, 1, 'x')
		body = append(body, 0, byte(len(user)))
		body = append(body, user...)
		body = append(body, 0, byte(len(pw)))
		body = append(body, pw...)
		if _, err := conn.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
			return // refused before the packet was taken
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 64)
		n, err := conn.Read(buf)
		if n > 0 && buf[0] == 0x20 {
			t.Fatalf("a plaintext CONNECT got a CONNACK: % x", buf[:n])
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the edge kept a plaintext connection open for 10s")
		}
	})
}

// A device publishes and subscribes only under its own namespace: device A
// cannot write under B (v5: PUBACK 0x87; v3.1.1: disconnected), cannot
// write its own status/ topics, and cannot subscribe to the backup stream,
// to #, or to B's topics; it receives nothing of B's.
func TestDeviceIsConfinedToItsNamespace(t *testing.T) {
	r := shared
	a5 := r.v5(t, "ref-a")
	for _, topic := range []string{
		iotkv.BatchTopic("ref-b"),
		iotkv.KVTopic("ref-b", "k"),
		iotkv.AckTopic("ref-a"),
		iotkv.BackupPrefix + "edge1/x",
	} {
		if rc := rigPublish5(t, a5, topic, []byte(`{"seq":100,"ops":[{"op":"put","key":"k","value":1}]}`)); rc != 0x87 {
			t.Errorf("ref-a publishing on %s over v5: PUBACK 0x%02x, want 0x87", topic, rc)
		}
	}

	a3 := r.v3(t, "ref-a")
	tok := a3.Publish(iotkv.BatchTopic("ref-b"), 1, false, []byte(`{"seq":101,"ops":[{"op":"put","key":"k","value":1}]}`))
	tok.WaitTimeout(5 * time.Second)
	for deadline := time.Now().Add(10 * time.Second); a3.IsConnectionOpen(); {
		if time.Now().After(deadline) {
			t.Fatal("ref-a publishing under ref-b over v3.1.1 was not disconnected")
		}
		time.Sleep(10 * time.Millisecond) // polling a state we cannot wait on
	}
	if code, _ := r.get(t, "admin", "ref-b", "k"); code != http.StatusNotFound {
		t.Errorf("ref-a wrote into ref-b's namespace: GET ref-b/k = %d", code)
	}

	a3 = r.v3(t, "ref-a")
	got := make(chan paho.Message, 256)
	for _, filter := range []string{"iotkv/v1/backup/#", "#", "iotkv/v1/#", "iotkv/v1/devices/ref-b/#", "iotkv/v1/devices/+/status/ack"} {
		tok := a3.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { got <- m })
		if !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", filter, tok.Error())
		}
		if q := tok.(*paho.SubscribeToken).Result()[filter]; q != 0x80 {
			t.Errorf("ref-a subscribing to %s over v3.1.1: granted 0x%02x, want 0x80", filter, q)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	suback, err := a5.Subscribe(ctx, &pahov5.Subscribe{Subscriptions: []pahov5.SubscribeOptions{{Topic: "iotkv/v1/backup/#", QoS: 1}, {Topic: "#", QoS: 1}}})
	if suback == nil {
		t.Fatalf("v5 subscribe: %v", err)
	}
	for i, rc := range suback.Reasons {
		if rc < 0x80 {
			t.Errorf("ref-a subscribing to filter %d over v5: reason 0x%02x, want a refusal", i, rc)
		}
	}

	// What ref-a may see arrives on its own namespace; B's traffic, made
	// before A's, must not have reached A by the time A's own ack does.
	ownAcks := make(chan paho.Message, 16)
	if tok := a3.Subscribe(iotkv.DeviceNamespace("ref-a")+"#", 1, func(_ paho.Client, m paho.Message) { ownAcks <- m }); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("ref-a subscribing to its own namespace: %v", tok.Error())
	}
	b := r.v3(t, "ref-b")
	rigPublish3(t, b, iotkv.BatchTopic("ref-b"), []byte(`{"seq":1,"ops":[{"op":"put","key":"secret","value":"b's"}]}`))
	rigPublish3(t, a3, iotkv.BatchTopic("ref-a"), []byte(`{"seq":1,"ops":[{"op":"put","key":"mine","value":1}]}`))
	for {
		m := rigNext(t, ownAcks, "ref-a's own status/ack")
		if m.Topic() == iotkv.AckTopic("ref-a") && string(m.Payload()) == `{"seq":1}` {
			break
		}
	}
	// paho routes a message to every handler whose filter matches, refused
	// or not, so ref-a's own messages show up in got too: only their topics
	// tell what the broker sent.
	for _, m := range append(rigDrain(got), rigDrain(ownAcks)...) {
		if !strings.HasPrefix(m.Topic(), iotkv.DeviceNamespace("ref-a")) {
			t.Errorf("ref-a received %s %s", m.Topic(), m.Payload())
		}
	}
}

// rigDrain returns what is waiting in ch now.
func rigDrain(ch <-chan paho.Message) []paho.Message {
	var out []paho.Message
	for {
		select {
		case m := <-ch:
			out = append(out, m)
		default:
			return out
		}
	}
}
