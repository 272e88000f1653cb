package iotkv_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/iotkv/iotkv"
)

func TestKeyRules(t *testing.T) {
	var l iotkv.Limits // defaults: 256 bytes
	cases := []struct {
		name string
		key  string
		ok   bool
	}{
		{"a plain key is fine", "temp", true},
		{"a slash inside is fine", "room/1/temp", true},
		{"a trailing slash is fine", "room/", true},
		{"unicode is fine", "température/°C", true},
		{"a key of exactly 256 bytes is fine", strings.Repeat("k", 256), true},
		{"an empty key is refused", "", false},
		{"a key of 257 bytes is refused", strings.Repeat("k", 257), false},
		{"a leading slash is refused", "/abs", false},
		{"a NUL is refused", "a\x00b", false},
		{"a newline is refused", "a\nb", false},
		{"DEL is refused", "a\x7fb", false},
		{"a C1 control character is refused", "a\u0085b", false},
		{"invalid UTF-8 is refused", "a\xffb", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := l.ValidateKey(tc.key)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidateKey(%q) = %v, want ok=%v", tc.key, err, tc.ok)
			}
			if err != nil && iotkv.CodeOf(err) != iotkv.CodeInvalidKey {
				t.Errorf("code %s, want %s", iotkv.CodeOf(err), iotkv.CodeInvalidKey)
			}
		})
	}
	if err := (iotkv.Limits{MaxKeyBytes: 4}).ValidateKey("abcde"); err == nil {
		t.Error("a key above a configured limit was accepted")
	}
}

func TestValueRules(t *testing.T) {
	l := iotkv.Limits{MaxValueBytes: 32, MaxDepth: 3}
	cases := []struct {
		name  string
		value string
		code  string // "" means accepted
	}{
		{"a number", `21.5`, ""},
		{"a string", `"on"`, ""},
		{"true", `true`, ""},
		{"null", `null`, ""},
		{"an object", `{"a":[1,2]}`, ""},
		{"nesting at the limit", `[[[1]]]`, ""},
		{"brackets inside a string do not count as nesting", `"[[[[[["`, ""},
		{"surrounding whitespace", ` 1 `, ""},
		{"nesting above the limit", `[[[[1]]]]`, iotkv.CodeInvalidValue},
		{"an empty value", ``, iotkv.CodeInvalidValue},
		{"only whitespace", "  \n", iotkv.CodeInvalidValue},
		{"not JSON", `value1`, iotkv.CodeInvalidValue},
		{"two JSON values", `1 2`, iotkv.CodeInvalidValue},
		{"invalid UTF-8 in a string", "\"a\xffb\"", iotkv.CodeInvalidValue},
		{"a value over the size limit", `"` + strings.Repeat("x", 40) + `"`, iotkv.CodeTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := l.ValidateValue([]byte(tc.value))
			if got := codeOrEmpty(err); got != tc.code {
				t.Fatalf("ValidateValue(%q) = %v, want code %q", tc.value, err, tc.code)
			}
		})
	}
	if err := (iotkv.Limits{}).ValidateValue([]byte(`"` + strings.Repeat("x", 64<<10) + `"`)); iotkv.CodeOf(err) != iotkv.CodeTooLarge {
		t.Errorf("a value above the default 64 KiB: %v, want too_large", err)
	}
}

func codeOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return iotkv.CodeOf(err)
}

