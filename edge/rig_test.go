package edge_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	pahov5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// edgeRig is a PKI, an edge on loopback port 0, the devices of rigDevices
// and an admin account (main_test.go).
type edgeRig struct {
	pki    *testenv.PKI
	edge   *edge.Edge
	client *http.Client    // HTTPS, trusting the CA, presenting admin's certificate
	logs   *testenv.Buffer // everything the shared edge logged
}

const rigAdminPassword = "admin-secret"

// get reads /v1/kv/device/key as user (whose password is
// testenv.Password(user), or the admin's).
func (r *edgeRig) get(t *testing.T, user, device, key string) (int, iotkv.Record) {
	t.Helper()
	code, body := r.http(t, user, http.MethodGet, "/v1/kv/"+device+"/"+key)
	var rec iotkv.Record
	if code == http.StatusOK {
		if err := json.Unmarshal(body, &rec); err != nil {
			t.Fatalf("GET %s/%s: %v: %s", device, key, err, body)
		}
	}
	return code, rec
}

func (r *edgeRig) password(user string) string {
	if user == "admin" {
		return rigAdminPassword
	}
	return testenv.Password(user)
}

func (r *edgeRig) http(t *testing.T, user, method, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+r.edge.HTTPAddr()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, r.password(user))
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// metric sums the samples of a counter in /metrics whose labels contain
// every string in match.
func (r *edgeRig) metric(t *testing.T, name string, match ...string) float64 {
	t.Helper()
	code, body := r.http(t, "admin", http.MethodGet, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// v3 logs name in over MQTT 3.1.1.
func (r *edgeRig) v3(t *testing.T, name string) paho.Client {
	t.Helper()
	o := r.pki.MQTTOptions(t, r.edge.MQTTAddr(), name)
	o.SetProtocolVersion(4)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", name, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// rigPublish3 publishes at QoS 1 and waits for the PUBACK.
func rigPublish3(t *testing.T, c paho.Client, topic string, payload any) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(15 * time.Second) {
		t.Fatalf("publish %s: no PUBACK within 15s", topic)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// v5 logs name in over MQTT 5 with its own certificate and password.
func (r *edgeRig) v5(t *testing.T, name string) *pahov5.Client {
	t.Helper()
	c, ack, err := r.dialV5(t, name, r.pki.ClientTLS(t, name), r.password(name))
	if err != nil {
		t.Fatalf("connect %s over v5: %v (%+v)", name, err, ack)
	}
	return c
}

func (r *edgeRig) dialV5(t *testing.T, name string, tc *tls.Config, password string) (*pahov5.Client, *pahov5.Connack, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := (&tls.Dialer{Config: tc}).DialContext(ctx, "tcp", r.edge.MQTTAddr())
	if err != nil {
		return nil, nil, err
	}
	received := make(chan *pahov5.Publish, 64)
	c := pahov5.NewClient(pahov5.ClientConfig{
		ClientID: fmt.Sprintf("%s-v5-%d", name, time.Now().UnixNano()),
		Conn:     packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(pahov5.PublishReceived) (bool, error){func(pr pahov5.PublishReceived) (bool, error) {
			select {
			case received <- pr.Packet:
			default:
			}
			return true, nil
		}},
		PacketTimeout: 15 * time.Second,
	})
	ack, err := c.Connect(ctx, &pahov5.Connect{
		ClientID: fmt.Sprintf("%s-v5-%d", name, time.Now().UnixNano()), KeepAlive: 30, CleanStart: true,
		Username: name, UsernameFlag: true, Password: []byte(password), PasswordFlag: true,
	})
	if err != nil {
		_ = conn.Close()
		return nil, ack, err
	}
	t.Cleanup(func() { _ = c.Disconnect(&pahov5.Disconnect{}) })
	return c, ack, nil
}

// rigPublish5 publishes at QoS 1 and returns the PUBACK's reason code.
func rigPublish5(t *testing.T, c *pahov5.Client, topic string, payload []byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	resp, err := c.Publish(ctx, &pahov5.Publish{Topic: topic, QoS: 1, Payload: payload})
	if resp == nil {
		t.Fatalf("publish %s over v5: no PUBACK: %v", topic, err)
	}
	return resp.ReasonCode
}

// rigSubscribe3 subscribes a v3.1.1 client to filter and returns what it
// receives there and the SUBACK's granted QoS (0x80: refused).
func rigSubscribe3(t *testing.T, c paho.Client, filter string) (<-chan paho.Message, byte) {
	t.Helper()
	ch := make(chan paho.Message, 256)
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		select {
		case ch <- m:
		default:
		}
	})
	if !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return ch, tok.(*paho.SubscribeToken).Result()[filter]
}

// rigNext waits for a message on ch.
func rigNext(t *testing.T, ch <-chan paho.Message, what string) paho.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(15 * time.Second):
		t.Fatalf("no %s within 15s", what)
		return nil
	}
}

func rigBatch(t *testing.T, b iotkv.Batch) []byte {
	t.Helper()
	data, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func rigTS(v int64) *int64 { return &v }
