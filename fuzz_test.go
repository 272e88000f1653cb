package iotkv_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/iotkv/iotkv"
)

// stdDecodeBatch decodes as encoding/json does, with DecodeBatch's rules
// for unknown fields and trailing data.
func stdDecodeBatch(payload []byte) (iotkv.Batch, error) {
	var b iotkv.Batch
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return b, err
	}
	// Not dec.More: it reports false before a stray ']' or '}'.
	if len(bytes.Trim(payload[dec.InputOffset():], " \t\r\n")) > 0 { // JSON's whitespace only
		return b, errors.New("trailing data")
	}
	return b, nil
}

func sameBatch(a, b iotkv.Batch) bool {
	if a.Seq != b.Seq || len(a.Ops) != len(b.Ops) {
		return false
	}
	for i := range a.Ops {
		x, y := a.Ops[i], b.Ops[i]
		if x.Op != y.Op || x.Key != y.Key || !bytes.Equal(x.Value, y.Value) || (x.Value == nil) != (y.Value == nil) ||
			(x.TS == nil) != (y.TS == nil) || (x.TS != nil && *x.TS != *y.TS) {
			return false
		}
	}
	return true
}

// Small limits make the fuzzer reach every limit quickly.
var fuzzLimits = iotkv.Limits{MaxKeyBytes: 16, MaxValueBytes: 64, MaxOps: 4, MaxBatchBytes: 512, MaxDepth: 4}

