package edge

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
)

// DialOutOptions make the edge carry its backup stream over sessions it
// opens itself to masters (iotkv edge --master mqtts://...), for an edge
// behind NAT or a firewall that no master can reach.
type DialOutOptions struct {
	// Masters are host:port of each master's --listen-edges listener. The
	// edge keeps one session to each; every master sees the same stream
	// (as masters that dial in do), so masters sharing a store keep their
	// lease as they do today.
	Masters  []string
	Name     string // account and certificate name; default the edge id
	Password string // required with Masters
}

// ParseMasterURLs reads mqtts://host:port[,mqtts://host:port...].
func ParseMasterURLs(s string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		hostport, ok := strings.CutPrefix(part, "mqtts://")
		if !ok || hostport == "" || strings.ContainsAny(hostport, "/?#") || !strings.Contains(hostport, ":") {
			return nil, fmt.Errorf("master %q: want mqtts://host:port", part)
		}
		out = append(out, hostport)
	}
	return out, nil
}

// dialOut holds the edge's outbound sessions to masters: one paho client
// each, reconnecting forever. The backup loop publishes through every open
// session (QoS 0, as on the edge's own broker: a lost message is a gap the
// master asks for again); requests and confirms come back to
// backup.receive. paho owns its goroutines; close disconnects them.
type dialOut struct {
	clients []paho.Client
	log     *slog.Logger
}

// tlsFor gives the client TLS configuration for a master's host name (the
// edge's live certificate, reloaded when its files change).
func newDialOut(id string, o DialOutOptions, tlsFor func(serverName string) *tls.Config, log *slog.Logger, receive func(topic string, payload []byte)) (*dialOut, error) {
	d := &dialOut{log: log.With("component", "backup-dialout")}
	if len(o.Masters) == 0 {
		return d, nil
	}
	if o.Name == "" {
		o.Name = id
	}
	if o.Password == "" {
		return nil, errors.New("edge: a password is required to dial masters")
	}
	filters := map[string]byte{iotkv.BackupTopic(id, iotkv.BackupKindRequest): 0, iotkv.BackupTopic(id, iotkv.BackupKindConfirm): 0}
	handler := func(_ paho.Client, msg paho.Message) { receive(msg.Topic(), msg.Payload()) }
	for _, addr := range o.Masters {
		log := d.log.With("master", addr)
		po := paho.NewClientOptions()
		po.AddBroker("tls://" + addr)
		po.SetClientID(id)
		po.SetUsername(o.Name)
		po.SetPassword(o.Password)
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("edge: master %q: %w", addr, err)
		}
		po.SetTLSConfig(tlsFor(host))
		po.SetCleanSession(true)
		po.SetKeepAlive(10 * time.Second)
		po.SetPingTimeout(5 * time.Second)
		po.SetConnectTimeout(10 * time.Second)
		po.SetWriteTimeout(10 * time.Second)
		po.SetAutoReconnect(true)
		po.SetConnectRetry(true)
		po.SetConnectRetryInterval(time.Second)
		po.SetMaxReconnectInterval(5 * time.Second)
		po.SetOnConnectHandler(func(c paho.Client) {
			// Retry while the connection lasts: the master starts the
			// stream when it sees this subscription.
			for c.IsConnectionOpen() {
				tok := c.SubscribeMultiple(filters, handler)
				if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
					log.Info("backup session to master open")
					return
				}
				log.Warn("backup subscribe at master failed; retrying", "err", tok.Error())
				time.Sleep(time.Second)
			}
		})
		po.SetConnectionLostHandler(func(_ paho.Client, err error) {
			log.Warn("backup session to master lost; redialling", "err", err)
		})
		d.clients = append(d.clients, paho.NewClient(po))
	}
	return d, nil
}

func (d *dialOut) start() {
	for _, c := range d.clients {
		c.Connect() // with ConnectRetry it keeps trying in the background
	}
}

// publish sends one stream message to every master with an open session;
// none open is fine: the change log keeps everything until a master
// confirms it (within retention).
func (d *dialOut) publish(topic string, payload []byte) {
	if d == nil {
		return
	}
	for _, c := range d.clients {
		if c.IsConnectionOpen() {
			c.Publish(topic, 0, false, payload)
		}
	}
}

func (d *dialOut) close() {
	if d == nil {
		return
	}
	for _, c := range d.clients {
		c.Disconnect(250)
	}
}
