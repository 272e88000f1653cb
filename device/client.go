package device

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
)

// Errors callers can test for.
var (
	// ErrQueueFull: the unacknowledged ops fill QueueMaxBytes. Nothing was
	// queued; try again once the edge has caught up.
	ErrQueueFull = errors.New("device: queue is full")
	// ErrClosed: the client is closed.
	ErrClosed = errors.New("device: client is closed")
	// ErrRejected: the edge refused ops (see Options.OnReject).
	ErrRejected = errors.New("device: the edge rejected ops")
)

// Options configure a Client. Zero values take the documented defaults.
type Options struct {
	Name     string      // required: the device id, username and certificate CN
	Password string      // required
	TLSFiles certs.Paths // CA, certificate and key; or set TLS
	TLS      *tls.Config // overrides TLSFiles when set
	Edge     string      // required: the edge's MQTT/TLS host:port
	REST     string      // the edge's https://host:port, for Get
	QueueDir string      // required: the durable queue's directory

	QueueMaxBytes int64         // bytes of unacknowledged ops; default 64 MiB
	Limits        iotkv.Limits  // checked before an op is queued; the edge's defaults
	MaxBatchOps   int           // default Limits.MaxOps
	MaxBatchBytes int           // payload bytes; default 256 KiB
	Linger        time.Duration // how long ops wait for company while batches are in flight; default 5ms
	Window        int           // batches in flight; default 8, at most iotkv.MaxRefusals
	// AckTimeout: batches published this long ago with no status/ack
	// covering them are published again (status/ack is QoS 0 and can be
	// lost); also the time allowed for the connect-time seq sync. Default 10s.
	AckTimeout     time.Duration
	ConnectTimeout time.Duration // default 10s
	KeepAlive      time.Duration // default 30s
	ReconnectMin   time.Duration // first reconnect delay; default 100ms
	ReconnectMax   time.Duration // longest reconnect delay; default 5s
	ClientID       string        // MQTT client id; default Name
	NoTimestamps   bool          // do not stamp ops with the device clock

	// OnReject is called (from the client's goroutine; do not block) for
	// each batch the edge refused. The ops are gone from the queue.
	OnReject func(Rejection)
	Logger   *slog.Logger
}

// Rejection describes a batch the edge refused.
type Rejection struct {
	Seq     uint64
	Code    string
	Message string
	Ops     []iotkv.Op
}

