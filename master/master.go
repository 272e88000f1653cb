// Package master is the iotkv backup master: it follows the backup stream
// of every edge over MQTT/TLS, keeps each edge's state (under DIR/{edge}/
// as JSON Lines journals and an always valid latest.json, or in object
// storage as segments and snapshots), serves it over HTTPS for restores
// and answers which edge holds a device (GET /v1/fleet/devices).
//
// # Reaching an edge
//
// Two ways, one stream protocol (see iotkv.BackupTopic):
//
//   - dial in (--edges id=host:port): newClient makes a paho client per
//     edge that logs in to the edge's broker as role master and subscribes
//     to the edge's hello/changes/snapshot topics;
//   - dial out (--listen-edges ADDR): the edge opens the connection. The
//     master runs the project's own broker in EdgeLink mode (edgelink.go):
//     mTLS + password, role edge only, certificate CN = username = edge
//     id, and an ACL that lets edge E publish only
//     iotkv/v1/backup/E/{hello,changes,snapshot} and subscribe only to
//     .../E/{request,confirm}. Another edge's certificate publishing E's
//     stream is refused and counted (iotkv_master_edge_refused_total). The
//     edge side (edge.dialOut) is a paho client per master; the edge's
//     backup producer publishes every message to its own broker (for
//     masters that dial in) and to each open outbound session, and takes
//     requests and confirms from both. The windows, confirms, gap
//     handling and snapshots are the same bytes either way; only who
//     dialled differs. With several masters each gets the whole stream,
//     as masters that dial in do, so masters sharing a store keep one
//     lease between them as before.
//
// A master learns an edge when it first subscribes on the edge listener
// (Master.learn) or finds it in its store at start (Master.stored), and
// follows it from then on: GET /v1/backups lists every edge ever seen.
//
// # The life of a change
//
// On the edge:
//
//  1. committer.syncLoop fsyncs a group and calls onCommit (Edge.committed),
//     which hands the last change seq to backup.committed (no I/O).
//  2. backup.loop wakes, backup.pump reads the change log from Pebble
//     (backup.readChanges) into a changes message and publishes it
//     through Edge's publish func: broker.Publish (dial in) and
//     dialOut.publish (dial out), within the session's window.
//
// On the master:
//
//  3. The message arrives in paho's handler (newClient) or the broker's
//     in-process subscription (edgeLink.message); either calls
//     follower.deliver, which blocks until the edge's worker takes it, so
//     the connection keeps order.
//  4. follower.run drains a run of events into follower.handle ->
//     follower.changes: it checks the incarnation (follower.follow on a
//     new one), drops resends, counts a gap and asks for a replay
//     (follower.request), and hands the new changes to the store:
//     backupStore.append (fileStore.append -> journal.append; or
//     s3Backup.append, which buffers them).
//  5. follower.commit calls backupStore.commit: fileStore.commit fsyncs
//     the journal (journal.sync); s3Backup.commit stores the buffer as one
//     create-only segment (s3store.Store.PutSegment) every FlushInterval
//     or FlushBytes on the lease holder (the others HEAD for it and fill
//     it in after a grace period). What the store made durable is
//     confirmed to the edge (follower.send of a BackupConfirm), and the
//     edge drops it from its window and, later, its change log
//     (backup.handle, backup.trim).
//  6. latest.json: fileStore.tick -> fileStore.snapshot freezes the
//     changes since latest.json and, in its merge goroutine,
//     fileStore.writeLatest -> writeLatestFile -> mergeTo ->
//     iotkv.MergeEntries streams the old latest.json with the changes
//     into the new one (atomic rename), then fileStore.finishMerge prunes
//     the journals. On S3: s3Backup.tick -> s3Backup.compact ->
//     s3store.Store.Compact -> writeStateAt -> iotkv.MergeEntries writes a
//     snapshot object and moves manifest.json to it.
//
// A restore (GET /v1/backups/{edge}) is backupStore.stream: the same
// merge of latest.json (or the manifest's snapshot) with the changes
// after it, with the incarnation and the devices' last seqs.
//
// A resync: an edge that no longer has what the master asks for (or is a
// new incarnation) sends a snapshot in parts; follower.snapshotPart feeds
// a snapshotSink (fileSnap into incoming.json, s3Snap into a temporary
// file) and install makes it the state.
//
// Goroutines and their owners: per edge, a follower worker (follower.run)
// that owns the stream position and calls its store, and at most one
// merge or compaction goroutine the store starts and waits for; paho's
// goroutines per dial-in client (stopped by Disconnect); the edge
// listener's (stopped by its Close); the REST server's (stopped by its
// Close); the accounts watcher. Close stops them in the order REST, paho,
// edge listener, workers. Lock order: Master.mu before follower.mu;
// follower.mu and the stores' mu are leaf locks, never held across I/O
// (fileSnap.install renames under fileStore.mu on purpose).
package master

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/certs/live"
	"github.com/iotkv/iotkv/console"
	"github.com/iotkv/iotkv/rest"
	"github.com/iotkv/iotkv/s3store"
)