func TestDecodeBatch(t *testing.T) {
	l := iotkv.Limits{MaxOps: 3, MaxBatchBytes: 200}
	cases := []struct {
		name    string
		payload string
		code    string
		seq     uint64 // the seq a refusal still reports
	}{
		{"the documented example", `{"seq":17,"ops":[{"op":"put","key":"temp","value":21.5,"ts":1764000000123},{"op":"del","key":"old"}]}`, "", 17},
		{"a put of null", `{"seq":1,"ops":[{"op":"put","key":"k","value":null}]}`, "", 1},
		{"not JSON", `{"seq":1,"ops":[`, iotkv.CodeInvalidJSON, 0},
		{"an unknown field", `{"seq":1,"ops":[],"extra":1}`, iotkv.CodeInvalidJSON, 0},
		{"trailing data", `{"seq":1,"ops":[{"op":"del","key":"k"}]} {}`, iotkv.CodeInvalidJSON, 0},
		{"a stray bracket after the batch", `{"seq":1,"ops":[{"op":"del","key":"k"}]}]`, iotkv.CodeInvalidJSON, 0},
		{"a vertical tab after the batch (not JSON whitespace)", "{\"seq\":1,\"ops\":[{\"op\":\"del\",\"key\":\"k\"}]}\v", iotkv.CodeInvalidJSON, 0},
		{"a seq above 2^64-1", `{"seq":21000000000000000000,"ops":[{"op":"del","key":"k"}]}`, iotkv.CodeInvalidJSON, 0},
		{"a negative seq", `{"seq":-1,"ops":[{"op":"del","key":"k"}]}`, iotkv.CodeInvalidJSON, 0},
		{"seq zero", `{"seq":0,"ops":[{"op":"del","key":"k"}]}`, iotkv.CodeInvalidBatch, 0},
		{"no ops", `{"seq":4,"ops":[]}`, iotkv.CodeInvalidBatch, 4},
		{"more ops than the limit", `{"seq":5,"ops":[{"op":"del","key":"a"},{"op":"del","key":"b"},{"op":"del","key":"c"},{"op":"del","key":"d"}]}`, iotkv.CodeTooLarge, 5},
		{"a payload over the byte limit", `{"seq":6,"ops":[{"op":"put","key":"k","value":"` + strings.Repeat("x", 200) + `"}]}`, iotkv.CodeTooLarge, 0},
		{"an unknown op", `{"seq":7,"ops":[{"op":"inc","key":"k"}]}`, iotkv.CodeInvalidBatch, 7},
		{"a put without a value", `{"seq":8,"ops":[{"op":"put","key":"k"}]}`, iotkv.CodeInvalidBatch, 8},
		{"a del with a value", `{"seq":9,"ops":[{"op":"del","key":"k","value":1}]}`, iotkv.CodeInvalidBatch, 9},
		{"field names in another case, as encoding/json matches them", `{"SEQ":11,"Ops":[{"OP":"del","Key":"k"}]}`, "", 11},
		{"a field named twice", `{"seq":12,"seq":13,"ops":[{"op":"del","key":"k"}]}`, iotkv.CodeInvalidJSON, 0},
		{"a field named twice in another case", `{"seq":12,"ops":[{"op":"del","key":"k","KEY":"j"}]}`, iotkv.CodeInvalidJSON, 0},
		{"a fractional seq", `{"seq":1.5,"ops":[{"op":"del","key":"k"}]}`, iotkv.CodeInvalidJSON, 0},
		{"a ts that is not an integer", `{"seq":14,"ops":[{"op":"put","key":"k","value":1,"ts":1e3}]}`, iotkv.CodeInvalidJSON, 0},
		{"ops that are not an array", `{"seq":15,"ops":{"op":"del","key":"k"}}`, iotkv.CodeInvalidJSON, 0},
		{"a bad key in the second op", `{"seq":10,"ops":[{"op":"del","key":"ok"},{"op":"del","key":"/bad"}]}`, iotkv.CodeInvalidKey, 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := l.DecodeBatch([]byte(tc.payload))
			if got := codeOrEmpty(err); got != tc.code {
				t.Fatalf("DecodeBatch = %v, want code %q", err, tc.code)
			}
			if b.Seq != tc.seq {
				t.Errorf("seq %d, want %d", b.Seq, tc.seq)
			}
			if err != nil {
				var ie *iotkv.Error
				if !errors.As(err, &ie) {
					t.Errorf("a refusal must be an *iotkv.Error, got %T", err)
				}
				if len(b.Ops) != 0 {
					t.Errorf("a refused batch returned %d ops", len(b.Ops))
				}
			}
		})
	}
	b, err := l.DecodeBatch([]byte(`{"seq":17,"ops":[{"op":"put","key":"temp","value":21.5,"ts":1764000000123},{"op":"del","key":"old"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := iotkv.Batch{Seq: 17, Ops: []iotkv.Op{{Op: "put", Key: "temp", Value: json.RawMessage("21.5"), TS: ptr(int64(1764000000123))}, {Op: "del", Key: "old"}}}
	if fmt.Sprint(b.Seq, b.Ops[0].Op, b.Ops[0].Key, string(b.Ops[0].Value), *b.Ops[0].TS, b.Ops[1]) !=
		fmt.Sprint(want.Seq, want.Ops[0].Op, want.Ops[0].Key, string(want.Ops[0].Value), *want.Ops[0].TS, want.Ops[1]) {
		t.Errorf("decoded %+v, want %+v", b, want)
	}
}

func ptr[T any](v T) *T { return &v }

func TestNameRules(t *testing.T) {
	for _, name := range []string{"dev1", "edge-1", "sim-0001", "a.b_c", strings.Repeat("n", 128)} {
		if err := iotkv.ValidateName(name); err != nil {
			t.Errorf("ValidateName(%q) = %v, want ok", name, err)
		}
	}
	for _, name := range []string{"", ".", "..", "a/b", "a b", "a+b", "#", "dév", strings.Repeat("n", 129)} {
		if err := iotkv.ValidateName(name); err == nil {
			t.Errorf("ValidateName(%q) accepted a name that may not appear in topics or file names", name)
		}
	}
}

func TestTopics(t *testing.T) {
	if got := iotkv.BatchTopic("dev1"); got != "iotkv/v1/devices/dev1/batch" {
		t.Errorf("BatchTopic = %s", got)
	}
	if got := iotkv.KVTopic("dev1", "room/1"); got != "iotkv/v1/devices/dev1/kv/room/1" {
		t.Errorf("KVTopic = %s", got)
	}
	if got := iotkv.AckTopic("dev1"); got != "iotkv/v1/devices/dev1/status/ack" {
		t.Errorf("AckTopic = %s", got)
	}
	if got := iotkv.ErrorTopic("dev1"); got != "iotkv/v1/devices/dev1/status/error" {
		t.Errorf("ErrorTopic = %s", got)
	}
	cases := []struct {
		name  string
		topic string
		ok    bool
		want  iotkv.DeviceTopic
	}{
		{"a batch topic", "iotkv/v1/devices/dev1/batch", true, iotkv.DeviceTopic{Device: "dev1", Kind: iotkv.TopicBatch}},
		{"a kv topic with slashes in the key", "iotkv/v1/devices/dev1/kv/room/1/temp", true, iotkv.DeviceTopic{Device: "dev1", Kind: iotkv.TopicKV, Key: "room/1/temp"}},
		{"the ack topic", "iotkv/v1/devices/dev1/status/ack", true, iotkv.DeviceTopic{Device: "dev1", Kind: iotkv.TopicAck}},
		{"the error topic", "iotkv/v1/devices/dev1/status/error", true, iotkv.DeviceTopic{Device: "dev1", Kind: iotkv.TopicError}},
		{"another topic of the device", "iotkv/v1/devices/dev1/other", true, iotkv.DeviceTopic{Device: "dev1"}},
		{"a batch topic with a suffix is not a batch", "iotkv/v1/devices/dev1/batch/x", true, iotkv.DeviceTopic{Device: "dev1"}},
		{"a topic outside the devices prefix", "iotkv/v1/backup/edge1/x", false, iotkv.DeviceTopic{}},
		{"a wildcard device", "iotkv/v1/devices/+/batch", false, iotkv.DeviceTopic{}},
		{"no device", "iotkv/v1/devices//batch", false, iotkv.DeviceTopic{}},
		{"only the prefix", "iotkv/v1/devices/dev1", false, iotkv.DeviceTopic{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := iotkv.ParseDeviceTopic(tc.topic)
			if ok != tc.ok || (ok && got != tc.want) {
				t.Errorf("ParseDeviceTopic(%q) = %+v, %v; want %+v, %v", tc.topic, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestRoles(t *testing.T) {
	cases := []struct {
		role        iotkv.Role
		name, dev   string
		read, write bool
	}{
		{iotkv.RoleDevice, "dev1", "dev1", true, true},
		{iotkv.RoleDevice, "dev1", "dev2", false, false},
		{iotkv.RoleReader, "r", "dev1", true, false},
		{iotkv.RoleWriter, "w", "dev1", true, true},
		{iotkv.RoleAdmin, "a", "dev1", true, true},
		{iotkv.RoleMaster, "master", "dev1", false, false},
		{iotkv.RoleEdge, "edge1", "dev1", false, false},
	}
	for _, tc := range cases {
		if got := tc.role.CanRead(tc.name, tc.dev); got != tc.read {
			t.Errorf("%s %s reading %s: %v, want %v", tc.role, tc.name, tc.dev, got, tc.read)
		}
		if got := tc.role.CanWrite(tc.name, tc.dev); got != tc.write {
			t.Errorf("%s %s writing %s: %v, want %v", tc.role, tc.name, tc.dev, got, tc.write)
		}
	}
	if iotkv.Role("king").Valid() || !iotkv.RoleMaster.Valid() {
		t.Error("Role.Valid is wrong")
	}
}
