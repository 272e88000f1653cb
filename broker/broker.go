// Package broker is iotkv's embedded MQTT broker: mochi-mqtt v2 behind a
// TLS-only listener that requires a client certificate from our CA, a login
// hook (certificate CN = username, bcrypt password, throttled failures), an
// ACL that keeps each device in its own namespace, limits on packet size,
// CONNECT time, clients and keepalive, and a publish path that hands device
// writes to an Ingest and writes the PUBACK only when the Ingest says the
// write is durable.
//
// Goroutines: mochi owns one reader and one writer per client; the
// listener owns its accept loop (stopped by Close). PUBACKs for ingested
// publishes are written from the Ingest's goroutine through
// mochi's locked Client.WritePacket.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv/accounts"
)

// Options configure a Broker. Zero values take the documented defaults.
type Options struct {
	Addr string // listen address; default ":8883"
	// TLS is the server configuration; it must require and verify client
	// certificates (certs.ServerConfig with tls.RequireAndVerifyClientCert).
	TLS *tls.Config
	// PeerCheck, when set, refuses a client certificate at login and ends
	// the session of one it later refuses (EndRevokedSessions): the CRL
	// check of live.Certs.CheckPeer.
	PeerCheck func(tls.ConnectionState) error
	Accounts  *accounts.Store       // required
	Throttle  *accounts.Throttle    // default accounts.NewThrottle()
	Ingest    Ingest                // required: where device writes go
	Metrics   prometheus.Registerer // default: a private registry

	MaxPacketSize  uint32        // default 1 MiB
	ConnectTimeout time.Duration // TLS handshake + CONNECT; default 10s
	MaxClients     int64         // default 10,000
	MaxKeepalive   uint16        // seconds; default 300; 0 from a client means this
	// InflightPerClient bounds a client's publishes being committed; the
	// client's reads wait beyond it. Default 256.
	InflightPerClient int
	Logger            *slog.Logger

	// EdgeLink makes this the master's listener for edges that dial out:
	// only role edge logs in; an edge publishes only its own stream
	// (iotkv/v1/backup/{edge}/hello|changes|snapshot) and subscribes only
	// to its own request and confirm; publishes go to in-process
	// subscribers, so no Ingest is needed.
	EdgeLink bool
	// Sessions, with EdgeLink, hears of edges subscribing, leaving and
	// being refused.
	Sessions SessionHook
}

// SessionHook follows the clients of an EdgeLink broker. Each connection
// has its own conn key (its remote address). Calls come from the client's
// goroutine and must not block for long.
type SessionHook interface {
	Subscribed(user, conn string)
	Gone(user, conn string)
	Refused(user, topic string)
}

