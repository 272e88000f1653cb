// Package edge is the iotkv edge server: a Pebble store, the group-commit
// write path that makes each device batch durable before its PUBACK, the
// retained status/ack per device, the backup stream to the master, and the
// wiring of the embedded broker and the REST API.
//
// Goroutines and their owners: the committer's loop (commit.go, stopped by
// Close after the broker stops accepting), the backup loop (backup.go,
// stopped by Close after the committer and before the broker), the accounts and TLS watchers (stopped
// by Close through their context), and those of the broker and the REST server
// (stopped by their Close). Lock order: committer.mu is never held while
// calling out.
package edge

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/broker"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/certs/live"
	"github.com/iotkv/iotkv/rest"
)

// Options configure an edge. Zero values take the documented defaults.
type Options struct {
	ID       string      // required; also the certificate name
	DataDir  string      // required: the Pebble directory
	TLSFiles certs.Paths // required: CA, certificate and key
	Accounts string      // required: the accounts file (reloaded on change)

	MQTTAddr string // default ":8883"
	HTTPAddr string // default ":8443"
	// RestClientCert is none, optional (default) or require.
	RestClientCert string

	Limits         iotkv.Limits
	MaxPacketSize  uint32        // default 1 MiB
	ConnectTimeout time.Duration // default 10s
	MaxClients     int64         // default 10,000
	MaxKeepalive   uint16        // seconds, default 300

	// AccountsPoll is how often the accounts file is checked; default 1s.
	AccountsPoll time.Duration
	// TLSPoll is how often the certificate, key, CA bundle and CRL are
	// checked for a change; default 500ms (see live.Options.Poll).
	TLSPoll time.Duration
	// AuthCacheSize bounds the verified-credential cache; -1 disables it.
	AuthCacheSize int

	// Backup bounds the change log and shapes the backup stream.
	Backup BackupOptions
	// DialOut carries the stream to masters the edge dials (none: only
	// masters that dial the edge follow it).
	DialOut DialOutOptions
	// Quota bounds each device's keys, bytes and write rate (quota.go);
	// zero fields take the defaults (100,000 keys, 256 MiB, 5,000 ops/s).
	Quota QuotaOptions
	// History keeps the change log longer for GET /v1/history; Watch
	// bounds the live watchers of GET /v1/watch.
	History HistoryOptions
	Watch   WatchOptions

	StoreFS vfs.FS // tests inject disk faults; default the OS
	// MemTableSize is the store's memtable size in bytes; default
	// DefaultMemTableSize (32 MiB).
	MemTableSize uint64
	// ReadsBeforeSync lets reads see a group before its fsync: only for
	// measuring what durable reads cost (StoreOptions.ReadsBeforeSync).
	ReadsBeforeSync bool
	Logger          *slog.Logger
	Registry        *prometheus.Registry // default a new one with Go and process collectors
}

func (o *Options) validate() error {
	if err := iotkv.ValidateName(o.ID); err != nil {
		return fmt.Errorf("edge id: %w", err)
	}
	if o.DataDir == "" {
		return errors.New("edge: data dir is required")
	}
	if o.Accounts == "" {
		return errors.New("edge: accounts file is required")
	}
	if o.TLSFiles.CA == "" || o.TLSFiles.Cert == "" || o.TLSFiles.Key == "" {
		return errors.New("edge: CA, certificate and key are required")
	}
	if o.MQTTAddr == "" {
		o.MQTTAddr = ":8883"
	}
	if o.HTTPAddr == "" {
		o.HTTPAddr = ":8443"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = 1 << 20
	}
	if o.Limits.MaxBatchBytes == 0 {
		o.Limits.MaxBatchBytes = int(o.MaxPacketSize)
	}
	o.Limits = o.Limits.WithDefaults()
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
		o.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return nil
}

// ClientAuth parses none|optional|require.
func ClientAuth(s string) (tls.ClientAuthType, error) {
	switch s {
	case "", "optional":
		return tls.VerifyClientCertIfGiven, nil
	case "none":
		return tls.NoClientCert, nil
	case "require":
		return tls.RequireAndVerifyClientCert, nil
	}
	return 0, fmt.Errorf("rest client cert %q: want none, optional or require", s)
}