// Edge is one edge to follow.
type Edge struct {
	ID   string // the edge id (its certificate name)
	Addr string // host:port of its MQTT/TLS listener
}

// Options configure a master. Zero values take the documented defaults.
type Options struct {
	DataDir  string      // required unless Store is set
	Name     string      // account and certificate name; default "master"
	Password string      // required: the account's password on the edges
	TLSFiles certs.Paths // required: CA, the master's certificate and key
	Accounts string      // required: accounts file for the REST API
	Edges    []Edge      // edges the master dials (--edges)
	// ListenEdges is the address of the mTLS MQTT listener edges dial out
	// to (--listen-edges); "" for none. Edges, ListenEdges or a store
	// holding backups must give the master something to follow.
	ListenEdges string

	HTTPAddr         string        // default ":9443"
	RestClientCert   string        // none, optional (default) or require
	SnapshotInterval time.Duration // default 10s
	// MaxPending bounds the keys changed since latest.json that are held
	// in memory; reaching it starts a snapshot early. Default 100,000.
	MaxPending   int
	AccountsPoll time.Duration
	// TLSPoll is how often the certificate, key, CA bundle and CRL are
	// checked for a change; default 500ms.
	TLSPoll  time.Duration
	Logger   *slog.Logger
	Registry *prometheus.Registry

	// Store keeps the backups in object storage instead of DataDir
	// (see s3edge.go). Then:
	FlushInterval time.Duration // a segment at least this often; default 1s
	FlushBytes    int           // or when this much is buffered; default 1 MiB
	LeaseTTL      time.Duration // default 10s
	LeaseMargin   time.Duration // default LeaseTTL/2
	FollowerGrace time.Duration // a follower fills a missing segment after this; default 3×FlushInterval
	Store         *s3store.Store

	// crash makes Close of an S3 master behave like kill -9 for the store:
	// nothing flushed, the lease kept (tests).
	crash bool
	// dropHook lets tests lose backup messages on purpose.
	dropHook func(edge, kind string, payload []byte) bool
}

