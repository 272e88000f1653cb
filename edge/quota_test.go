package edge_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/edge"
)

// quotaRig opens an edge of its own (the shared PKI and accounts, a fresh
// store) with quota options q.
func quotaRig(t *testing.T, q edge.QuotaOptions) *edgeRig {
	t.Helper()
	e, err := edge.Open(edge.Options{
		ID: "edge1", DataDir: filepath.Join(t.TempDir(), "data"), TLSFiles: shared.pki.Paths("edge1"), Accounts: shared.pki.Accounts,
		MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", AccountsPoll: 100 * time.Millisecond, Quota: q,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(t.Context()) })
	return &edgeRig{pki: shared.pki, edge: e, client: shared.client}
}

// errorCode returns the code of a JSON error body ("" when it is not one).
func errorCode(body string) string {
	var e struct {
		Error iotkv.Error `json:"error"`
	}
	_ = json.Unmarshal([]byte(body), &e)
	return e.Error.Code
}

func puts(seq uint64, keys ...string) iotkv.Batch {
	b := iotkv.Batch{Seq: seq}
	for _, k := range keys {
		b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpPut, Key: k, Value: json.RawMessage(`"v-` + k + `"`)})
	}
	return b
}

// checkUsage compares the counters the edge keeps, and what /v1/devices
// shows, with a recount of the store. The sweeper may delete between the
// reads, so it looks until the three agree, for up to 5 s.
func checkUsage(t *testing.T, r *edgeRig) map[string][2]int64 {
	t.Helper()
	var last string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		shown := deviceUsage(t, r)
		stored, err := edge.StoredUsage(r.edge)
		if err != nil {
			t.Fatal(err)
		}
		counted, err := edge.CountUsage(r.edge)
		if err != nil {
			t.Fatal(err)
		}
		if maps.Equal(stored, counted) && maps.Equal(shown, counted) {
			return counted
		}
		last = fmt.Sprintf("kept counters %v, /v1/devices %v, a recount of the store %v", stored, shown, counted)
	}
	t.Fatal(last)
	return nil
}

// deviceUsage returns the keys and bytes /v1/devices shows.
func deviceUsage(t *testing.T, r *edgeRig) map[string][2]int64 {
	t.Helper()
	code, body := r.http(t, "admin", http.MethodGet, "/v1/devices")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/devices: %d %s", code, body)
	}
	var devs struct {
		Devices []struct {
			Device      string
			Keys, Bytes int64
		}
	}
	if err := json.Unmarshal(body, &devs); err != nil {
		t.Fatal(err)
	}
	out := map[string][2]int64{}
	for _, d := range devs.Devices {
		if d.Keys != 0 || d.Bytes != 0 {
			out[d.Device] = [2]int64{d.Keys, d.Bytes}
		}
	}
	return out
}

