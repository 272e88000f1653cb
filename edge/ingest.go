package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/broker"
	"github.com/iotkv/iotkv/rest"
)

// ingest turns device publishes into writes for the committer. A write
// over its device's rate is refused here, before its batch is decoded when
// the bucket is already empty, and never enters a group commit. Its
// refusal is held until the device's bucket has a token again, at most
// maxRefusalHold: the broker reads no more of that client's publishes
// than its window while answers are pending, so a flooding connection is
// slowed to about its rate instead of costing the edge TLS reads and
// refusals as fast as it can send. Answers keep the order of the device's
// writes (lanes).
type ingest struct {
	c      *committer
	limits iotkv.Limits
	lanes  lanes

	mu     sync.Mutex // guards closed and held
	closed bool
	held   map[*heldRefusal]struct{} // refusals waiting for their timer
	holds  sync.WaitGroup            // refusals not yet answered
}

// heldRefusal is one refusal waiting to be answered: by its timer, or by
// close, whichever takes it out of ingest.held first. No goroutine waits
// for it.
type heldRefusal struct {
	timer  *time.Timer
	answer func()
}

// maxRefusalHold bounds how long a rate_limited refusal is held.
const maxRefusalHold = time.Second

// newIngest starts each device's lane at the seq the store has applied,
// so that a batch resent after a restart is known as a duplicate.
func newIngest(c *committer, limits iotkv.Limits) (*ingest, error) {
	in := &ingest{c: c, limits: limits, held: map[*heldRefusal]struct{}{}}
	devs, err := c.store.Devices()
	if err != nil {
		return nil, err
	}
	in.lanes.m = make(map[string]*lane, len(devs))
	for _, d := range devs {
		in.lanes.m[d.Device] = &lane{ready: map[uint64]func(){}, acked: d.LastSeq}
	}
	return in, nil
}

// close answers the held refusals and waits for them.
func (in *ingest) close() {
	in.mu.Lock()
	in.closed = true
	held := in.held
	in.held = nil
	in.mu.Unlock()
	for h := range held {
		h.timer.Stop()
		h.answer()
	}
	in.holds.Wait()
}

var _ broker.Ingest = (*ingest)(nil)

func (in *ingest) Submit(w broker.Write, done func(broker.Result)) {
	now := in.c.now()
	l, t := in.lanes.enter(w.Device)
	req := &writeReq{device: w.Device}
	switch {
	case w.Retain:
		req.refused = iotkv.Errorf(iotkv.CodeInvalidBatch, "the retain flag is not allowed on device writes")
	case w.Topic.Kind == iotkv.TopicBatch:
		if seq, ok := peekSeq(w.Payload); ok && !in.lanes.applied(l, seq) {
			if open, wait := in.c.rate.open(w.Device, in.lanes.lastOps(l), now); !open {
				in.refuse(l, t, w.Device, seq, wait, done)
				return
			}
		}
		b, err := in.limits.DecodeBatch(w.Payload)
		req.seq, req.ops, req.refused = b.Seq, b.Ops, err
		in.lanes.sawOps(l, len(b.Ops))
	default: // TopicKV
		op := iotkv.Op{Op: iotkv.OpDel, Key: w.Topic.Key}
		if len(w.Payload) > 0 {
			op = iotkv.Op{Op: iotkv.OpPut, Key: w.Topic.Key, Value: json.RawMessage(w.Payload)}
		}
		req.refused = in.limits.ValidateOp(op)
		req.ops = []iotkv.Op{op}
	}
	// Every attempt is charged, an invalid one too (at least one op).
	if !in.lanes.applied(l, req.seq) {
		if ok, wait := in.c.rate.take(w.Device, max(1, len(req.ops)), now); !ok && req.refused == nil {
			in.refuse(l, t, w.Device, req.seq, wait, done)
			return
		}
	}
	req.prior = in.lanes.takePrior(l)
	in.lanes.sending(l, req.seq)
	req.done = func(r commitResult) {
		in.lanes.leave(l, t, req.seq, r.err == nil, func() { done(broker.Result{Seq: req.seq, Err: r.err}) })
	}
	in.c.submit(req)
}