func (o *Options) validate() error {
	if o.DataDir == "" && o.Store == nil {
		return errors.New("master: a data dir or a store is required")
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = time.Second
	}
	if o.FlushBytes <= 0 {
		o.FlushBytes = 1 << 20
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.FollowerGrace <= 0 {
		o.FollowerGrace = 3 * o.FlushInterval
	}
	if o.Name == "" {
		o.Name = "master"
	}
	if err := iotkv.ValidateName(o.Name); err != nil {
		return fmt.Errorf("master name: %w", err)
	}
	if o.Password == "" && len(o.Edges) > 0 {
		return errors.New("master: a password is required to dial edges")
	}
	if o.Accounts == "" {
		return errors.New("master: accounts file is required")
	}
	if o.TLSFiles.CA == "" || o.TLSFiles.Cert == "" || o.TLSFiles.Key == "" {
		return errors.New("master: CA, certificate and key are required")
	}
	if len(o.Edges) == 0 && o.ListenEdges == "" {
		return errors.New("master: edges to dial or an address to listen for edges on is required")
	}
	seen := map[string]bool{}
	for _, e := range o.Edges {
		if err := iotkv.ValidateName(e.ID); err != nil {
			return fmt.Errorf("master: edge id %q: %w", e.ID, err)
		}
		if seen[e.ID] {
			return fmt.Errorf("master: edge %q given twice", e.ID)
		}
		seen[e.ID] = true
		if e.Addr == "" {
			return fmt.Errorf("master: edge %q has no address", e.ID)
		}
	}
	if o.HTTPAddr == "" {
		o.HTTPAddr = ":9443"
	}
	if o.SnapshotInterval <= 0 {
		o.SnapshotInterval = 10 * time.Second
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 100_000
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
		o.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return nil
}

// Master is a running backup master.
type Master struct {
	opts     Options
	log      *slog.Logger
	met      *metrics
	sm       *s3Metrics
	follow   map[string]*follower // every edge, whatever the storage
	clients  []paho.Client        // dial-in connections, one per --edges entry
	link     *edgeLink            // edges that dial out; nil without ListenEdges
	mu       sync.RWMutex         // guards follow, order and closed
	closed   bool
	order    []string
	accounts *accounts.Store
	tls      *live.Certs
	http     *rest.Server

	stopWatch context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Open recovers every edge's state from DataDir, starts following the
// edges and serves REST. It returns once the HTTPS listener is bound; the
// MQTT connections are made (and remade) in the background.
func Open(opts Options) (_ *Master, err error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	m := &Master{opts: opts, log: opts.Logger.With("component", "master"), follow: map[string]*follower{}}
	defer func() {
		if err != nil {
			_ = m.Close(context.Background())
		}
	}()
	if opts.Store == nil {
		if err := os.MkdirAll(opts.DataDir, 0o755); err != nil {
			return nil, fmt.Errorf("master: %w", err)
		}
	}
	met, err := newMetrics(opts.Registry)
	if err != nil {
		return nil, err
	}
	m.tls, err = live.Open(live.Options{Files: opts.TLSFiles, Poll: opts.TLSPoll, OnChange: m.endRevokedSessions, Logger: m.log, Registry: opts.Registry})
	if err != nil {
		return nil, fmt.Errorf("master: %w", err)
	}
	var sm *s3Metrics
	if opts.Store != nil {
		if sm, err = newS3Metrics(opts.Registry, opts.Store); err != nil {
			return nil, err
		}
	}
	m.met, m.sm = met, sm
	m.accounts, err = accounts.Open(accounts.Options{Path: opts.Accounts, PollInterval: opts.AccountsPoll, OnChange: m.endRevokedSessions, Logger: m.log})
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	for _, e := range opts.Edges {
		f, err := m.newFollower(e.ID, e.Addr)
		if err != nil {
			m.mu.Unlock()
			return nil, err
		}
		c := m.newClient(f, e.Addr, m.tls.ClientConfig(hostOf(e.Addr)))
		f.publish = func(topic string, payload []byte) {
			if c.IsConnectionOpen() {
				c.Publish(topic, 1, false, payload)
			}
		}
		m.clients = append(m.clients, c)
		m.follow[e.ID] = f
	}
	m.mu.Unlock()
	if opts.ListenEdges != "" {
		if err := m.openEdgeLink(); err != nil {
			return nil, err
		}
	}
	// Dial-in edges first, in the order given, then every other edge the
	// store holds a backup of: the master keeps following what it knows.
	m.mu.Lock()
	for _, e := range opts.Edges {
		m.startLocked(m.follow[e.ID])
	}
	m.mu.Unlock()
	if known, err := m.stored(); err != nil {
		m.log.Warn("cannot list the edges in the store; they are followed when they connect", "err", err)
	} else {
		for _, id := range known {
			if _, err := m.learn(id, ""); err != nil {
				m.log.Error("cannot follow a stored edge", "edge", id, "err", err)
			}
		}
	}
	for _, c := range m.clients {
		c.Connect() // with ConnectRetry it keeps trying in the background
	}
	auth, err := rest.NewAuthenticator(m.accounts, nil, opts.Registry)
	if err != nil {
		return nil, err
	}
	httpMetrics, err := rest.NewMetrics(opts.Registry)
	if err != nil {
		return nil, err
	}
	clientAuth := tls.VerifyClientCertIfGiven
	switch opts.RestClientCert {
	case "none":
		clientAuth = tls.NoClientCert
	case "require":
		clientAuth = tls.RequireAndVerifyClientCert
	}
	m.http, err = rest.Listen(opts.HTTPAddr, m.tls.ServerConfig(clientAuth), rest.PeerCheck(m.tls.CheckPeer)(m.handler(auth, httpMetrics)), m.log)
	if err != nil {
		return nil, err
	}
	m.http.Serve()
	ctx, cancel := context.WithCancel(context.Background())
	m.stopWatch = cancel
	m.wg.Add(2)
	go func() {
		defer m.wg.Done()
		m.accounts.Watch(ctx)
	}()
	go func() {
		defer m.wg.Done()
		m.tls.Watch(ctx)
	}()
	where := opts.DataDir
	if opts.Store != nil {
		where = opts.Store.String()
	}
	if m.link != nil {
		m.log.Info("listening", "https", m.HTTPAddr(), "edges_mqtts", m.EdgesAddr(), "data", where, "edges", len(m.EdgeIDs()))
	} else {
		m.log.Info("listening", "https", m.HTTPAddr(), "data", where, "edges", len(m.EdgeIDs()))
	}
	return m, nil
}

// newFollower makes the follower of edge id with its store, recovered.
func (m *Master) newFollower(id, addr string) (*follower, error) {
	if m.opts.Store != nil {
		f := newFollower(id, addr, &m.opts, m.met, newS3Backup(id, &m.opts, m.met, m.sm), "", 0)
		f.startInc = func() (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cur, err := m.opts.Store.Current(ctx, id)
			return cur.Incarnation, err
		}
		return f, nil
	}
	fst, err := newFileStore(id, &m.opts, m.met)
	if err != nil {
		return nil, err
	}
	inc, seq := fst.position()
	f := newFollower(id, addr, &m.opts, m.met, fst, inc, seq)
	f.askBlind = true
	if inc != "" {
		_ = f.follow(inc) // the same incarnation: loads the devices it holds
	}
	return f, nil
}

// Reload reads the accounts file, the certificate, key, CA bundle and CRL
// now (SIGHUP) instead of at the next poll. Files that are refused leave
// the ones in force; the error says why.
func (m *Master) Reload() error {
	changed, aerr := m.accounts.Reload()
	if aerr != nil {
		m.log.Warn("accounts reload failed; keeping the previous accounts", "path", m.opts.Accounts, "err", aerr)
	} else if changed {
		m.endRevokedSessions()
	}
	return errors.Join(aerr, m.tls.Reload())
}

// endRevokedSessions runs after the accounts or the CRL changed: the
// session of a dial-out edge whose certificate is now revoked, or whose
// account is gone or disabled, ends (the edge cannot log in again).
// The watchers that call it start after the edge listener is set.
func (m *Master) endRevokedSessions() {
	if m.link != nil {
		if n := m.link.b.EndRevokedSessions(); n > 0 {
			m.log.Info("ended edge sessions refused by the new accounts or CRL", "sessions", n)
		}
	}
}

// hostOf is the host of host:port, the name the edge's certificate must
// carry.
func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// newClient makes a paho client that reconnects forever; each (re)connect
// subscribes and asks the edge for everything after our seq.
func (m *Master) newClient(eb *follower, addr string, tc *tls.Config) paho.Client {
	o := paho.NewClientOptions()
	o.AddBroker("tls://" + addr)
	o.SetClientID(m.opts.Name + "-" + eb.id)
	o.SetUsername(m.opts.Name)
	o.SetPassword(m.opts.Password)
	o.SetTLSConfig(tc)
	o.SetCleanSession(true)
	o.SetKeepAlive(10 * time.Second)
	o.SetPingTimeout(5 * time.Second)
	o.SetConnectTimeout(10 * time.Second)
	o.SetWriteTimeout(10 * time.Second)
	o.SetAutoReconnect(true)
	o.SetConnectRetry(true)
	o.SetConnectRetryInterval(time.Second)
	o.SetMaxReconnectInterval(2 * time.Second)
	o.SetOrderMatters(true) // the handler only hands over to the worker
	handler := func(_ paho.Client, msg paho.Message) {
		_, kind, ok := iotkv.ParseBackupTopic(msg.Topic())
		if !ok {
			return
		}
		eb.deliver(event{kind: kind, payload: msg.Payload()})
	}
	o.SetOnConnectHandler(func(c paho.Client) {
		filters := map[string]byte{}
		for _, k := range []string{iotkv.BackupKindChanges, iotkv.BackupKindSnapshot, iotkv.BackupKindHello} {
			filters[iotkv.BackupTopic(eb.id, k)] = 1
		}
		// Retry while the connection lasts: giving up here would leave a
		// live connection that never streams (nothing else resubscribes).
		for c.IsConnectionOpen() {
			err := subscribe(c, filters, handler)
			if err == nil {
				break
			}
			eb.log.Error("backup subscribe failed; retrying", "err", err)
			time.Sleep(time.Second)
		}
		if !c.IsConnectionOpen() {
			return
		}
		eb.log.Info("connected to edge", "addr", addr)
		eb.deliver(event{kind: "connected"})
	})
	o.SetConnectionLostHandler(func(_ paho.Client, err error) {
		eb.log.Warn("connection to edge lost", "addr", addr, "err", err)
		eb.deliver(event{kind: "lost"})
	})
	return paho.NewClient(o)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// subscribe subscribes and checks every filter was granted (a refusal is
// SUBACK 0x80, not a token error).
func subscribe(c paho.Client, filters map[string]byte, h paho.MessageHandler) error {
	tok := c.SubscribeMultiple(filters, h)
	if !tok.WaitTimeout(10 * time.Second) {
		return errors.New("no SUBACK within 10s")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	if st, ok := tok.(*paho.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code == 0x80 {
				return fmt.Errorf("subscription to %s refused", f)
			}
		}
	}
	return nil
}

// HTTPAddr is the bound HTTPS address.
func (m *Master) HTTPAddr() string { return m.http.Addr() }

// EdgesAddr is the bound address of the listener for edges that dial
// out; "" without one.
func (m *Master) EdgesAddr() string {
	if m.link == nil {
		return ""
	}
	return m.link.b.Addr()
}

func (m *Master) followers() []*follower {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*follower, 0, len(m.order))
	for _, id := range m.order {
		out = append(out, m.follow[id])
	}
	return out
}

// Status lists every edge's backup: the edges dialled, in the order given,
// then every edge learned (from the store or when it dialled in).
func (m *Master) Status() []Status {
	fs := m.followers()
	out := make([]Status, 0, len(fs))
	for _, f := range fs {
		out = append(out, f.status())
	}
	return out
}

// Ready reports whether every dialled edge is connected and every edge's
// store works (with a store: was reachable at the last request). An edge
// that dials out may be away for days; it does not make the master unready.
func (m *Master) Ready() error {
	for _, f := range m.followers() {
		if err := f.store.ready(); err != nil {
			return err
		}
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for _, e := range m.opts.Edges {
		if err := m.follow[e.ID].ready(); err != nil {
			return err
		}
	}
	return nil
}

// Close stops REST, disconnects from the edges, journals what is in
// flight, writes a final latest.json where something changed, and waits for
// every goroutine. Safe to call twice.
func (m *Master) Close(ctx context.Context) error {
	m.closeOnce.Do(func() {
		var errs []error
		if m.http != nil {
			errs = append(errs, m.http.Close(ctx))
		}
		for _, c := range m.clients {
			c.Disconnect(250)
		}
		if m.link != nil {
			errs = append(errs, m.link.b.Close())
		}
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		for _, f := range m.followers() {
			f.halt()
		}
		if m.stopWatch != nil {
			m.stopWatch()
		}
		m.wg.Wait()
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}

func (m *Master) handler(auth *rest.Authenticator, met *rest.Metrics) http.Handler {
	r := chi.NewRouter()
	r.Use(met.Middleware, rest.WithLogger(m.log))
	rest.Common(r, m.Ready)
	rest.MountConsole(r, console.Master)
	r.Group(func(r chi.Router) {
		r.Use(auth.Middleware)
		r.Get("/v1/whoami", rest.WhoAmI)
		r.With(rest.RequireRole(iotkv.RoleAdmin)).Get("/metrics", promhttp.HandlerFor(m.opts.Registry, promhttp.HandlerOpts{}).ServeHTTP)
		r.With(rest.RequireRole(iotkv.RoleAdmin, iotkv.RoleReader, iotkv.RoleWriter, iotkv.RoleMaster)).Get("/v1/backups", func(w http.ResponseWriter, _ *http.Request) {
			rest.WriteJSON(w, http.StatusOK, map[string]any{"edges": m.Status()})
		})
		r.Get("/v1/backups/{edge}", m.getBackup)
		r.With(rest.RequireRole(iotkv.RoleAdmin, iotkv.RoleReader, iotkv.RoleWriter, iotkv.RoleMaster)).Get("/v1/fleet/devices", m.getFleetDevices)
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		rest.WriteError(w, http.StatusNotFound, iotkv.CodeNotFound, "no route for "+r.URL.Path)
	})
	return r
}

// getBackup streams an edge's full state: role admin, or role edge for its
// own id only.
func (m *Master) getBackup(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "edge")
	if err := iotkv.ValidateName(id); err != nil {
		rest.WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "edge: "+err.Error())
		return
	}
	p, _ := rest.PrincipalFrom(r.Context())
	if p.Role != iotkv.RoleAdmin && (p.Role != iotkv.RoleEdge || p.Name != id) {
		rest.WriteError(w, http.StatusForbidden, iotkv.CodeNotAuthorized, "only an admin or edge "+id+" itself may read this backup")
		return
	}
	eb := m.lookup(id)
	if eb == nil {
		rest.WriteError(w, http.StatusNotFound, iotkv.CodeNotFound, "no backup of edge "+id)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	cw := &countingWriter{w: w}
	if err := eb.store.stream(cw); err != nil {
		if cw.n == 0 {
			rest.WriteError(w, http.StatusServiceUnavailable, iotkv.CodeUnavailable, err.Error())
			return
		}
		// Headers are gone: the truncated body is invalid JSON, which
		// the restore notices.
		m.log.Error("backup stream failed", "edge", id, "err", err)
	}
}

// EdgeIDs lists the followed edges: dialled ones in the order given, then
// the learned ones.
func (m *Master) EdgeIDs() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return slices.Clone(m.order)
}

type metrics struct {
	applied, lagChanges                        *prometheus.GaugeVec
	gaps, resyncs, badMessages, snapshotErrors *prometheus.CounterVec
	requests                                   *prometheus.CounterVec
	lag, fsync, snapshotSeconds                prometheus.Histogram
	snapshotTime                               *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		applied:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "iotkv_master_applied_seq", Help: "Change seq applied and durable, per edge."}, []string{"edge"}),
		lagChanges:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "iotkv_master_lag_changes", Help: "Changes the edge has that the master does not (from the last hello)."}, []string{"edge"}),
		gaps:           prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotkv_master_gaps_total", Help: "Gaps found in the change seqs, each answered by a replay request."}, []string{"edge"}),
		resyncs:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotkv_master_resyncs_total", Help: "Full snapshots received (edge log trimmed past our seq, or a new incarnation)."}, []string{"edge"}),
		badMessages:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotkv_master_bad_messages_total", Help: "Backup messages that failed to parse or validate."}, []string{"edge"}),
		snapshotErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotkv_master_snapshot_errors_total", Help: "latest.json writes that failed."}, []string{"edge"}),
		requests:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotkv_master_requests_total", Help: "Replay requests sent, by reason."}, []string{"edge", "reason"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotkv_master_backup_lag_seconds", Help: "From the edge's commit to the master's journal (edge clock).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotkv_master_journal_fsync_seconds", Help: "Journal flush and fsync.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		snapshotSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotkv_master_snapshot_seconds", Help: "Time to write latest.json.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		snapshotTime: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "iotkv_master_snapshot_timestamp_seconds",
			Help: "Unix time of the last snapshot written (latest.json, or the compacted snapshot in object storage), per edge."}, []string{"edge"}),
	}
	for _, c := range []prometheus.Collector{m.applied, m.lagChanges, m.gaps, m.resyncs, m.badMessages, m.snapshotErrors, m.requests, m.lag, m.fsync, m.snapshotSeconds, m.snapshotTime} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register master metrics: %w", err)
		}
	}
	return m, nil
}

// edgeSeen makes the error counters of edge id exist at 0, so alerts on
// their increase see the first error.
func (m *metrics) edgeSeen(id string) {
	for _, c := range []*prometheus.CounterVec{m.gaps, m.resyncs, m.badMessages, m.snapshotErrors} {
		c.WithLabelValues(id)
	}
}