// A device over its key or byte quota is refused whole, with
// quota_exceeded, over MQTT 3.1.1 (status/error, listed in the retained
// ack), MQTT 5 (PUBACK 0x97) and REST (403); its deletes pass, and another
// device is not affected. The counters equal a recount all along.
func TestQuotaRefusesKeysAndBytes(t *testing.T) {
	r := quotaRig(t, edge.QuotaOptions{Keys: 5, Bytes: 3000, RateOps: -1})
	dev, other := "e2e", "dup"
	pw := r.password(dev)

	c3 := r.v3(t, dev)
	errs, _ := rigSubscribe3(t, c3, iotkv.ErrorTopic(dev))
	rigPublish3(t, c3, iotkv.BatchTopic(dev), rigBatch(t, puts(1, "k0", "k1", "k2", "k3", "k4")))
	if code, _ := r.get(t, dev, dev, "k4"); code != http.StatusOK {
		t.Fatalf("k4 after the first batch: %d", code)
	}
	// v3.1.1: a 6th key.
	rigPublish3(t, c3, iotkv.BatchTopic(dev), rigBatch(t, puts(2, "k5")))
	var em iotkv.ErrorMessage
	if err := json.Unmarshal(rigNext(t, errs, "status/error").Payload(), &em); err != nil {
		t.Fatal(err)
	}
	if em.Seq != 2 || em.Code != iotkv.CodeQuotaExceeded {
		t.Fatalf("status/error %+v, want seq 2 quota_exceeded", em)
	}
	// The retained ack is updated after the status/error is sent: the
	// first one may still be the ack of seq 1 alone.
	acks, _ := rigSubscribe3(t, c3, iotkv.AckTopic(dev))
	for {
		var ack iotkv.AckMessage
		if err := json.Unmarshal(rigNext(t, acks, "status/ack listing seq 2").Payload(), &ack); err != nil {
			t.Fatal(err)
		}
		if ack.Seq == 1 && len(ack.Refused) == 1 && ack.Refused[0] == (iotkv.Refusal{Seq: 2, Code: iotkv.CodeQuotaExceeded}) {
			break
		}
		if ack.Seq != 1 || len(ack.Refused) != 0 {
			t.Fatalf("retained ack %+v, want seq 1 with seq 2 refused for quota_exceeded", ack)
		}
	}
	// v5: the whole batch is refused, overwrites in it included.
	c5 := r.v5(t, dev)
	mixed := puts(3, "k0", "k6")
	if rc := rigPublish5(t, c5, iotkv.BatchTopic(dev), rigBatch(t, mixed)); rc != 0x97 {
		t.Fatalf("v5 PUBACK 0x%02x for a batch over the key quota, want 0x97", rc)
	}
	if code, rec := r.get(t, dev, dev, "k0"); code != http.StatusOK || string(rec.Value) != `"v-k0"` {
		t.Fatalf("k0 after the refused batch: %d %s", code, rec.Value)
	}
	// REST: 403 quota_exceeded.
	resp, body := r.do(t, dev, pw, http.MethodPut, "/v1/kv/"+dev+"/k7", `1`)
	if resp.StatusCode != http.StatusForbidden || errorCode(body) != iotkv.CodeQuotaExceeded {
		t.Fatalf("REST put over the key quota: %d %s", resp.StatusCode, body)
	}
	documented(t, r, http.MethodPut, "/v1/kv/{device}/{key}", resp.StatusCode, body)
	// An overwrite that adds nothing passes; deletes pass.
	if rc := rigPublish5(t, c5, iotkv.BatchTopic(dev), rigBatch(t, puts(4, "k1"))); rc != 0 {
		t.Fatalf("v5 overwrite at the quota: PUBACK 0x%02x", rc)
	}
	del := iotkv.Batch{Seq: 5, Ops: []iotkv.Op{{Op: iotkv.OpDel, Key: "k0"}}}
	if rc := rigPublish5(t, c5, iotkv.BatchTopic(dev), rigBatch(t, del)); rc != 0 {
		t.Fatalf("v5 delete at the quota: PUBACK 0x%02x", rc)
	}
	if resp, body := r.do(t, dev, pw, http.MethodDelete, "/v1/kv/"+dev+"/k1", ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("REST delete at the quota: %d %s", resp.StatusCode, body)
	}
	// Room again for two keys.
	if rc := rigPublish5(t, c5, iotkv.BatchTopic(dev), rigBatch(t, puts(6, "k5", "k6"))); rc != 0 {
		t.Fatalf("v5 put after deletes: PUBACK 0x%02x", rc)
	}
	if u := checkUsage(t, r)[dev]; u[0] != 5 {
		t.Fatalf("%s holds %d keys, want 5", dev, u[0])
	}

	// Bytes: the other device is not held by the first one's quota, and
	// has its own.
	opw := r.password(other)
	big := `"` + strings.Repeat("x", 2000) + `"`
	if resp, body := r.do(t, other, opw, http.MethodPut, "/v1/kv/"+other+"/big", big); resp.StatusCode != http.StatusOK {
		t.Fatalf("%s's first put: %d %s", other, resp.StatusCode, body)
	}
	mid := `"` + strings.Repeat("y", 1000) + `"`
	if resp, body := r.do(t, other, opw, http.MethodPut, "/v1/kv/"+other+"/mid", mid); resp.StatusCode != http.StatusForbidden || errorCode(body) != iotkv.CodeQuotaExceeded {
		t.Fatalf("a put over the byte quota: %d %s", resp.StatusCode, body)
	}
	// Shrinking passes even while a grow would not.
	if resp, body := r.do(t, other, opw, http.MethodPut, "/v1/kv/"+other+"/big", `"small"`); resp.StatusCode != http.StatusOK {
		t.Fatalf("shrinking put: %d %s", resp.StatusCode, body)
	}
	if resp, body := r.do(t, other, opw, http.MethodPut, "/v1/kv/"+other+"/mid", mid); resp.StatusCode != http.StatusOK {
		t.Fatalf("a put that fits after shrinking: %d %s", resp.StatusCode, body)
	}
	u := checkUsage(t, r)
	if u[other][0] != 2 || u[other][1] > 3000 {
		t.Fatalf("%s's usage %v", other, u[other])
	}
	if n := r.metric(t, "iotkv_writes_refused_total", `code="quota_exceeded"`); n != 4 {
		t.Errorf("iotkv_writes_refused_total{code=quota_exceeded} = %v, want 4", n)
	}
}

