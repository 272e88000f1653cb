package device

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
)

// The probe topic: a session publishes a nonce there after subscribing and
// waits for it to come back. The edge writes a retained status/ack right
// after the SUBACK, before it reads the probe, and paho hands messages to
// our handler in order (SetOrderMatters(true)), so once the probe is back
// the retained ack, if the edge has one, has been handled: the queue knows
// the edge's seq before it forms any batch.
const probeSuffix = "sync"

type evKind int

const (
	evAck        evKind = iota // status/ack
	evError                    // status/error
	evProbe                    // our probe came back
	evUp                       // a dial succeeded: connected and subscribed
	evDialFailed               // a dial failed
	evLost                     // a session's connection was lost
)

type event struct {
	kind evKind
	gen  uint64 // the session (dial) the event belongs to
	seq  uint64
	code string
	msg  string
	// refused: on evAck, the refused batches the status/ack lists.
	refused []iotkv.Refusal
	nonce   string
	client  paho.Client
	err     error
}

// push hands an event to the run goroutine without blocking: paho's
// handlers call it from paho's goroutines.
func (c *Client) push(e event) {
	c.evMu.Lock()
	c.events = append(c.events, e)
	c.evMu.Unlock()
	select {
	case c.evSignal <- struct{}{}:
	default:
	}
}

func (c *Client) takeEvents() []event {
	c.evMu.Lock()
	defer c.evMu.Unlock()
	ev := c.events
	c.events = nil
	return ev
}

// runState is owned by the run goroutine.
type runState struct {
	gen       uint64 // the latest dial
	dialing   bool
	retryAt   time.Time
	backoff   time.Duration
	failures  int         // dials failed in a row
	sess      paho.Client // nil when not connected
	sessGen   uint64
	nonce     string
	sessStart time.Time
	inSync    bool // the probe came back: batches may flow
	waiters   []*flushWaiter
	dials     sync.WaitGroup
}

// run is the client's one protocol goroutine: it owns the connection, forms
// batches, publishes them, applies acks and rejections, and answers Flush.
// Its helpers (dial goroutines) are counted in runState.dials and waited
// for before it returns.
func (c *Client) run() {
	s := &runState{backoff: c.opts.ReconnectMin}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		for _, e := range c.takeEvents() {
			c.handle(s, e)
		}
		now := time.Now()
		c.maintain(s, now)
		c.pump(s)
		c.finishWaiters(s)
		timer.Reset(c.nextWake(s, now))
		select {
		case <-c.ctx.Done():
			c.shutdown(s)
			return
		case <-c.kick:
		case <-c.evSignal:
		case w := <-c.flushReq:
			s.waiters = append(s.waiters, w)
		case <-timer.C:
		}
	}
}