// refuse answers a write over its device's rate without the committer,
// after wait (at most maxRefusalHold).
func (in *ingest) refuse(l *lane, t uint64, device string, seq uint64, wait time.Duration, done func(broker.Result)) {
	err := rateLimited(device, in.c.rate)
	in.c.metrics.refused.WithLabelValues(iotkv.CodeRateLimited).Inc()
	in.lanes.refused(l, seq, iotkv.CodeRateLimited)
	answer := func() { in.lanes.leave(l, t, seq, false, func() { done(broker.Result{Seq: seq, Err: err}) }) }
	in.holds.Add(1)
	h := &heldRefusal{}
	h.answer = func() {
		defer in.holds.Done()
		answer()
	}
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		h.answer()
		return
	}
	in.held[h] = struct{}{}
	h.timer = time.AfterFunc(min(wait, maxRefusalHold), func() {
		in.mu.Lock()
		_, mine := in.held[h]
		delete(in.held, h)
		in.mu.Unlock()
		if mine {
			h.answer()
		}
	})
	in.mu.Unlock()
}

func rateLimited(device string, l *rateLimiter) error {
	return iotkv.Errorf(iotkv.CodeRateLimited, "device %s is over its rate of %.0f ops/s; retry later", device, l.rate)
}

// peekSeq reads the seq of a batch that starts with it, as the device
// library writes them, without decoding the rest.
func peekSeq(p []byte) (uint64, bool) {
	rest, ok := bytes.CutPrefix(p, []byte(`{"seq":`))
	if !ok {
		return 0, false
	}
	end := bytes.IndexAny(rest, ",}")
	if end <= 0 {
		return 0, false
	}
	seq, err := strconv.ParseUint(string(rest[:end]), 10, 64)
	return seq, err == nil && seq > 0
}

// lanes answer each device's writes in the order they were submitted
// (the broker writes PUBACKs in that order), whether the committer
// answers them or ingest refuses them at once. One lane per device that
// has an account and wrote, kept for the edge's life (like its bucket).
type lanes struct {
	mu sync.Mutex
	m  map[string]*lane
}

type lane struct {
	issued, next uint64            // tickets handed out; the next to answer
	ready        map[uint64]func() // answers waiting for earlier tickets
	releasing    bool              // a goroutine is calling answers
	acked        uint64            // highest seq answered as applied
	sent         uint64            // highest seq handed to the committer
	ops          int               // ops of the device's last decoded batch
	// prior: seqs refused here that no status/ack lists yet. They go to
	// the committer with the device's next write, which records them in
	// the device's refusals before it applies (an ack that covers a seq
	// must list it if it was refused).
	prior []iotkv.Refusal
}

func (ls *lanes) enter(device string) (*lane, uint64) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.m == nil {
		ls.m = map[string]*lane{}
	}
	l := ls.m[device]
	if l == nil {
		l = &lane{ready: map[uint64]func(){}}
		ls.m[device] = l
	}
	t := l.issued
	l.issued++
	return l, t
}

// applied reports whether seq is one the lane saw applied or has handed
// to the committer: a resend (after a reconnect, its original may still
// be in a group commit), which the committer answers and which is not
// charged.
func (ls *lanes) applied(l *lane, seq uint64) bool {
	if seq == 0 {
		return false
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return seq <= max(l.acked, l.sent)
}

// sending notes a seq handed to the committer.
func (ls *lanes) sending(l *lane, seq uint64) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l.sent = max(l.sent, seq)
}

// lastOps is what an unread batch of the lane's device is charged: the op
// count of its last decoded batch (1 before any).
func (ls *lanes) lastOps(l *lane) int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return max(1, l.ops)
}

