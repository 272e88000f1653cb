package iotkv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode"
	"unicode/utf8"
)

// Op kinds.
const (
	OpPut = "put"
	OpDel = "del"
)

// Op is one write or delete inside a Batch.
type Op struct {
	Op    string          `json:"op"`
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value,omitempty"`
	// TS is the device's clock in ms since the epoch; optional.
	TS *int64 `json:"ts,omitempty"`
	// TTL, on a put, makes the key expire TTL seconds after the edge
	// commits it (MinTTL to MaxTTL); optional.
	TTL *int64 `json:"ttl,omitempty"`
}

// The range of an op's ttl, in seconds.
const (
	MinTTL = 1
	MaxTTL = 10 * 365 * 24 * 3600 // 10 years
)

// ValidateTTL checks a ttl in seconds.
func ValidateTTL(ttl int64) error {
	if ttl < MinTTL || ttl > MaxTTL {
		return Errorf(CodeInvalidBatch, "ttl must be an integer from %d to %d seconds, not %d", MinTTL, MaxTTL, ttl)
	}
	return nil
}

// Batch is what a device publishes on its batch topic. Its ops apply
// atomically and in order; Seq is strictly increasing per device.
type Batch struct {
	Seq uint64 `json:"seq"`
	Ops []Op   `json:"ops"`
}

// Record is a stored value as REST returns it.
type Record struct {
	Device string          `json:"device"`
	Key    string          `json:"key"`
	Value  json.RawMessage `json:"value"`
	// TS is the device's timestamp if it gave one (ms since the epoch).
	TS *int64 `json:"ts"`
	// UpdatedAt is the edge's clock when the write was committed (ms).
	UpdatedAt int64 `json:"updated_at"`
	// Seq is the device batch seq that wrote the record; 0 for writes
	// that came over REST.
	Seq uint64 `json:"seq"`
	// ChangeSeq is the edge-wide change seq of the write (the position in
	// the backup stream).
	ChangeSeq uint64 `json:"change_seq,omitempty"`
}

// Limits bound what the edge accepts. The zero value of a field means its
// default.
type Limits struct {
	MaxKeyBytes   int // default 256
	MaxValueBytes int // default 64 KiB
	MaxOps        int // ops per batch, default 1000
	MaxBatchBytes int // payload bytes, default 1 MiB
	MaxDepth      int // JSON nesting depth of a value, default 32
}

// WithDefaults returns l with zero fields set to their defaults.
func (l Limits) WithDefaults() Limits {
	if l.MaxKeyBytes <= 0 {
		l.MaxKeyBytes = 256
	}
	if l.MaxValueBytes <= 0 {
		l.MaxValueBytes = 64 << 10
	}
	if l.MaxOps <= 0 {
		l.MaxOps = 1000
	}
	if l.MaxBatchBytes <= 0 {
		l.MaxBatchBytes = 1 << 20
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = 32
	}
	return l
}

// ValidateKey checks the key rules: 1..max bytes of UTF-8, no control
// characters, no leading '/'.
func (l Limits) ValidateKey(key string) error {
	l = l.WithDefaults()
	switch {
	case key == "":
		return Errorf(CodeInvalidKey, "key is empty")
	case len(key) > l.MaxKeyBytes:
		return Errorf(CodeInvalidKey, "key is %d bytes, the limit is %d", len(key), l.MaxKeyBytes)
	case !utf8.ValidString(key):
		return Errorf(CodeInvalidKey, "key is not valid UTF-8")
	case key[0] == '/':
		return Errorf(CodeInvalidKey, "key must not start with '/'")
	}
	for _, r := range key {
		if unicode.IsControl(r) {
			return Errorf(CodeInvalidKey, "key contains control character %U", r)
		}
	}
	return nil
}

// ValidateValue checks that v is one JSON value within the size and depth
// limits.
func (l Limits) ValidateValue(v []byte) error {
	l = l.WithDefaults()
	if len(v) > l.MaxValueBytes {
		return Errorf(CodeTooLarge, "value is %d bytes, the limit is %d", len(v), l.MaxValueBytes)
	}
	if len(bytes.TrimSpace(v)) == 0 {
		return Errorf(CodeInvalidValue, "value is empty")
	}
	// json.Valid accepts invalid UTF-8 inside strings; such a value would
	// be stored as is and served as invalid JSON text.
	if !utf8.Valid(v) {
		return Errorf(CodeInvalidValue, "value is not valid UTF-8")
	}
	if d := jsonDepth(v); d > l.MaxDepth {
		return Errorf(CodeInvalidValue, "value nests deeper than %d levels", l.MaxDepth)
	}
	if !json.Valid(v) {
		return Errorf(CodeInvalidValue, "value is not valid JSON")
	}
	return nil
}