// FuzzDecodeBatch: a batch payload comes straight from a device. Whatever
// it holds, DecodeBatch must not panic, must refuse with an *iotkv.Error
// (never an internal error) and must return no ops with a refusal; what it
// accepts must obey every rule, read the same with json.Unmarshal (a
// differential check: Unmarshal refuses trailing data on its own) and
// survive a round trip.
func FuzzDecodeBatch(f *testing.F) {
	for _, s := range []string{
		`{"seq":17,"ops":[{"op":"put","key":"temp","value":21.5,"ts":1764000000123},{"op":"del","key":"old"}]}`,
		`{"seq":1,"ops":[{"op":"put","key":"a/b","value":{"x":[1,2,{"y":null}]}}]}`,
		`{"seq":0,"ops":[{"op":"del","key":"k"}]}`,
		`{"seq":2,"ops":[]}`,
		`{"seq":3,"ops":[{"op":"put","key":"/abs","value":1}]}`,
		`{"seq":3,"ops":[{"op":"put","key":"k\u0000","value":1}]}`,
		`{"seq":3,"ops":[{"op":"put","key":"k","value":[[[[[[[[1]]]]]]]]}]}`,
		`{"seq":3,"ops":[{"op":"del","key":"k","value":1}]}`,
		`{"seq":3,"ops":[{"op":"zap","key":"k"}]}`,
		`{"seq":3,"ops":[{"op":"put","key":"k","value":1}]} {"seq":4}`,
		`{"seq":-1,"ops":[{"op":"del","key":"k"}]}`,
		`{"seq":18446744073709551616,"ops":[{"op":"del","key":"k"}]}`,
		`{"seq":3,"ops":[{"op":"put","key":"k","value":"\ud800"}]}`,
		`{"seq":3,"extra":1,"ops":[{"op":"del","key":"k"}]}`,
		"{\"seq\":3,\"ops\":[{\"op\":\"del\",\"key\":\"\xff\"}]}",
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`,
		`{"seq":5,"ops":[{"op":"put","key":"sess","value":"x","ttl":1}]}`,
		`{"seq":5,"ops":[{"op":"put","key":"sess","value":"x","ttl":315360000}]}`,
		`{"seq":5,"ops":[{"op":"put","key":"sess","value":"x","ttl":315360001}]}`,
		`{"seq":5,"ops":[{"op":"put","key":"sess","value":"x","ttl":0}]}`,
		`{"seq":5,"ops":[{"op":"put","key":"sess","value":"x","ttl":-3}]}`,
		`{"seq":5,"ops":[{"op":"put","key":"sess","value":"x","ttl":1.5}]}`,
		`{"seq":5,"ops":[{"op":"put","key":"sess","value":"x","ttl":"60"}]}`,
		`{"seq":5,"ops":[{"op":"del","key":"sess","ttl":60}]}`,
		`{"seq":5,"ops":[{"op":"put","key":"sess","value":"x","ttl":1e3}]}`,
		`null`, ``, `{}`,
		`{"seq":21000000000000000000,"ops":[{"op":"del","key":"k"}]}`,
		`{"SEQ":5,"Ops":[{"OP":"put","kEy":"k","Value":null,"TS":null}]}`,
		`{"\u017feq":5,"ops":[null,{"op":"del","key":"k"}]}`,
		`{"seq":5,"seq":6,"ops":[{"op":"del","key":"k"}]}`,
		`{"seq":5,"ops":[{"op":"put","key":"k\ud800","value":{"a":1,"a":2}}]}`,
		`{"seq":5.0,"ops":[{"op":"put","key":"k","value":1,"ts":1e3}]}`,
		`{"seq":5,"ops":null}`, `{"seq":5,"ops":[{"op":"del","key":"k"}]}]`,
		"{\"seq\":5,\"ops\":[{\"op\":\"del\",\"key\":\"k\"}]}\v",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		b, err := fuzzLimits.DecodeBatch(payload)
		if err != nil {
			var ie *iotkv.Error
			if !errors.As(err, &ie) || ie.Code == iotkv.CodeInternal {
				t.Fatalf("refusal is not a coded *iotkv.Error: %v", err)
			}
			if len(b.Ops) != 0 {
				t.Fatalf("a refused batch returned %d ops", len(b.Ops))
			}
			// Refusing what encoding/json would take is allowed: the
			// decoder refuses a field named twice (encoding/json keeps
			// the last).
			return
		}
		// What DecodeBatch accepts, encoding/json reads the same way
		// (with DisallowUnknownFields and no trailing data: stricter than
		// json.Unmarshal, so this also holds it to json.Unmarshal).
		std, stdErr := stdDecodeBatch(payload)
		if stdErr != nil {
			t.Fatalf("accepted, encoding/json refuses it: %v", stdErr)
		}
		if !sameBatch(b, std) {
			t.Fatalf("decoders differ:\n DecodeBatch   %+v\n encoding/json %+v", b, std)
		}
		if !utf8.Valid(payload) {
			t.Fatalf("accepted a batch that is not valid UTF-8: %q", payload)
		}
		if len(payload) > fuzzLimits.MaxBatchBytes {
			t.Fatalf("accepted a %d-byte batch over the %d-byte limit", len(payload), fuzzLimits.MaxBatchBytes)
		}
		if b.Seq == 0 || len(b.Ops) == 0 || len(b.Ops) > fuzzLimits.MaxOps {
			t.Fatalf("accepted seq %d with %d ops", b.Seq, len(b.Ops))
		}
		for i, op := range b.Ops {
			// DecodeBatch checks values more cheaply than ValidateOp;
			// what it accepts must pass the full check.
			if err := fuzzLimits.ValidateOp(op); err != nil {
				t.Fatalf("op %d accepted in a batch, refused alone: %v", i, err)
			}
			checkAcceptedKey(t, op.Key)
			if op.TTL != nil && (op.Op != iotkv.OpPut || *op.TTL < iotkv.MinTTL || *op.TTL > iotkv.MaxTTL) {
				t.Fatalf("op %d: accepted %s with ttl %d", i, op.Op, *op.TTL)
			}
			switch op.Op {
			case iotkv.OpPut:
				checkAcceptedValue(t, op.Value)
			case iotkv.OpDel:
				if op.Value != nil {
					t.Fatalf("op %d: del with a value", i)
				}
			default:
				t.Fatalf("op %d: accepted op %q", i, op.Op)
			}
		}
		again, err := json.Marshal(b)
		if err != nil {
			t.Fatalf("re-encode accepted batch: %v", err)
		}
		b2, err := fuzzLimits.WithDefaults().DecodeBatch(again)
		if err != nil {
			t.Fatalf("re-encoded batch refused: %v\n%s", err, again)
		}
		if b2.Seq != b.Seq || len(b2.Ops) != len(b.Ops) {
			t.Fatalf("round trip changed the batch: %+v vs %+v", b, b2)
		}
		for i := range b.Ops {
			if (b.Ops[i].TTL == nil) != (b2.Ops[i].TTL == nil) || b.Ops[i].TTL != nil && *b.Ops[i].TTL != *b2.Ops[i].TTL {
				t.Fatalf("round trip changed op %d's ttl", i)
			}
		}
	})
}

// FuzzValidateKey: an accepted key is what docs/protocol.md allows and nothing more,
// holds no NUL (the store's separator) and round-trips through its topic.
func FuzzValidateKey(f *testing.F) {
	for _, s := range []string{"temp", "a/b/c", "/lead", "", "k\x00", "k\x7f", "k\u0085", "\xff\xfe", "ünï/cødé", "a+b#c", strings.Repeat("k", 17), "../../etc/passwd"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if err := fuzzLimits.ValidateKey(key); err != nil {
			if iotkv.CodeOf(err) != iotkv.CodeInvalidKey {
				t.Fatalf("key refused with code %q, want %q", iotkv.CodeOf(err), iotkv.CodeInvalidKey)
			}
			return
		}
		checkAcceptedKey(t, key)
		tp, ok := iotkv.ParseDeviceTopic(iotkv.KVTopic("dev-1", key))
		if !ok || tp.Device != "dev-1" || tp.Kind != iotkv.TopicKV || tp.Key != key {
			t.Fatalf("KVTopic(dev-1, %q) parses back as %+v, %v", key, tp, ok)
		}
	})
}

// FuzzValidateValue: an accepted value is one JSON value within the size
// and nesting limits.
func FuzzValidateValue(f *testing.F) {
	for _, s := range []string{`1`, `"s"`, `{"a":[1,{"b":null}]}`, `[[[[[1]]]]]`, `"[[[[[[["`, `{"a":"\"[[[[[["}`, ` `, `1 2`, `tru`, "\"\xff\"", `"\ud800"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		if err := fuzzLimits.ValidateValue(v); err != nil {
			if c := iotkv.CodeOf(err); c != iotkv.CodeInvalidValue && c != iotkv.CodeTooLarge {
				t.Fatalf("value refused with code %q", c)
			}
			return
		}
		checkAcceptedValue(t, v)
	})
}

