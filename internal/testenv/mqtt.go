package testenv

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

var clientSeq atomic.Int64 // test-only: unique client ids across a test binary

// MQTTOptions are paho options for name logging in to addr with its
// certificate and Password(name); callers may change them before Connect.
func (p *PKI) MQTTOptions(t testing.TB, addr, name string) *paho.ClientOptions {
	t.Helper()
	return p.MQTTOptionsTLS(addr, name, Password(name), p.ClientTLS(t, name))
}

// MQTTOptionsTLS is MQTTOptions with an explicit password and TLS config.
func (p *PKI) MQTTOptionsTLS(addr, name, password string, tc *tls.Config) *paho.ClientOptions {
	o := paho.NewClientOptions()
	o.AddBroker("tls://" + addr)
	o.SetClientID(fmt.Sprintf("%s-%d", name, clientSeq.Add(1)))
	o.SetUsername(name)
	o.SetPassword(password)
	o.SetTLSConfig(tc)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetConnectTimeout(10 * time.Second)
	o.SetWriteTimeout(10 * time.Second)
	return o
}

// Connect logs name in to addr (MQTT 3.1.1 over TLS) and disconnects when
// the test ends.
func (p *PKI) Connect(t testing.TB, addr, name string) paho.Client {
	t.Helper()
	c := paho.NewClient(p.MQTTOptions(t, addr, name))
	tok := c.Connect()
	if !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s to %s: %v", name, addr, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}