func (c *Client) handle(s *runState, e event) {
	switch e.kind {
	case evAck:
		// Refusals first: the ack's seq covers them, and they must not
		// count as applied (their status/error can be lost with a
		// session).
		for _, r := range e.refused {
			if r.Seq <= e.seq {
				c.rejected(r.Seq, r.Code, "refused (from status/ack: "+r.Code+")")
			}
		}
		acked, renumbered := c.q.ack(e.seq)
		if acked > 0 {
			s.backoff = c.opts.ReconnectMin // the edge is taking writes
		}
		if renumbered {
			c.log.Info("the edge has seen a higher seq than this queue: continuing above it", "edge_seq", e.seq)
			// The new seqs must be durable before any batch goes out
			// under them: after a crash the queue would renumber again
			// and the edge would apply the same ops twice.
			if err := c.q.waitDurable(c.q.lsn()); err != nil {
				c.setErr(err)
				c.log.Error("queue write failed; nothing more is sent", "err", err)
				return
			}
			for _, b := range c.q.batches {
				b.sentGen = 0
			}
		}
		if acked > 0 {
			c.log.Debug("acknowledged", "seq", e.seq, "ops", acked)
		}
	case evError:
		if !c.rejected(e.seq, e.code, e.msg) {
			c.log.Warn("the edge refused a write that is not in the queue", "seq", e.seq, "code", e.code)
		}
	case evProbe:
		if s.sess == nil || e.gen != s.sessGen || e.nonce != s.nonce || s.inSync {
			return
		}
		c.q.ack(0) // marks the queue synced when the edge had no seq for us
		// The backoff is not reset here: an edge that cannot write (a
		// failed disk) accepts the login and drops the session at the
		// first publish, and a reset here made every device reconnect
		// every ReconnectMin. It is reset when a batch is acknowledged or
		// a session lasted (dropSession).
		s.inSync, s.failures = true, 0
		c.connected.Store(true)
		st := c.Stats()
		c.log.Info("connected", "edge", c.opts.Edge, "acked_seq", st.AckedSeq, "next_seq", st.NextSeq, "queued_ops", st.QueuedOps)
	case evUp:
		if e.gen != s.gen || s.sess != nil {
			e.client.Disconnect(0)
			return
		}
		s.dialing = false
		nonce := make([]byte, 8)
		_, _ = rand.Read(nonce)
		s.sess, s.sessGen, s.nonce, s.sessStart, s.inSync = e.client, e.gen, hex.EncodeToString(nonce), time.Now(), false
		// Published here, after the session is known, so that the echo
		// cannot be handled before it.
		s.sess.Publish(iotkv.DeviceNamespace(c.opts.Name)+probeSuffix, 1, false, s.nonce)
	case evDialFailed:
		if e.gen != s.gen {
			return
		}
		s.dialing = false
		s.failures++
		c.setErr(e.err)
		lvl := slog.LevelDebug
		if s.failures == 1 || s.failures%20 == 0 {
			lvl = slog.LevelWarn // not every attempt of a long outage
		}
		c.log.Log(context.Background(), lvl, "cannot connect to the edge; retrying", "edge", c.opts.Edge, "in", s.backoff, "attempts", s.failures, "err", e.err)
		c.scheduleRetry(s)
	case evLost:
		if s.sess == nil || e.gen != s.sessGen {
			return
		}
		c.setErr(e.err)
		c.log.Warn("connection to the edge lost; reconnecting", "err", e.err)
		c.dropSession(s)
	}
}

// rejected drops batch seq, which the edge refused, from the queue and
// reports it; false when the queue does not hold it (already handled).
func (c *Client) rejected(seq uint64, code, msg string) bool {
	b := c.q.reject(seq)
	if b == nil {
		return false
	}
	c.log.Error("the edge rejected a batch; its ops are dropped", "seq", seq, "ops", len(b.ops), "code", code)
	if c.opts.OnReject != nil {
		r := Rejection{Seq: seq, Code: code, Message: msg}
		for _, o := range b.ops {
			kind := iotkv.OpPut
			if o.del {
				kind = iotkv.OpDel
			}
			r.Ops = append(r.Ops, iotkv.Op{Op: kind, Key: o.key, Value: o.value, TS: o.ts, TTL: o.ttl})
		}
		c.opts.OnReject(r)
	}
	return true
}

func (c *Client) setErr(err error) {
	if err != nil {
		msg := err.Error()
		c.lastErr.Store(&msg)
	}
}

// scheduleRetry sets the next dial time: exponential backoff with jitter
// (half fixed, half random) so that many devices do not reconnect in step.
func (c *Client) scheduleRetry(s *runState) {
	d := s.backoff/2 + time.Duration(mrand.Int64N(int64(s.backoff/2)+1))
	s.retryAt = time.Now().Add(d)
	s.backoff = min(2*s.backoff, c.opts.ReconnectMax)
}

func (c *Client) dropSession(s *runState) {
	cl := s.sess
	s.sess, s.inSync = nil, false
	c.connected.Store(false)
	c.reconnects.Add(1)
	cl.Disconnect(0)
	if time.Since(s.sessStart) >= c.opts.ReconnectMax {
		s.backoff = c.opts.ReconnectMin // a session that lasted: reconnect promptly
	}
	c.scheduleRetry(s)
}