func (o *Options) validate() error {
	if err := iotkv.ValidateName(o.Name); err != nil {
		return fmt.Errorf("device name: %w", err)
	}
	if o.Password == "" {
		return errors.New("device: password is required")
	}
	if o.Edge == "" {
		return errors.New("device: edge address is required")
	}
	if o.QueueDir == "" {
		return errors.New("device: queue dir is required")
	}
	if o.TLS == nil && (o.TLSFiles.CA == "" || o.TLSFiles.Cert == "" || o.TLSFiles.Key == "") {
		return errors.New("device: CA, certificate and key are required")
	}
	o.Limits = o.Limits.WithDefaults()
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if o.QueueMaxBytes <= 0 {
		o.QueueMaxBytes = 64 << 20
	}
	if o.MaxBatchOps <= 0 {
		o.MaxBatchOps = o.Limits.MaxOps
	}
	if o.MaxBatchBytes <= 0 {
		o.MaxBatchBytes = min(256<<10, o.Limits.MaxBatchBytes)
	}
	if o.Window <= 0 {
		o.Window = 8
	}
	if o.Window > iotkv.MaxRefusals {
		// A status/ack lists the last MaxRefusals refused batches; with
		// more in flight a refusal could scroll out of it unseen.
		return fmt.Errorf("device: window %d is above the limit of %d batches in flight", o.Window, iotkv.MaxRefusals)
	}
	def(&o.Linger, 5*time.Millisecond)
	def(&o.AckTimeout, 10*time.Second)
	def(&o.ConnectTimeout, 10*time.Second)
	def(&o.KeepAlive, 30*time.Second)
	def(&o.ReconnectMin, 100*time.Millisecond)
	def(&o.ReconnectMax, 5*time.Second)
	if o.ClientID == "" {
		o.ClientID = o.Name
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Client is a device: a durable queue of ops and the goroutines that send
// them to the edge. Its methods are safe for concurrent use.
type Client struct {
	opts Options
	log  *slog.Logger
	q    *queue
	tls  *tls.Config

	reader *Reader

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	kick     chan struct{}     // ops were queued
	flushReq chan *flushWaiter // to the run goroutine
	evMu     sync.Mutex        // guards events
	events   []event           // from paho's goroutines, in arrival order
	evSignal chan struct{}     // events is not empty

	connected  atomic.Bool
	reconnects atomic.Uint64
	published  atomic.Uint64
	lastErr    atomic.Pointer[string]

	closeOnce sync.Once
	closeErr  error
}

// Open opens the queue in opts.QueueDir and starts connecting to the edge
// in the background; it does not wait for the connection.
func Open(opts Options) (*Client, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	tc := opts.TLS
	if tc == nil {
		var err error
		if tc, err = certs.ClientConfig(opts.TLSFiles); err != nil {
			return nil, fmt.Errorf("device %s: %w", opts.Name, err)
		}
	}
	log := opts.Logger.With("device", opts.Name)
	q, err := openQueue(opts.QueueDir, opts.QueueMaxBytes, log)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", opts.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		opts: opts, log: log, q: q, tls: tc, ctx: ctx, cancel: cancel,
		kick: make(chan struct{}, 1), flushReq: make(chan *flushWaiter), evSignal: make(chan struct{}, 1),
		reader: NewReader(opts.REST, opts.Name, opts.Password, tc),
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.run()
	}()
	return c, nil
}

// Put queues a write of value (one JSON value) to key and returns once it
// is durable in the local queue. It never waits on the network.
func (c *Client) Put(ctx context.Context, key string, value json.RawMessage) error {
	wait, err := c.Enqueue(ctx, iotkv.Op{Op: iotkv.OpPut, Key: key, Value: value})
	if err != nil {
		return err
	}
	return wait()
}

// Delete queues a delete of key and returns once it is durable in the local
// queue.
func (c *Client) Delete(ctx context.Context, key string) error {
	wait, err := c.Enqueue(ctx, iotkv.Op{Op: iotkv.OpDel, Key: key})
	if err != nil {
		return err
	}
	return wait()
}

// Enqueue queues op in order and returns at once; wait returns once the op
// is durable in the local queue (it shares one fsync with whatever else is
// queued meanwhile). A caller that queues many ops in a row can wait only
// for the last one: the queue is a log, so it is durable after the others.
func (c *Client) Enqueue(ctx context.Context, o iotkv.Op) (wait func() error, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.opts.Limits.ValidateOp(o); err != nil {
		return nil, fmt.Errorf("device %s: %s %q: %w", c.opts.Name, o.Op, o.Key, err)
	}
	if o.TS == nil && !c.opts.NoTimestamps {
		ts := time.Now().UnixMilli()
		o.TS = &ts
	}
	lsn, err := c.q.appendOp(o)
	if err != nil {
		return nil, fmt.Errorf("device %s: %s %q: %w", c.opts.Name, o.Op, o.Key, err)
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return func() error {
		if err := c.q.waitDurable(lsn); err != nil {
			return fmt.Errorf("device %s: %s %q: %w", c.opts.Name, o.Op, o.Key, err)
		}
		return nil
	}, nil
}

// Flush returns once every op queued before the call has left the queue:
// acknowledged by the edge (or rejected: then the error wraps ErrRejected).
// On ctx's end it returns an error naming how many ops are still queued.
func (c *Client) Flush(ctx context.Context) error {
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return c.flushErr(err)
	}
	c.q.mu.Lock()
	target, rejected, idle := c.q.nextOpID-1, c.q.counters.rejected, c.q.liveOps == 0
	c.q.mu.Unlock()
	if idle {
		// Nothing is queued: every op queued before the call has left
		// the queue already, and none of them was rejected after the call.
		return nil
	}
	w := &flushWaiter{target: target, rejected: rejected, done: make(chan struct{})}
	select {
	case c.flushReq <- w:
	case <-ctx.Done():
		return c.flushErr(ctx.Err())
	case <-c.ctx.Done():
		return ErrClosed
	}
	select {
	case <-w.done:
		return w.err
	case <-ctx.Done():
		return c.flushErr(ctx.Err())
	case <-c.ctx.Done():
		return ErrClosed
	}
}

func (c *Client) flushErr(err error) error {
	s := c.Stats()
	return fmt.Errorf("device %s: flush: %d ops not acknowledged (connected: %v): %w", c.opts.Name, s.QueuedOps, s.Connected, err)
}

type flushWaiter struct {
	target   uint64 // last op id queued before Flush
	rejected uint64 // rejected-op counter at Flush
	done     chan struct{}
	err      error
}

// Get reads key from the edge over REST (Options.REST). A missing key is
// an error wrapping iotkv.ErrNotFound.
func (c *Client) Get(ctx context.Context, key string) (iotkv.Record, error) {
	return c.reader.Get(ctx, key)
}

// Reader is the client's REST reader.
func (c *Client) Reader() *Reader { return c.reader }

// Stats is a snapshot of the client's state.
type Stats struct {
	Connected       bool   // a session with the edge is up and in sync
	Synced          bool   // the queue knows the edge's seq (it may cut batches)
	QueuedOps       int    // ops not yet acknowledged: pending and in batches
	QueuedBytes     int64  // their size against QueueMaxBytes
	PendingOps      int    // ops not yet in a batch
	Batches         int    // batches formed and not yet acknowledged
	NextSeq         uint64 // the seq the next batch gets
	AckedSeq        uint64 // the highest seq the edge acknowledged
	Enqueued        uint64 // ops queued since Open (replayed ones included)
	Coalesced       uint64 // ops dropped because a later op on the key replaced them
	Acked           uint64 // ops acknowledged by the edge since Open
	Rejected        uint64 // ops the edge refused since Open
	RejectedBatches uint64
	Published       uint64 // batch publishes, resends included
	Reconnects      uint64
	LastError       string // the last connection error
}

// Stats returns a snapshot of the client's state.
func (c *Client) Stats() Stats {
	q := c.q
	q.mu.Lock()
	s := Stats{
		Synced: q.synced, QueuedOps: q.liveOps, QueuedBytes: q.live, PendingOps: q.pendOps,
		Batches: len(q.batches), NextSeq: q.nextSeq, AckedSeq: q.acked,
		Enqueued: q.counters.enqueued, Coalesced: q.counters.coalesced, Acked: q.counters.acked,
		Rejected: q.counters.rejected, RejectedBatches: q.counters.rejectedBatches,
	}
	q.mu.Unlock()
	s.Connected = c.connected.Load()
	s.Published = c.published.Load()
	s.Reconnects = c.reconnects.Load()
	if e := c.lastErr.Load(); e != nil {
		s.LastError = *e
	}
	return s
}

// Name is the device id.
func (c *Client) Name() string { return c.opts.Name }

// Close stops the client's goroutines, disconnects and closes the queue.
// What is still queued stays on disk for the next Open; call Flush first to
// wait for it. Safe to call more than once.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		c.wg.Wait()
		c.reader.CloseIdleConnections()
		if err := c.q.close(); err != nil {
			c.closeErr = fmt.Errorf("device %s: close: %w", c.opts.Name, err)
		}
	})
	return c.closeErr
}
