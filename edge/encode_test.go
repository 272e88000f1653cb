package edge

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/iotkv/iotkv"
)

func ptr(v int64) *int64 { return &v }

// marshal is json.Marshal without HTML escaping.
func marshal(v any) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return strings.TrimSuffix(b.String(), "\n")
}

// The hand-written encoders write exactly what json.Marshal writes.
func TestEncodersMatchEncodingJSON(t *testing.T) {
	values := []json.RawMessage{json.RawMessage(`21.5`), json.RawMessage(`{"a":[1,true,null,"x"]}`), json.RawMessage(`"q\"<>&"`), nil}
	strs := []string{"temp", `a"b\c`, "room/1", "<script>&", "tab\there", "line\u2028sep\u2029", "é€😀", "ctl\x01"}
	for _, v := range values {
		for _, s := range strs {
			for _, ts := range []*int64{nil, ptr(1764000000123), ptr(-5)} {
				for _, seq := range []uint64{0, 17} {
					sr := storedRecord{Value: v, TS: ts, UpdatedAt: 1764000000999, Seq: seq, ChangeSeq: 42}
					if sr.Value == nil {
						sr.Value = json.RawMessage(`null`)
					}
					want := marshal(sr)
					if got := appendRecord(nil, sr); string(got) != want {
						t.Fatalf("appendRecord = %s, json.Marshal = %s", got, want)
					}
					op := "put"
					if v == nil {
						op = "del"
					}
					c := Change{Seq: 7, Device: "dev-1", Key: s, Op: op, Value: v, TS: ts, UpdatedAt: 1764000000999, DeviceSeq: seq}
					want = marshal(c)
					if got := appendChange(nil, c); string(got) != want {
						t.Fatalf("appendChange = %s, json.Marshal = %s", got, want)
					}
				}
			}
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", `"\`, "<>&", "\u2028", "\x00\x1f", "é😀"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := marshal(s)
		if got := appendString(nil, s); string(got) != want {
			t.Fatalf("appendString(%q) = %s, json.Marshal = %s", s, got, want)
		}
	})
}

func TestCompactOpsMakesOneLineValues(t *testing.T) {
	ops := []iotkv.Op{{Op: "put", Key: "k", Value: json.RawMessage("{\n  \"a\": [1, 2],\n  \"s\": \"x y\"\n}")}, {Op: "del", Key: "d"}}
	compactOps(ops)
	if got := string(ops[0].Value); got != `{"a":[1,2],"s":"x y"}` {
		t.Errorf("compacted value = %s", got)
	}
}