// maintain starts dials and enforces the timeouts.
func (c *Client) maintain(s *runState, now time.Time) {
	if s.sess == nil && !s.dialing && !now.Before(s.retryAt) {
		s.gen++
		s.dialing = true
		s.dials.Add(1)
		go c.dial(s, s.gen)
	}
	if s.sess != nil && !s.inSync && now.Sub(s.sessStart) > c.opts.AckTimeout {
		c.setErr(errors.New("seq sync with the edge timed out"))
		c.log.Warn("no answer to the seq sync; reconnecting")
		c.dropSession(s)
		return
	}
	if s.inSync {
		for _, b := range c.q.batches {
			if b.sentGen == s.sessGen && now.Sub(b.sentAt) > c.opts.AckTimeout {
				// status/ack is QoS 0: publish the batches in flight again.
				// The edge applies nothing twice and announces its ack again.
				c.log.Info("no status/ack for batches in flight; publishing them again", "seq", b.seq)
				for _, b := range c.q.batches {
					b.sentGen = 0
				}
				break
			}
		}
	}
}

// pump publishes what the window allows: first batches not yet sent in
// this session (resends after a reconnect, in seq order), then new batches
// cut from the pending ops. A batch is cut at once when nothing is in
// flight; otherwise ops wait up to Linger to fill it.
func (c *Client) pump(s *runState) {
	if s.sess == nil || !s.inSync {
		return
	}
	inflight := 0
	for _, b := range c.q.batches {
		if b.sentGen == s.sessGen {
			inflight++
			continue
		}
		if inflight >= c.opts.Window {
			return
		}
		c.publish(s, b)
		inflight++
	}
	for inflight < c.opts.Window {
		ops, size, oldest := c.q.pendingInfo()
		if ops == 0 {
			return
		}
		full := ops >= c.opts.MaxBatchOps || size+batchOverhead >= c.opts.MaxBatchBytes
		if !(inflight == 0 || full || time.Since(oldest) >= c.opts.Linger || len(s.waiters) > 0) {
			return
		}
		b, lsn := c.q.cut(c.opts.MaxBatchOps, c.opts.MaxBatchBytes)
		if b == nil {
			return
		}
		// The seq is durable before the batch leaves: a restart never
		// reuses it for other ops.
		if err := c.q.waitDurable(lsn); err != nil {
			c.setErr(err)
			c.log.Error("queue write failed; nothing more is sent", "err", err)
			return
		}
		c.publish(s, b)
		inflight++
	}
}

func (c *Client) publish(s *runState, b *batch) {
	// The token is not waited for: only status/ack proves delivery.
	s.sess.Publish(iotkv.BatchTopic(c.opts.Name), 1, false, b.payload())
	b.sentGen, b.sentAt = s.sessGen, time.Now()
	c.published.Add(1)
}

func (c *Client) finishWaiters(s *runState) {
	if len(s.waiters) == 0 {
		return
	}
	oldest := c.q.oldestLive()
	c.q.mu.Lock()
	rejected := c.q.counters.rejected
	c.q.mu.Unlock()
	keep := s.waiters[:0]
	for _, w := range s.waiters {
		if oldest <= w.target {
			keep = append(keep, w)
			continue
		}
		if n := rejected - w.rejected; n > 0 {
			w.err = fmt.Errorf("device %s: flush: %d ops: %w", c.opts.Name, n, ErrRejected)
		}
		close(w.done)
	}
	s.waiters = keep
}

// nextWake is how long run may sleep when nothing arrives.
func (c *Client) nextWake(s *runState, now time.Time) time.Duration {
	wake := now.Add(time.Hour)
	at := func(t time.Time) {
		if t.Before(wake) {
			wake = t
		}
	}
	switch {
	case s.sess == nil && !s.dialing:
		at(s.retryAt)
	case s.sess != nil && !s.inSync:
		at(s.sessStart.Add(c.opts.AckTimeout))
	case s.inSync:
		inflight := 0
		for _, b := range c.q.batches {
			if b.sentGen == s.sessGen {
				inflight++
				at(b.sentAt.Add(c.opts.AckTimeout))
			}
		}
		if ops, _, oldest := c.q.pendingInfo(); ops > 0 && inflight < c.opts.Window {
			at(oldest.Add(c.opts.Linger))
		}
	}
	return max(wake.Sub(now), 0)
}

