package edge_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/iotkv/iotkv"
)

// A device publishes a batch over mTLS with its password at QoS 1; once the
// PUBACK is in, every key reads back over HTTPS with its ts and seq, and a
// later del makes the key 404.
func TestBatchPublishedOverMQTTReadsBackOverHTTPS(t *testing.T) {
	r := shared
	c := r.v3(t, "e2e")
	acks, _ := rigSubscribe3(t, c, iotkv.AckTopic("e2e"))

	rigPublish3(t, c, iotkv.BatchTopic("e2e"), rigBatch(t, iotkv.Batch{Seq: 7, Ops: []iotkv.Op{
		{Op: iotkv.OpPut, Key: "temp", Value: json.RawMessage(`21.5`), TS: rigTS(1764000000123)},
		{Op: iotkv.OpPut, Key: "room/1/light", Value: json.RawMessage(`{"on":true}`), TS: rigTS(1764000000124)},
		{Op: iotkv.OpPut, Key: "name", Value: json.RawMessage(`"kitchen"`)},
		{Op: iotkv.OpPut, Key: "old", Value: json.RawMessage(`1`)},
	}}))

	want := []struct {
		key, value string
		ts         *int64
	}{
		{"temp", `21.5`, rigTS(1764000000123)},
		{"room/1/light", `{"on":true}`, rigTS(1764000000124)},
		{"name", `"kitchen"`, nil},
		{"old", `1`, nil},
	}
	for _, w := range want {
		code, rec := r.get(t, "e2e", "e2e", w.key)
		if code != http.StatusOK {
			t.Fatalf("GET e2e/%s after the PUBACK: %d", w.key, code)
		}
		if rec.Device != "e2e" || rec.Key != w.key || string(rec.Value) != w.value || rec.Seq != 7 || rec.UpdatedAt == 0 {
			t.Errorf("GET e2e/%s = %+v (value %s), want value %s, seq 7", w.key, rec, rec.Value, w.value)
		}
		if (rec.TS == nil) != (w.ts == nil) || (rec.TS != nil && *rec.TS != *w.ts) {
			t.Errorf("GET e2e/%s: ts %v, want %v", w.key, rec.TS, w.ts)
		}
	}
	if m := rigNext(t, acks, "status/ack for seq 7"); string(m.Payload()) != `{"seq":7}` {
		t.Errorf("status/ack = %s, want {\"seq\":7}", m.Payload())
	}

	rigPublish3(t, c, iotkv.BatchTopic("e2e"), []byte(`{"seq":8,"ops":[{"op":"del","key":"old"},{"op":"put","key":"temp","value":22}]}`))
	if code, _ := r.get(t, "e2e", "e2e", "old"); code != http.StatusNotFound {
		t.Errorf("GET e2e/old after its del: %d, want 404", code)
	}
	if code, rec := r.get(t, "e2e", "e2e", "temp"); code != http.StatusOK || string(rec.Value) != "22" || rec.Seq != 8 || rec.TS != nil {
		t.Errorf("GET e2e/temp after the second batch: %d %+v", code, rec)
	}
	// A kv-topic message puts; an empty one deletes.
	rigPublish3(t, c, iotkv.KVTopic("e2e", "door/state"), []byte(`"open"`))
	if code, rec := r.get(t, "e2e", "e2e", "door/state"); code != http.StatusOK || string(rec.Value) != `"open"` {
		t.Errorf("GET e2e/door/state after a kv put: %d %+v", code, rec)
	}
	rigPublish3(t, c, iotkv.KVTopic("e2e", "door/state"), []byte{})
	if code, _ := r.get(t, "e2e", "e2e", "door/state"); code != http.StatusNotFound {
		t.Errorf("GET e2e/door/state after an empty kv message: %d, want 404", code)
	}
	code, body := r.http(t, "admin", http.MethodGet, "/v1/devices")
	var devs struct {
		Devices []struct {
			Device  string `json:"device"`
			LastSeq uint64 `json:"last_seq"`
		} `json:"devices"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &devs) != nil {
		t.Fatalf("GET /v1/devices: %d %s", code, body)
	}
	found := false
	for _, d := range devs.Devices {
		found = found || (d.Device == "e2e" && d.LastSeq == 8)
	}
	if !found {
		t.Errorf("GET /v1/devices = %s, want e2e with last_seq 8", body)
	}
}

// Redelivery of a seq already applied is acknowledged and applies nothing:
// neither the value nor updated_at changes.
func TestTheSameSeqTwiceIsAcknowledgedAndAppliedOnce(t *testing.T) {
	r := shared
	c := r.v3(t, "dup")
	rigPublish3(t, c, iotkv.BatchTopic("dup"), []byte(`{"seq":5,"ops":[{"op":"put","key":"k","value":1}]}`))
	code, first := r.get(t, "dup", "dup", "k")
	if code != http.StatusOK {
		t.Fatalf("GET dup/k: %d", code)
	}
	for _, redelivery := range []struct{ name, payload string }{
		{"the same seq with other ops", `{"seq":5,"ops":[{"op":"put","key":"k","value":2},{"op":"put","key":"extra","value":3}]}`},
		{"a lower seq", `{"seq":4,"ops":[{"op":"del","key":"k"}]}`},
	} {
		t.Run(redelivery.name, func(t *testing.T) {
			rigPublish3(t, c, iotkv.BatchTopic("dup"), []byte(redelivery.payload)) // the PUBACK arrives
			code, again := r.get(t, "dup", "dup", "k")
			if code != http.StatusOK || string(again.Value) != "1" || again.UpdatedAt != first.UpdatedAt || again.Seq != 5 {
				t.Errorf("GET dup/k after a redelivery: %d %+v, want %+v", code, again, first)
			}
			if code, _ := r.get(t, "dup", "dup", "extra"); code != http.StatusNotFound {
				t.Errorf("the redelivered batch applied dup/extra: %d", code)
			}
		})
	}
	// The device that lost its state learns the last applied seq from the
	// retained status/ack.
	fresh := r.v3(t, "dup")
	acks, _ := rigSubscribe3(t, fresh, iotkv.AckTopic("dup"))
	if m := rigNext(t, acks, "the retained status/ack"); string(m.Payload()) != `{"seq":5}` || !m.Retained() {
		t.Errorf("retained status/ack = %s (retained %v), want {\"seq\":5}", m.Payload(), m.Retained())
	}
}

// A batch that fails validation applies nothing: an MQTT 5 client gets its
// PUBACK with reason 0x99, a 3.1.1 client a PUBACK and a status/error
// message; the rejects counter moves either way.
func TestMalformedBatchIsRefusedAndNothingApplied(t *testing.T) {
	r := shared
	rejects := func() float64 { return r.metric(t, "iotkv_mqtt_rejects_total") }
	before := rejects()

	v5 := r.v5(t, "bad")
	cases := []struct {
		name, payload, code string
	}{
		{"a batch cut short", `{"seq":2,"ops":[{"op":"put","key":"bad"`, iotkv.CodeInvalidJSON},
		{"a batch with a key that starts with a slash", `{"seq":3,"ops":[{"op":"put","key":"good","value":1},{"op":"put","key":"/bad","value":1}]}`, iotkv.CodeInvalidKey},
		{"a batch whose value is not JSON", `{"seq":4,"ops":[{"op":"put","key":"good","value":1},{"op":"put","key":"bad","value":nope}]}`, iotkv.CodeInvalidJSON},
		{"a batch with an unknown op", `{"seq":5,"ops":[{"op":"put","key":"good","value":1},{"op":"inc","key":"bad"}]}`, iotkv.CodeInvalidBatch},
		{"a batch with no seq", `{"ops":[{"op":"put","key":"good","value":1}]}`, iotkv.CodeInvalidBatch},
	}
	for _, tc := range cases {
		t.Run("v5: "+tc.name, func(t *testing.T) {
			if rc := rigPublish5(t, v5, iotkv.BatchTopic("bad"), []byte(tc.payload)); rc != 0x99 {
				t.Errorf("PUBACK reason 0x%02x, want 0x99", rc)
			}
		})
	}
	if after := rejects(); after-before != float64(len(cases)) {
		t.Errorf("iotkv_mqtt_rejects_total moved by %v, want %d", after-before, len(cases))
	}

	v3 := r.v3(t, "bad")
	errs, _ := rigSubscribe3(t, v3, iotkv.ErrorTopic("bad"))
	before = rejects()
	for _, tc := range cases {
		t.Run("v3.1.1: "+tc.name, func(t *testing.T) {
			rigPublish3(t, v3, iotkv.BatchTopic("bad"), []byte(tc.payload))
			m := rigNext(t, errs, "status/error")
			var em iotkv.ErrorMessage
			if err := json.Unmarshal(m.Payload(), &em); err != nil || em.Code != tc.code || em.Message == "" {
				t.Errorf("status/error = %s, want code %s", m.Payload(), tc.code)
			}
		})
	}
	if after := rejects(); after-before != float64(len(cases)) {
		t.Errorf("iotkv_mqtt_rejects_total moved by %v for v3.1.1, want %d", after-before, len(cases))
	}
	for _, key := range []string{"good", "bad", "/bad"} {
		if code, _ := r.get(t, "admin", "bad", key); code == http.StatusOK {
			t.Errorf("a refused batch applied bad/%s", key)
		}
	}
	// The refused seqs were not consumed: seq 2 still applies.
	rigPublish3(t, v3, iotkv.BatchTopic("bad"), []byte(`{"seq":2,"ops":[{"op":"put","key":"good","value":1}]}`))
	if code, _ := r.get(t, "bad", "bad", "good"); code != http.StatusOK {
		t.Errorf("seq 2 after the refusals: GET bad/good = %d", code)
	}
}
