package edge_test

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// Every status/ack lists the device's last MaxRefusals refusals, also
// after a restart (the list is in the store): a device that missed a
// status/error never counts a refused seq as applied because a later ack
// covers it. A seq applied after its refusal leaves the list.
func TestTheAckListsRecentRefusalsAcrossARestart(t *testing.T) {
	p := testenv.NewPKI(t)
	p.Identity(t, "rf-dev", iotkv.RoleDevice)
	data := filepath.Join(t.TempDir(), "data")
	opts := func(o *edge.Options) { o.DataDir = data; o.Limits.MaxValueBytes = 16 }
	e := testenv.StartEdge(t, p, "edge1", opts)
	c := p.Connect(t, e.MQTTAddr(), "rf-dev")
	topic := iotkv.BatchTopic("rf-dev")
	put := func(seq uint64, key, value string) []byte {
		return rigBatch(t, iotkv.Batch{Seq: seq, Ops: []iotkv.Op{{Op: iotkv.OpPut, Key: key, Value: json.RawMessage(value)}}})
	}
	n := uint64(iotkv.MaxRefusals + 8)
	for seq := uint64(1); seq <= n; seq++ {
		rigPublish3(t, c, topic, put(seq, "big", `"a value longer than sixteen bytes"`))
	}
	last := n - iotkv.MaxRefusals + 1              // the oldest refusal still listed
	rigPublish3(t, c, topic, put(n, "fixed", `1`)) // corrected, under the refused seq
	rigPublish3(t, c, topic, put(n+1, "ok", `1`))
	rigPublish3(t, c, topic, put(last, "again", `1`)) // below n+1: a duplicate
	c.Disconnect(100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}

	e = testenv.StartEdge(t, p, "edge1", opts)
	c = p.Connect(t, e.MQTTAddr(), "rf-dev")
	acks, _ := rigSubscribe3(t, c, iotkv.AckTopic("rf-dev"))
	var got iotkv.AckMessage
	if err := json.Unmarshal(rigNext(t, acks, "retained status/ack").Payload(), &got); err != nil {
		t.Fatal(err)
	}
	var want []iotkv.Refusal
	for seq := last; seq < n; seq++ {
		want = append(want, iotkv.Refusal{Seq: seq, Code: iotkv.CodeTooLarge})
	}
	if got.Seq != n+1 || !reflect.DeepEqual(got.Refused, want) {
		t.Fatalf("status/ack after a restart: %+v\nwant seq %d and refused %+v", got, n+1, want)
	}

	hc := p.HTTPClient(t, "rf-dev")
	for key, code := range map[string]int{"ok": http.StatusOK, "fixed": http.StatusOK, "big": http.StatusNotFound, "again": http.StatusNotFound} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+e.HTTPAddr()+"/v1/kv/rf-dev/"+key, nil)
		req.SetBasicAuth("rf-dev", testenv.Password("rf-dev"))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Errorf("GET %s: %d, want %d", key, resp.StatusCode, code)
		}
	}
}