// FuzzParseDeviceTopic: a parsed topic names a valid device, and the kinds
// the edge acts on are exactly the topics docs/protocol.md lists.
func FuzzParseDeviceTopic(f *testing.F) {
	for _, s := range []string{
		"iotkv/v1/devices/d1/batch", "iotkv/v1/devices/d1/kv/a/b", "iotkv/v1/devices/d1/status/ack",
		"iotkv/v1/devices/d1/status/error", "iotkv/v1/devices/d1/status", "iotkv/v1/devices/../batch",
		"iotkv/v1/devices/+/batch", "iotkv/v1/devices/#", "iotkv/v1/devices//batch", "iotkv/v1/devices/d1",
		"iotkv/v1/backup/e1/x", "$SYS/broker", "iotkv/v1/devices/d1/kv/", "iotkv/v1/devices/d1/batch/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		tp, ok := iotkv.ParseDeviceTopic(topic)
		if !ok {
			return
		}
		if err := iotkv.ValidateName(tp.Device); err != nil {
			t.Fatalf("parsed an invalid device %q from %q", tp.Device, topic)
		}
		if !strings.HasPrefix(topic, iotkv.DeviceNamespace(tp.Device)) {
			t.Fatalf("%q is not under the namespace of %q", topic, tp.Device)
		}
		var want string
		switch tp.Kind {
		case iotkv.TopicBatch:
			want = iotkv.BatchTopic(tp.Device)
		case iotkv.TopicKV:
			want = iotkv.KVTopic(tp.Device, tp.Key)
		case iotkv.TopicAck:
			want = iotkv.AckTopic(tp.Device)
		case iotkv.TopicError:
			want = iotkv.ErrorTopic(tp.Device)
		case "":
			return
		default:
			t.Fatalf("unknown kind %q", tp.Kind)
		}
		if want != topic {
			t.Fatalf("%q parsed as %+v, which names %q", topic, tp, want)
		}
	})
}