// A device over its rate is refused with rate_limited (PUBACK 0x97, REST
// 429) while another device writes on.
func TestRateLimitRefusesTheFastDeviceOnly(t *testing.T) {
	r := quotaRig(t, edge.QuotaOptions{RateOps: 1}) // a burst of 10 ops
	dev, other := "e2e", "dup"
	c5 := r.v5(t, dev)
	ten := puts(1, "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9")
	start := time.Now()
	if rc := rigPublish5(t, c5, iotkv.BatchTopic(dev), rigBatch(t, ten)); rc != 0 {
		t.Fatalf("the burst: PUBACK 0x%02x", rc)
	}
	// 10 more ops need 10 s of refill.
	ten.Seq = 2
	if rc := rigPublish5(t, c5, iotkv.BatchTopic(dev), rigBatch(t, ten)); rc != 0x97 {
		t.Fatalf("over the rate: PUBACK 0x%02x, want 0x97", rc)
	}
	// The bucket is now in debt: the next batch is refused unread (this
	// one would be invalid_json, 0x99, if it were decoded).
	if rc := rigPublish5(t, c5, iotkv.BatchTopic(dev), []byte(`{"seq":3,"ops":[{"op":`)); rc != 0x97 {
		t.Fatalf("in debt: PUBACK 0x%02x, want 0x97 without reading the batch", rc)
	}
	// REST: of 12 single puts at most 1 per elapsed second passes.
	limited := 0
	for i := range 12 {
		resp, body := r.do(t, dev, r.password(dev), http.MethodPut, fmt.Sprintf("/v1/kv/%s/r%d", dev, i), "1")
		switch {
		case resp.StatusCode == http.StatusTooManyRequests && errorCode(body) == iotkv.CodeRateLimited:
			if limited == 0 {
				documented(t, r, http.MethodPut, "/v1/kv/{device}/{key}", resp.StatusCode, body)
			}
			limited++
		case resp.StatusCode != http.StatusOK:
			t.Fatalf("REST put %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if passed := 12 - limited; float64(passed) > time.Since(start).Seconds()+1 {
		t.Fatalf("%d of 12 REST puts passed in %v at 1 op/s", passed, time.Since(start))
	}
	// The other device has its own bucket.
	o5 := r.v5(t, other)
	if rc := rigPublish5(t, o5, iotkv.BatchTopic(other), rigBatch(t, puts(1, "a0", "a1", "a2", "a3", "a4"))); rc != 0 {
		t.Fatalf("the other device: PUBACK 0x%02x", rc)
	}
	if n := r.metric(t, "iotkv_writes_refused_total", `code="rate_limited"`); n != float64(2+limited) {
		t.Errorf("iotkv_writes_refused_total{code=rate_limited} = %v, want %d", n, 2+limited)
	}
	checkUsage(t, r)
}
