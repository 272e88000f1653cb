package edge

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/broker"
	"github.com/iotkv/iotkv/rest"
)

// ingest turns device publishes into writes for the committer.
type ingest struct {
	c      *committer
	limits iotkv.Limits
}

var _ broker.Ingest = (*ingest)(nil)

func (in *ingest) Submit(w broker.Write, done func(broker.Result)) {
	req := &writeReq{device: w.Device}
	switch {
	case w.Retain:
		req.refused = iotkv.Errorf(iotkv.CodeInvalidBatch, "the retain flag is not allowed on device writes")
	case w.Topic.Kind == iotkv.TopicBatch:
		b, err := in.limits.DecodeBatch(w.Payload)
		req.seq, req.ops, req.refused = b.Seq, b.Ops, err
	default: // TopicKV
		op := iotkv.Op{Op: iotkv.OpDel, Key: w.Topic.Key}
		if len(w.Payload) > 0 {
			op = iotkv.Op{Op: iotkv.OpPut, Key: w.Topic.Key, Value: json.RawMessage(w.Payload)}
		}
		req.refused = in.limits.ValidateOp(op)
		req.ops = []iotkv.Op{op}
	}
	req.done = func(r commitResult) { done(broker.Result{Seq: req.seq, Err: r.err}) }
	in.c.submit(req)
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