// Edge is a running edge server.
type Edge struct {
	opts     Options
	log      *slog.Logger
	accounts *accounts.Store
	store    *Store
	c        *committer
	ingest   *ingest
	broker   *broker.Broker
	tls      *live.Certs
	http     *rest.Server
	backup   *backup
	dialOut  *dialOut
	sweeper  *sweeper
	hub      *hub

	backupStarted bool

	stopWatch context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Open starts an edge: store, accounts, broker and REST, in that order. It
// returns once both listeners are bound and serving.
func Open(opts Options) (_ *Edge, err error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	httpAuth, err := ClientAuth(opts.RestClientCert)
	if err != nil {
		return nil, err
	}
	e := &Edge{opts: opts, log: opts.Logger.With("edge", opts.ID)}
	defer func() {
		if err != nil {
			_ = e.Close(context.Background())
		}
	}()
	e.accounts, err = accounts.Open(accounts.Options{Path: opts.Accounts, PollInterval: opts.AccountsPoll, CacheSize: opts.AuthCacheSize, Logger: e.log, OnChange: e.endRevokedSessions})
	if err != nil {
		return nil, err
	}
	e.store, err = OpenStore(opts.DataDir, StoreOptions{FS: opts.StoreFS, Logger: e.log, MemTableSize: opts.MemTableSize, NoHistory: opts.History.Off, ReadsBeforeSync: opts.ReadsBeforeSync})
	if err != nil {
		return nil, err
	}
	reg := opts.Registry
	e.backup, err = newBackup(opts.ID, e.store, e.log, opts.Backup, opts.History, reg, func(topic string, payload []byte) error {
		e.dialOut.publish(topic, payload)
		return e.broker.Publish(topic, payload, 0)
	})
	if err != nil {
		return nil, err
	}
	e.hub, err = newHub(opts.Watch, e.store, e.backup.last.Load(), e.backup.oldest.Load, reg)
	if err != nil {
		return nil, err
	}
	var hold func(<-chan struct{})
	if e.backup.gate != nil {
		hold = e.backup.gate.wait
	}
	e.c, err = newCommitter(e.store, e.log, reg, opts.Quota, e.committed, hold)
	if err != nil {
		return nil, err
	}
	if err := registerOpsMetrics(reg, opts.DataDir, e.Ready); err != nil {
		return nil, err
	}
	e.tls, err = live.Open(live.Options{Files: opts.TLSFiles, Poll: opts.TLSPoll, OnChange: e.endRevokedSessions, Logger: e.log, Registry: reg})
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	if e.dialOut, err = newDialOut(opts.ID, opts.DialOut, e.tls.ClientConfig, e.log, e.backup.receive); err != nil {
		return nil, err
	}
	throttle := accounts.NewThrottle()
	if e.ingest, err = newIngest(e.c, opts.Limits); err != nil {
		return nil, err
	}
	e.broker, err = broker.New(broker.Options{
		Addr: opts.MQTTAddr, TLS: e.tls.ServerConfig(tls.RequireAndVerifyClientCert), PeerCheck: e.tls.CheckPeer,
		Accounts: e.accounts, Throttle: throttle,
		Ingest: e.ingest, Metrics: reg,
		MaxPacketSize: opts.MaxPacketSize, ConnectTimeout: opts.ConnectTimeout,
		MaxClients: opts.MaxClients, MaxKeepalive: opts.MaxKeepalive, Logger: e.log,
	})
	if err != nil {
		return nil, err
	}
	if err := e.republishAcks(); err != nil {
		return nil, err
	}
	for i, kind := range []string{iotkv.BackupKindRequest, iotkv.BackupKindConfirm} {
		if err := e.broker.Subscribe(iotkv.BackupTopic(opts.ID, kind), backupSubID+i, e.backup.receive); err != nil {
			return nil, fmt.Errorf("edge: subscribe backup %s: %w", kind, err)
		}
	}
	auth, err := rest.NewAuthenticator(e.accounts, throttle, reg)
	if err != nil {
		return nil, err
	}
	metrics, err := rest.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	var history rest.History
	if !opts.History.Off {
		history = &historyReader{store: e.store, durable: e.backup.last.Load}
	}
	handler := rest.NewEdgeHandler(rest.EdgeOptions{
		KV: &kv{store: e.store, c: e.c, conn: e.connectedDevices}, History: history, Watcher: e.hub, Auth: auth, Metrics: metrics,
		Gatherer: reg, Ready: e.Ready, Limits: opts.Limits, Logger: e.log, DiskUsage: e.store.DiskUsage,
		WatchHeartbeat: opts.Watch.Heartbeat,
	})
	e.http, err = rest.Listen(opts.HTTPAddr, e.tls.ServerConfig(httpAuth), rest.PeerCheck(e.tls.CheckPeer)(handler), e.log)
	if err != nil {
		return nil, err
	}
	if err := e.broker.Serve(); err != nil {
		return nil, err
	}
	e.http.Serve()
	e.backup.start()
	e.backupStarted = true
	e.dialOut.start()
	e.sweeper = newSweeper(e.c, e.store, e.log) // its deletes publish acks: after the broker
	ctx, cancel := context.WithCancel(context.Background())
	e.stopWatch = cancel
	e.wg.Add(2)
	go func() {
		defer e.wg.Done()
		e.accounts.Watch(ctx)
	}()
	go func() {
		defer e.wg.Done()
		e.tls.Watch(ctx)
	}()
	e.log.Info("listening", "mqtt", e.MQTTAddr(), "https", e.HTTPAddr(), "data", opts.DataDir, "incarnation", e.store.Incarnation)
	return e, nil
}

// Reload reads the accounts file, the certificate, key, CA bundle and CRL
// now (SIGHUP) instead of at the next poll. Files that are refused leave
// the ones in force; the error says why.
func (e *Edge) Reload() error {
	changed, aerr := e.accounts.Reload()
	if aerr != nil {
		e.log.Warn("accounts reload failed; keeping the previous accounts", "path", e.opts.Accounts, "err", aerr)
	} else if changed {
		e.log.Info("accounts reloaded", "path", e.opts.Accounts, "accounts", e.accounts.Len())
		e.endRevokedSessions()
	}
	return errors.Join(aerr, e.tls.Reload())
}

// endRevokedSessions runs after the accounts or the CRL changed.
func (e *Edge) endRevokedSessions() {
	if e.broker != nil {
		if n := e.broker.EndRevokedSessions(); n > 0 {
			e.log.Info("ended sessions refused by the new accounts or CRL", "sessions", n)
		}
	}
}

// MQTTAddr is the bound MQTT/TLS address.
func (e *Edge) MQTTAddr() string { return e.broker.Addr() }

// HTTPAddr is the bound HTTPS address.
func (e *Edge) HTTPAddr() string { return e.http.Addr() }

// ChangeSeq is the seq of the newest change in the change log: what the
// master's backup of this edge has to reach.
func (e *Edge) ChangeSeq() uint64 { return e.backup.last.Load() }

// Ready reports whether the edge can take writes.
func (e *Edge) Ready() error {
	if e.c.failed.Load() {
		return errFailed
	}
	return nil
}

// connectedDevices lists the connected accounts of role device (not the
// master, not an admin watching).
func (e *Edge) connectedDevices() map[string]bool {
	out := e.broker.ConnectedUsers()
	for name := range out {
		if e.accounts.Role(name) != iotkv.RoleDevice {
			delete(out, name)
		}
	}
	return out
}

// committed runs in the committer's goroutine after each durable group.
func (e *Edge) committed(c committed) {
	for dev, ack := range c.acks {
		if ack.Seq > 0 || len(ack.Refused) > 0 { // else only REST writes so far: nothing to learn
			e.publishAck(dev, ack)
		}
	}
	if e.backup != nil {
		e.backup.committed(c)
	}
	e.hub.publish(c.changes)
}

// backupSubID numbers the broker's in-process subscriptions of the backup
// stream (request, confirm).
const backupSubID = 9100

func (e *Edge) publishAck(device string, ack iotkv.AckMessage) {
	payload, _ := json.Marshal(ack)
	if err := e.broker.PublishRetained(iotkv.AckTopic(device), payload); err != nil {
		e.log.Warn("status/ack not published", "device", device, "err", err)
	}
}

// republishAcks restores the retained status/ack of every device after a
// restart (mochi keeps retained messages in memory only).
func (e *Edge) republishAcks() error {
	devs, err := e.store.Devices()
	if err != nil {
		return err
	}
	for _, d := range devs {
		if d.LastSeq > 0 || len(d.Refused) > 0 {
			e.publishAck(d.Device, iotkv.AckMessage{Seq: d.LastSeq, Refused: d.Refused})
		}
	}
	return nil
}

// Close stops accepting, finishes and acknowledges the writes in flight,
// stops the servers and closes the store. Safe to call twice.
func (e *Edge) Close(ctx context.Context) error {
	e.closeOnce.Do(func() {
		var errs []error
		if e.c != nil {
			e.c.release() // no write waits on the backup lag gate from here on
		}
		if e.broker != nil {
			e.broker.StopAccepting()
		}
		if e.hub != nil {
			e.hub.close() // ends the watch streams, which would hold the REST server's shutdown
		}
		if e.http != nil {
			errs = append(errs, e.http.Close(ctx))
		}
		if e.sweeper != nil {
			e.sweeper.close() // before the committer it writes through
		}
		if e.c != nil {
			e.c.close()
		}
		if e.ingest != nil {
			e.ingest.close() // its held refusals answer through the broker
		}
		if e.backupStarted {
			e.backup.close() // before the broker it publishes through
			e.dialOut.close()
		}
		if e.broker != nil {
			errs = append(errs, e.broker.Close())
		}
		if e.stopWatch != nil {
			e.stopWatch()
		}
		e.wg.Wait()
		if e.store != nil {
			errs = append(errs, e.store.Close())
		}
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}

// WithLimits returns o with the key, value and batch-op limits set.
func (o Options) WithLimits(maxKey, maxValue, maxOps int) Options {
	o.Limits.MaxKeyBytes, o.Limits.MaxValueBytes, o.Limits.MaxOps = maxKey, maxValue, maxOps
	return o
}