// jsonDepth returns the deepest bracket nesting of v, ignoring brackets
// inside strings. It runs before json.Valid so that hostile nesting is
// refused in linear time with no recursion.
func jsonDepth(v []byte) int {
	depth, maxDepth := 0, 0
	inString, escaped := false, false
	for _, c := range v {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			depth++
			maxDepth = max(maxDepth, depth)
		case c == ']' || c == '}':
			depth--
		}
	}
	return maxDepth
}

// DecodeBatch parses and validates a batch payload. A batch that fails
// validation must apply nothing; the error is an *Error.
func (l Limits) DecodeBatch(payload []byte) (Batch, error) {
	l = l.WithDefaults()
	var b Batch
	if len(payload) > l.MaxBatchBytes {
		return b, Errorf(CodeTooLarge, "batch is %d bytes, the limit is %d", len(payload), l.MaxBatchBytes)
	}
	// encoding/json would silently turn invalid UTF-8 in a key into U+FFFD
	// and store the device's write under a key it never sent.
	if !utf8.Valid(payload) {
		return b, Errorf(CodeInvalidJSON, "batch is not valid UTF-8")
	}
	if d := jsonDepth(payload); d > l.MaxDepth+3 {
		return b, Errorf(CodeInvalidValue, "batch nests deeper than %d levels", l.MaxDepth+3)
	}
	// Not DecodeStrict: batches are most of the edge's ingest CPU, and
	// decodeBatchJSON reads them the same way (FuzzDecodeBatch) in less.
	b, err := decodeBatchJSON(payload)
	if err != nil {
		return Batch{}, Errorf(CodeInvalidJSON, "batch: %v", err)
	}
	// From here on a refused batch still reports its seq, so that the
	// device can match the status/error to the batch.
	refused := Batch{Seq: b.Seq}
	if b.Seq == 0 {
		return refused, Errorf(CodeInvalidBatch, "batch: seq must be a positive integer")
	}
	if len(b.Ops) == 0 {
		return refused, Errorf(CodeInvalidBatch, "batch: ops is empty")
	}
	if len(b.Ops) > l.MaxOps {
		return refused, Errorf(CodeTooLarge, "batch has %d ops, the limit is %d", len(b.Ops), l.MaxOps)
	}
	// A value decoded from the batch is one valid JSON value of valid
	// UTF-8, and the batch's depth bound is the values' (the batch is 3
	// levels around each): only its size is left to check.
	sized := func(v []byte) error {
		if len(v) > l.MaxValueBytes {
			return Errorf(CodeTooLarge, "value is %d bytes, the limit is %d", len(v), l.MaxValueBytes)
		}
		return nil
	}
	for i, op := range b.Ops {
		if err := l.validateOp(op, sized); err != nil {
			return refused, fmt.Errorf("op %d: %w", i, err)
		}
	}
	return b, nil
}

// ValidateOp checks one op.
func (l Limits) ValidateOp(op Op) error { return l.validateOp(op, l.ValidateValue) }

func (l Limits) validateOp(op Op, validateValue func([]byte) error) error {
	if err := l.ValidateKey(op.Key); err != nil {
		return err
	}
	switch op.Op {
	case OpPut:
		if op.Value == nil {
			return Errorf(CodeInvalidBatch, "put of %q has no value", op.Key)
		}
		if op.TTL != nil {
			if err := ValidateTTL(*op.TTL); err != nil {
				return fmt.Errorf("put of %q: %w", op.Key, err)
			}
		}
		return validateValue(op.Value)
	case OpDel:
		if op.Value != nil {
			return Errorf(CodeInvalidBatch, "del of %q must not carry a value", op.Key)
		}
		if op.TTL != nil {
			return Errorf(CodeInvalidBatch, "del of %q must not carry a ttl", op.Key)
		}
		return nil
	default:
		return Errorf(CodeInvalidBatch, "unknown op %q (want put or del)", op.Op)
	}
}

// ValidateName checks a device, edge or account name: 1–128 characters of
// [A-Za-z0-9._-]. Names appear in topics, file names and certificate CNs,
// so they are kept plain.
func ValidateName(name string) error {
	if name == "" || len(name) > 128 {
		return Errorf(CodeBadRequest, "name must be 1–128 characters")
	}
	for _, r := range name {
		ok := r == '.' || r == '_' || r == '-' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return Errorf(CodeBadRequest, "name %q: only letters, digits, '.', '_' and '-' are allowed", name)
		}
	}
	if name == "." || name == ".." {
		return Errorf(CodeBadRequest, "name %q is reserved", name)
	}
	return nil
}