// FuzzValidateName: names become file names and topic levels, so an
// accepted name can never step out of a directory or span topic levels.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"dev-1", "a.b_c", ".", "..", "...", "a/b", "a\\b", "a\x00", "+", "#", strings.Repeat("x", 129), "ünï"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if iotkv.ValidateName(name) != nil {
			return
		}
		if len(name) == 0 || len(name) > 128 || name == "." || name == ".." ||
			strings.ContainsAny(name, "/\\\x00+#$ ") || filepath.Base(name) != name ||
			filepath.Join("/data", name) != "/data/"+name {
			t.Fatalf("accepted unsafe name %q", name)
		}
	})
}

func checkAcceptedKey(t *testing.T, key string) {
	t.Helper()
	if key == "" || len(key) > fuzzLimits.MaxKeyBytes || !utf8.ValidString(key) || key[0] == '/' || strings.IndexByte(key, 0) >= 0 {
		t.Fatalf("accepted key %q", key)
	}
	for _, r := range key {
		if unicode.IsControl(r) {
			t.Fatalf("accepted key %q with control character %U", key, r)
		}
	}
}

func checkAcceptedValue(t *testing.T, v []byte) {
	t.Helper()
	if len(v) > fuzzLimits.MaxValueBytes || !json.Valid(v) || !utf8.Valid(v) {
		t.Fatalf("accepted value %q", v)
	}
	if d := nesting(v); d > fuzzLimits.MaxDepth {
		t.Fatalf("accepted value nesting %d levels (limit %d): %s", d, fuzzLimits.MaxDepth, v)
	}
}

// nesting measures depth with the real decoder, independently of the
// scanner the package uses.
func nesting(v []byte) int {
	dec := json.NewDecoder(bytes.NewReader(v))
	depth, deepest := 0, 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return deepest
		}
		switch tok {
		case json.Delim('['), json.Delim('{'):
			depth++
			deepest = max(deepest, depth)
		case json.Delim(']'), json.Delim('}'):
			depth--
		}
	}
}

// FuzzDecodeStrict: the decoder of every untrusted document. Into an
// interface it must agree with json.Unmarshal, which checks the whole input
// (trailing data included) before decoding: same verdict, same value.
// Into a struct, what it accepts json.Unmarshal reads the same way.
func FuzzDecodeStrict(f *testing.F) {
	for _, s := range []string{
		`{"a":1}`, `{"a":1} `, "{\"a\":1}\v", `{"a":1}]`, `{"a":1}}`, `{"a":1} {}`, `[1,2]`, `"s"`, `1e999`,
		`{"inc":"x","seq":3}`, `{"inc":"x","seq":3,"zzz":1}`, `{"inc":"x","seq":-1}`, ``, ` `, `null`,
		"{\"inc\":\"\xff\"}", `{"inc":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got, want any
		err := iotkv.DecodeStrict(data, &got)
		stdErr := json.Unmarshal(data, &want)
		if (err == nil) != (stdErr == nil) {
			t.Fatalf("DecodeStrict: %v; json.Unmarshal: %v", err, stdErr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("DecodeStrict read %#v, json.Unmarshal %#v", got, want)
		}
		var c, stdC iotkv.BackupConfirm
		if err := iotkv.DecodeStrict(data, &c); err == nil {
			if err := json.Unmarshal(data, &stdC); err != nil || c != stdC {
				t.Fatalf("DecodeStrict read %+v, json.Unmarshal %+v (%v)", c, stdC, err)
			}
		}
	})
}