func (o *Options) setDefaults() error {
	if o.Addr == "" {
		o.Addr = ":8883"
	}
	if o.TLS == nil {
		return errors.New("broker: TLS config is required")
	}
	if o.TLS.ClientAuth != tls.RequireAndVerifyClientCert {
		return errors.New("broker: TLS config must require and verify client certificates")
	}
	if o.Accounts == nil {
		return errors.New("broker: accounts are required")
	}
	if o.Ingest == nil && !o.EdgeLink {
		return errors.New("broker: ingest is required")
	}
	if o.Throttle == nil {
		o.Throttle = accounts.NewThrottle()
	}
	if o.Metrics == nil {
		o.Metrics = prometheus.NewRegistry()
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = 1 << 20
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.MaxClients <= 0 {
		o.MaxClients = 10_000
	}
	if o.MaxKeepalive == 0 {
		o.MaxKeepalive = 300
	}
	if o.InflightPerClient <= 0 {
		o.InflightPerClient = 256
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Broker is a running MQTT broker.
type Broker struct {
	opts     Options
	log      *slog.Logger
	server   *mqtt.Server
	listener *tlsListener
	metrics  *metrics
	closing  atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

// New builds a broker and binds its listener; Serve starts accepting.
func New(opts Options) (*Broker, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	server := mqtt.New(&mqtt.Options{
		InlineClient: true,
		Logger:       newMochiLogger(opts.Logger),
		Capabilities: capabilities(opts),
		// $SYS topics would only tell devices about each other.
		SysTopicResendInterval: 0,
	})
	b := &Broker{opts: opts, log: opts.Logger, server: server}
	var err error
	if b.metrics, err = newMetrics(opts.Metrics, server); err != nil {
		return nil, err
	}
	h := &hook{b: b}
	if err := server.AddHook(h, nil); err != nil {
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}
	b.listener = &tlsListener{id: "mqtts", addr: opts.Addr, config: opts.TLS, deadline: opts.ConnectTimeout}
	if err := server.AddListener(b.listener); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	return b, nil
}

func capabilities(o Options) *mqtt.Capabilities {
	c := mqtt.NewDefaultServerCapabilities()
	c.MaximumPacketSize = o.MaxPacketSize
	c.MaximumClients = o.MaxClients
	// A client's queue of messages for it to read (mochi makes it a
	// buffered channel at connect: 8 bytes a slot, 8 KiB per client at
	// 1024). Devices are sent only their status/ack and status/error;
	// when a client does not read, messages beyond it are dropped (and
	// counted), and the retained cumulative status/ack still tells the
	// device where it stands. 1024 -> 64 cut the edge's RSS growth per
	// connected device from 3.1x to 2.9x mosquitto's (same run).
	c.MaximumClientWritesPending = 64
	c.ReceiveMaximum = uint16(min(o.InflightPerClient, 65535))
	c.MaximumSessionExpiryInterval = 3600
	// 0: no forced expiry. With a maximum, mochi deletes every retained
	// message older than it, the edge's own status/ack included, and a
	// device that lost its queue could no longer learn its seq. Devices
	// cannot retain anything (see hook.OnPublish), so nothing else grows.
	c.MaximumMessageExpiryInterval = 0
	return c
}

// Addr is the bound MQTT address.
func (b *Broker) Addr() string { return b.listener.Address() }

// Serve starts accepting clients; it returns at once.
func (b *Broker) Serve() error {
	if err := b.server.Serve(); err != nil {
		return fmt.Errorf("broker: serve: %w", err)
	}
	return nil
}

// StopAccepting closes the listening socket and makes the broker refuse
// new ingest publishes (they get no PUBACK, so clients send them again
// after reconnecting). Connected clients stay until Close, so that
// in-flight PUBACKs can still be written.
func (b *Broker) StopAccepting() {
	b.closing.Store(true)
	b.listener.stopAccepting()
}

// Close disconnects everyone and stops. Safe to call twice.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.StopAccepting()
		b.closeErr = b.server.Close()
	})
	return b.closeErr
}

// PublishRetained publishes a retained message from the broker itself
// (status/ack).
func (b *Broker) PublishRetained(topic string, payload []byte) error {
	if err := b.server.Publish(topic, payload, true, 0); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Publish publishes a message from the broker itself (status/error, backup
// stream).
func (b *Broker) Publish(topic string, payload []byte, qos byte) error {
	if err := b.server.Publish(topic, payload, false, qos); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Subscribe registers an in-process handler for a topic filter (the edge
// listens to backup requests from the master this way).
func (b *Broker) Subscribe(filter string, id int, fn func(topic string, payload []byte)) error {
	return b.server.Subscribe(filter, id, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		fn(pk.TopicName, pk.Payload)
	})
}

// ConnectedClients is the number of connected clients.
func (b *Broker) ConnectedClients() int64 {
	return atomic.LoadInt64(&b.server.Info.ClientsConnected)
}

func remoteHost(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// authContext bounds a login's wait for a bcrypt worker: just under the
// device library's 10 s connect timeout, so that a device in a storm gets
// its CONNACK (or a refusal) rather than timing out, and every retry (a
// TLS handshake on both sides) is one the storm really needed.
func authContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 8*time.Second)
}

// ConnectedUsers returns the usernames with a live connection.
func (b *Broker) ConnectedUsers() map[string]bool {
	out := map[string]bool{}
	for _, cl := range b.server.Clients.GetAll() {
		if !cl.Net.Inline && !cl.Closed() && len(cl.Properties.Username) > 0 {
			out[string(cl.Properties.Username)] = true
		}
	}
	return out
}
