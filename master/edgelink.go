package master

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/broker"
)

// edgeLink is the listener of edges that dial out (--listen-edges): the
// project's MQTT broker in EdgeLink mode. An edge logs in with its own
// account (role edge, certificate CN = edge id), subscribes to its request
// and confirm topics and publishes its stream; the broker's ACL keeps each
// edge to its own topics, so one edge's certificate cannot feed another's
// backup. The master's in-process subscription hands the stream to the
// edge's follower, and the follower's requests and confirms are published
// back through the same broker.
type edgeLink struct {
	m       *Master
	b       *broker.Broker
	refused *prometheus.CounterVec

	mu    sync.Mutex
	conns map[string]map[string]bool // edge -> connections subscribed
}

func (m *Master) openEdgeLink() error {
	l := &edgeLink{m: m, conns: map[string]map[string]bool{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotkv_master_edge_refused_total",
			Help: "Publishes and subscriptions of dial-out edges refused: another edge's stream, or a topic that is not the edge's own."}, []string{"edge"})}
	if err := m.opts.Registry.Register(l.refused); err != nil {
		return fmt.Errorf("register edge link metrics: %w", err)
	}
	var err error
	l.b, err = broker.New(broker.Options{
		Addr: m.opts.ListenEdges, TLS: m.tls.ServerConfig(tls.RequireAndVerifyClientCert), PeerCheck: m.tls.CheckPeer, Accounts: m.accounts, Metrics: m.opts.Registry,
		MaxPacketSize: 4 << 20, MaxClients: 100_000, EdgeLink: true, Sessions: l,
		Logger: m.log.With("listener", "edges"),
	})
	if err != nil {
		return fmt.Errorf("master: --listen-edges: %w", err)
	}
	if err := l.b.Subscribe(iotkv.BackupPrefix+"+/+", 1, l.message); err != nil {
		_ = l.b.Close()
		return fmt.Errorf("master: --listen-edges: %w", err)
	}
	if err := l.b.Serve(); err != nil {
		_ = l.b.Close()
		return err
	}
	m.link = l
	return nil
}

// message takes the stream of a dial-out edge (the ACL let only the edge
// itself publish it).
func (l *edgeLink) message(topic string, payload []byte) {
	edge, kind, ok := iotkv.ParseBackupTopic(topic)
	if !ok || (kind != iotkv.BackupKindChanges && kind != iotkv.BackupKindSnapshot && kind != iotkv.BackupKindHello) {
		return // our own requests and confirms come back here too
	}
	f, err := l.m.learn(edge, "")
	if err != nil {
		l.m.log.Error("cannot follow edge", "edge", edge, "err", err)
		return
	}
	f.deliver(event{kind: kind, payload: payload})
}

func (l *edgeLink) Subscribed(user, conn string) {
	f, err := l.m.learn(user, conn)
	if err != nil {
		l.m.log.Error("cannot follow edge", "edge", user, "err", err)
		return
	}
	l.mu.Lock()
	set := l.conns[user]
	if set == nil {
		set = map[string]bool{}
		l.conns[user] = set
	}
	first := len(set) == 0
	set[conn] = true
	l.mu.Unlock()
	f.log.Info("edge dialled in", "remote", conn)
	if first {
		f.deliver(event{kind: "connected"})
	} else {
		f.deliver(event{kind: "resubscribed"})
	}
}

func (l *edgeLink) Gone(user, conn string) {
	l.mu.Lock()
	set := l.conns[user]
	had := set[conn]
	delete(set, conn)
	last := had && len(set) == 0
	l.mu.Unlock()
	if !last {
		return
	}
	if f := l.m.lookup(user); f != nil {
		f.log.Warn("edge connection lost", "remote", conn)
		f.deliver(event{kind: "lost"})
	}
}

func (l *edgeLink) Refused(user, topic string) {
	l.refused.WithLabelValues(user).Inc()
	l.m.log.Warn("edge publish or subscribe refused: not its own stream", "edge", user, "topic", topic)
}

func (l *edgeLink) publish(topic string, payload []byte) {
	_ = l.b.Publish(topic, payload, 0) // the stream repeats what is lost
}

// lookup returns the follower of edge id, or nil.
func (m *Master) lookup(id string) *follower {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.follow[id]
}

// learn returns the follower of edge id, starting one for an edge seen for
// the first time (remote: the address it dialled from, when known).
func (m *Master) learn(id, remote string) (*follower, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f := m.follow[id]; f != nil {
		if remote != "" {
			f.mu.Lock()
			f.addr = remote
			f.mu.Unlock()
		}
		return f, nil
	}
	if m.closed {
		return nil, fmt.Errorf("master closing")
	}
	if err := iotkv.ValidateName(id); err != nil {
		return nil, err
	}
	f, err := m.newFollower(id, remote)
	if err != nil {
		return nil, err
	}
	m.startLocked(f)
	f.log.Info("new edge: following it")
	return f, nil
}

// startLocked adds f to the followed edges and starts its worker.
func (m *Master) startLocked(f *follower) {
	link := m.link
	dial := f.publish
	f.publish = func(topic string, payload []byte) {
		dial(topic, payload)
		if link != nil {
			link.publish(topic, payload)
		}
	}
	m.follow[f.id] = f
	m.order = append(m.order, f.id)
	go f.run()
}

// stored lists the edges the master's store holds a backup of.
func (m *Master) stored() ([]string, error) {
	if m.opts.Store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return m.opts.Store.Edges(ctx)
	}
	ents, err := os.ReadDir(m.opts.DataDir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", m.opts.DataDir, err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && iotkv.ValidateName(e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