func (c *Client) shutdown(s *runState) {
	s.dials.Wait()
	if s.sess != nil {
		s.sess.Disconnect(100)
	}
	for _, e := range c.takeEvents() {
		if e.kind == evUp && e.client != s.sess {
			e.client.Disconnect(0)
		}
	}
	c.connected.Store(false)
}

// dial connects and subscribes to the status topics and the probe. It
// reports the outcome as an event.
func (c *Client) dial(s *runState, gen uint64) {
	defer s.dials.Done()
	ns := iotkv.DeviceNamespace(c.opts.Name)
	o := paho.NewClientOptions()
	o.AddBroker("tls://" + c.opts.Edge)
	o.SetClientID(c.opts.ClientID)
	o.SetUsername(c.opts.Name)
	o.SetPassword(c.opts.Password)
	o.SetTLSConfig(c.tls)
	o.SetProtocolVersion(4) // no silent fallback to 3.1: one login attempt per dial
	o.SetCleanSession(true) // our queue, not paho's store, holds what is unsent
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetConnectTimeout(c.opts.ConnectTimeout)
	o.SetWriteTimeout(c.opts.ConnectTimeout)
	o.SetKeepAlive(c.opts.KeepAlive)
	o.SetPingTimeout(c.opts.ConnectTimeout)
	o.SetOrderMatters(true) // our handler only queues an event: it never blocks
	o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.onMessage(gen, ns, m) })
	o.SetConnectionLostHandler(func(_ paho.Client, err error) { c.push(event{kind: evLost, gen: gen, err: err}) })
	cl := paho.NewClient(o)
	fail := func(step string, err error) {
		cl.Disconnect(0)
		c.push(event{kind: evDialFailed, gen: gen, err: fmt.Errorf("%s %s: %w", step, c.opts.Edge, err)})
	}
	if err := c.wait(cl.Connect()); err != nil {
		fail("connect to", err)
		return
	}
	subs := map[string]byte{ns + iotkv.TopicAck: 1, ns + iotkv.TopicError: 1, ns + probeSuffix: 1}
	if err := c.wait(cl.SubscribeMultiple(subs, nil)); err != nil {
		fail("subscribe at", err)
		return
	}
	c.push(event{kind: evUp, gen: gen, client: cl})
}

// wait waits for a paho token, the connect timeout or Close.
func (c *Client) wait(t paho.Token) error {
	timer := time.NewTimer(c.opts.ConnectTimeout)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-timer.C:
		return errors.New("timed out")
	case <-c.ctx.Done():
		return ErrClosed
	}
}

// onMessage runs in paho's router goroutine: it parses and queues, never
// blocks.
func (c *Client) onMessage(gen uint64, ns string, m paho.Message) {
	sub, ok := strings.CutPrefix(m.Topic(), ns)
	if !ok {
		return
	}
	switch sub {
	case iotkv.TopicAck:
		var a iotkv.AckMessage
		if err := json.Unmarshal(m.Payload(), &a); err != nil {
			c.log.Warn("bad status/ack payload", "err", err)
			return
		}
		c.push(event{kind: evAck, gen: gen, seq: a.Seq, refused: a.Refused})
	case iotkv.TopicError:
		var e iotkv.ErrorMessage
		if err := json.Unmarshal(m.Payload(), &e); err != nil {
			c.log.Warn("bad status/error payload", "err", err)
			return
		}
		c.push(event{kind: evError, gen: gen, seq: e.Seq, code: e.Code, msg: e.Message})
	case probeSuffix:
		c.push(event{kind: evProbe, gen: gen, nonce: string(m.Payload())})
	}
}