func (ls *lanes) sawOps(l *lane, n int) {
	if n == 0 {
		return
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l.ops = n
}

func (ls *lanes) refused(l *lane, seq uint64, code string) {
	if seq == 0 {
		return
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l.prior = withRefusal(l.prior, seq, code)
}

func (ls *lanes) takePrior(l *lane) []iotkv.Refusal {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	p := l.prior
	l.prior = nil
	return p
}

// leave queues ticket t's answer and calls every answer whose turn has
// come, in ticket order. One goroutine at a time calls them.
func (ls *lanes) leave(l *lane, t, seq uint64, ok bool, answer func()) {
	ls.mu.Lock()
	if ok && seq > l.acked {
		l.acked = seq
	}
	l.ready[t] = answer
	if l.releasing {
		ls.mu.Unlock()
		return
	}
	l.releasing = true
	for {
		f, found := l.ready[l.next]
		if !found {
			break
		}
		delete(l.ready, l.next)
		l.next++
		ls.mu.Unlock()
		f()
		ls.mu.Lock()
	}
	l.releasing = false
	ls.mu.Unlock()
}

// kv serves REST through the committer and the store.
type kv struct {
	store *Store
	c     *committer
	conn  func() map[string]bool // connected device names
}

var _ rest.KV = (*kv)(nil)

func (k *kv) Get(_ context.Context, device, key string) (iotkv.Record, error) {
	return k.store.Get(device, key)
}

func (k *kv) List(_ context.Context, device, prefix, after string, limit int) ([]iotkv.Record, string, error) {
	return k.store.List(device, prefix, after, limit)
}

func (k *kv) write(ctx context.Context, device string, op iotkv.Op) (iotkv.Record, error) {
	if ok, _ := k.c.rate.take(device, 1, k.c.now()); !ok {
		k.c.metrics.refused.WithLabelValues(iotkv.CodeRateLimited).Inc()
		return iotkv.Record{}, fmt.Errorf("write %s/%s: %w", device, op.Key, rateLimited(device, k.c.rate))
	}
	res := make(chan commitResult, 1)
	k.c.submit(&writeReq{device: device, ops: []iotkv.Op{op}, done: func(r commitResult) { res <- r }})
	select {
	case r := <-res:
		if r.err != nil {
			return iotkv.Record{}, fmt.Errorf("write %s/%s: %w", device, op.Key, r.err)
		}
		return r.records[0], nil
	case <-ctx.Done():
		return iotkv.Record{}, fmt.Errorf("write %s/%s: %w", device, op.Key, ctx.Err())
	}
}

func (k *kv) Put(ctx context.Context, device, key string, value json.RawMessage, ttl int64) (iotkv.Record, error) {
	op := iotkv.Op{Op: iotkv.OpPut, Key: key, Value: value}
	if ttl != 0 {
		op.TTL = &ttl
	}
	return k.write(ctx, device, op)
}

func (k *kv) Delete(ctx context.Context, device, key string) error {
	_, err := k.write(ctx, device, iotkv.Op{Op: iotkv.OpDel, Key: key})
	return err
}

func (k *kv) Devices(context.Context) ([]rest.DeviceInfo, error) {
	devs, err := k.store.Devices()
	if err != nil {
		return nil, err
	}
	conn := k.conn()
	out := make([]rest.DeviceInfo, 0, len(devs))
	seen := map[string]bool{}
	for _, d := range devs {
		seen[d.Device] = true
		out = append(out, rest.DeviceInfo{Device: d.Device, LastSeq: d.LastSeq, LastWrite: d.LastWrite, Connected: conn[d.Device], Keys: d.Keys, Bytes: d.Bytes})
	}
	for name := range conn {
		if !seen[name] {
			out = append(out, rest.DeviceInfo{Device: name, Connected: true})
		}
	}
	return out, nil
}
