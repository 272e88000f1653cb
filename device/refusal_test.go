package device_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/device"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/faultproxy"
	"github.com/iotkv/iotkv/internal/testenv"
)

// A device whose session drops after the edge refused a batch, but before
// the status/error reached it, learns of the refusal from the retained
// status/ack, which lists recent refusals: the later ack that covers the
// refused seq does not count the refused ops as applied.
func TestARefusalMissedWithTheSessionIsReadFromTheAck(t *testing.T) {
	p := newPKI(t, "dev1")
	e := testenv.StartEdge(t, p, "edge1", func(o *edge.Options) { o.Limits.MaxValueBytes = 16 })
	px, err := faultproxy.Start(e.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.Close() })
	var mu sync.Mutex
	var rejected []device.Rejection
	c := open(t, p, px.Addr(), e.HTTPAddr(), "dev1", t.TempDir(), func(o *device.Options) {
		o.OnReject = func(r device.Rejection) {
			mu.Lock()
			rejected = append(rejected, r)
			mu.Unlock()
		}
	})
	ctx := context.Background()
	put := func(key, value string) {
		t.Helper()
		if err := c.Put(ctx, key, json.RawMessage(value)); err != nil {
			t.Fatal(err)
		}
	}
	put("a", `1`)
	flush(t, c) // synced; seq 1 applied

	// A watcher beside the device, straight to the edge, sees each ack.
	acks := make(chan iotkv.AckMessage, 64)
	w := paho.NewClient(p.MQTTOptionsTLS(e.MQTTAddr(), "dev1", devicePassword, p.ClientTLS(t, "dev1")))
	if tok := w.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher connect: %v", tok.Error())
	}
	t.Cleanup(func() { w.Disconnect(0) })
	tok := w.Subscribe(iotkv.AckTopic("dev1"), 1, func(_ paho.Client, m paho.Message) {
		var a iotkv.AckMessage
		if err := json.Unmarshal(m.Payload(), &a); err != nil {
			t.Errorf("status/ack %q: %v", m.Payload(), err)
		}
		acks <- a
	})
	if !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher subscribe: %v", tok.Error())
	}
	waitAck := func(what string, done func(iotkv.AckMessage) bool) iotkv.AckMessage {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case a := <-acks:
				if done(a) {
					return a
				}
			case <-deadline:
				t.Fatalf("no status/ack %s", what)
			}
		}
	}
	want := []iotkv.Refusal{{Seq: 2, Code: iotkv.CodeTooLarge}}

	px.SetMode(faultproxy.StallDown) // nothing the edge says reaches the device
	put("big", `"a value longer than sixteen bytes"`)
	a := waitAck("listing a refusal", func(a iotkv.AckMessage) bool { return len(a.Refused) > 0 })
	if a.Seq != 1 || !reflect.DeepEqual(a.Refused, want) {
		t.Fatalf("status/ack after the refusal: %+v, want seq 1 and refused %+v", a, want)
	}
	put("small", `2`)
	a = waitAck("for seq 3", func(a iotkv.AckMessage) bool { return a.Seq >= 3 })
	if a.Seq != 3 || !reflect.DeepEqual(a.Refused, want) {
		t.Fatalf("status/ack after the next batch: %+v, want seq 3 refused %+v", a, want)
	}
	// The status/error and both PUBACKs are lost with the session.
	px.Cut()
	px.SetMode(faultproxy.Pass)

	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.Flush(fctx); err != nil && !errors.Is(err, device.ErrRejected) {
		t.Fatal(err)
	}
	mu.Lock()
	if len(rejected) != 1 || rejected[0].Seq != 2 || rejected[0].Code != iotkv.CodeTooLarge || len(rejected[0].Ops) != 1 || rejected[0].Ops[0].Key != "big" {
		t.Fatalf("rejections: %+v, want seq 2 (big) refused as too_large", rejected)
	}
	mu.Unlock()
	if s := c.Stats(); s.Rejected != 1 || s.RejectedBatches != 1 || s.Acked != 2 || s.QueuedOps != 0 {
		t.Fatalf("stats: %+v, want 1 op rejected and 2 acknowledged", s)
	}
	if got := mustGet(t, c, "small"); got != "2" {
		t.Fatalf("small = %s", got)
	}
	if _, err := c.Get(ctx, "big"); !errors.Is(err, iotkv.ErrNotFound) {
		t.Fatalf("get big: %v, want not found", err)
	}
}
