package iotkv

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"github.com/go-json-experiment/json/jsontext"
)

// decodeBatchJSON reads a JSON batch with a streaming tokenizer
// (jsontext) instead of encoding/json's reflection, which was most of the
// edge's ingest CPU. It accepts nothing that encoding/json (with
// DisallowUnknownFields) would refuse and reads every batch it accepts as
// encoding/json does (FuzzDecodeBatch checks both): field names match
// case-insensitively, a null leaves a field at its zero value, numbers go
// through strconv as encoding/json's do, a value is kept as its exact
// bytes (json.RawMessage). It is stricter in one place: a field named
// twice in the batch or in an op is refused (encoding/json keeps the
// last one).
func decodeBatchJSON(payload []byte) (Batch, error) {
	var b Batch
	// Values alias this copy, not the caller's buffer (one allocation
	// instead of one per value). A *bytes.Buffer is read in place.
	buf := bytes.Clone(payload)
	// The two options make the tokenizer take exactly the JSON text
	// encoding/json takes: duplicate names inside a value, and escaped
	// lone surrogates (the raw bytes are valid UTF-8, DecodeBatch checked
	// that first) which encoding/json reads as U+FFFD.
	dec := jsontext.NewDecoder(bytes.NewBuffer(buf), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	isObject, err := readOpen(dec, '{')
	if err != nil {
		return Batch{}, fmt.Errorf("batch: %w", err)
	}
	var seen uint8
	for isObject && dec.PeekKind() != '}' {
		f, err := readName(dec, &seen, batchFields)
		if err != nil {
			return Batch{}, err
		}
		switch f {
		case 0:
			err = readUint(dec, &b.Seq)
		case 1:
			b.Ops, err = readOps(dec)
		}
		if err != nil {
			return Batch{}, fmt.Errorf("%s: %w", batchFields[f], err)
		}
	}
	if isObject {
		if _, err := dec.ReadToken(); err != nil {
			return Batch{}, err
		}
	}
	if len(bytes.Trim(buf[dec.InputOffset():], " \t\r\n")) > 0 {
		return Batch{}, errors.New("trailing data after the JSON object")
	}
	return b, nil
}

var (
	batchFields = []string{"seq", "ops"}
	opFields    = []string{"op", "key", "value", "ts", "ttl"}
)

// readOpen reads the start of an object or array (open is '{' or '['):
// false for null, an error for anything else.
func readOpen(dec *jsontext.Decoder, open jsontext.Kind) (bool, error) {
	tok, err := dec.ReadToken()
	if err != nil {
		return false, err
	}
	switch tok.Kind() {
	case 'n':
		return false, nil
	case open:
		return true, nil
	}
	want := "an object"
	if open == '[' {
		want = "an array"
	}
	return false, fmt.Errorf("want %s, got a JSON %s", want, tok.Kind())
}

// readName reads a member name and returns its index in fields, matched
// as encoding/json matches (exactly, else under Unicode case folding). An
// unknown name, or a name already in seen, is an error.
func readName(dec *jsontext.Decoder, seen *uint8, fields []string) (int, error) {
	v, err := dec.ReadValue()
	if err != nil {
		return 0, err
	}
	name := v[1 : len(v)-1]
	if bytes.IndexByte(name, '\\') >= 0 {
		if name, err = jsontext.AppendUnquote(nil, v); err != nil {
			return 0, err
		}
	}
	for i, f := range fields {
		if string(name) == f || bytes.EqualFold(name, []byte(f)) {
			if *seen&(1<<i) != 0 {
				return 0, fmt.Errorf("field %q given twice", name)
			}
			*seen |= 1 << i
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown field %q", name)
}

func readOps(dec *jsontext.Decoder) ([]Op, error) {
	isArray, err := readOpen(dec, '[')
	if err != nil || !isArray {
		return nil, err
	}
	ops := make([]Op, 0, 16)
	for dec.PeekKind() != ']' {
		var op Op
		if err := readOp(dec, &op); err != nil {
			return nil, fmt.Errorf("op %d: %w", len(ops), err)
		}
		ops = append(ops, op)
	}
	if _, err := dec.ReadToken(); err != nil {
		return nil, err
	}
	return ops, nil
}

func readOp(dec *jsontext.Decoder, op *Op) error {
	isObject, err := readOpen(dec, '{')
	if err != nil || !isObject {
		return err
	}
	var seen uint8
	for dec.PeekKind() != '}' {
		f, err := readName(dec, &seen, opFields)
		if err != nil {
			return err
		}
		switch f {
		case 0:
			err = readString(dec, &op.Op)
		case 1:
			err = readString(dec, &op.Key)
		case 2:
			var v jsontext.Value
			if v, err = dec.ReadValue(); err == nil {
				op.Value = []byte(v) // aliases the batch's own copy
			}
		case 3:
			err = readInt(dec, &op.TS)
		case 4:
			err = readInt(dec, &op.TTL)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", opFields[f], err)
		}
	}
	_, err = dec.ReadToken()
	return err
}

// readString: a string, or null for "". The op names are not allocated.
func readString(dec *jsontext.Decoder, s *string) error {
	v, err := dec.ReadValue()
	if err != nil {
		return err
	}
	switch v.Kind() {
	case 'n':
		*s = ""
		return nil
	case '"':
	default:
		return fmt.Errorf("want a string, got a JSON %s", v.Kind())
	}
	raw := v[1 : len(v)-1]
	switch {
	case string(raw) == OpPut:
		*s = OpPut
	case string(raw) == OpDel:
		*s = OpDel
	case bytes.IndexByte(raw, '\\') < 0:
		*s = string(raw)
	default:
		u, err := jsontext.AppendUnquote(nil, v)
		if err != nil {
			return err
		}
		*s = string(u)
	}
	return nil
}

// readUint: a JSON number that is an integer in [0, 2^64-1], or null.
func readUint(dec *jsontext.Decoder, u *uint64) error {
	v, err := readNumber(dec)
	if err != nil || v == nil {
		return err
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return fmt.Errorf("number %s is not an unsigned 64-bit integer", v)
	}
	*u = n
	return nil
}

// readInt: a JSON number that is a 64-bit integer, or null for nil.
func readInt(dec *jsontext.Decoder, p **int64) error {
	v, err := readNumber(dec)
	if err != nil {
		return err
	}
	if v == nil {
		*p = nil
		return nil
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return fmt.Errorf("number %s is not a 64-bit integer", v)
	}
	*p = &n
	return nil
}

// readNumber returns a number's literal, or nil for null.
func readNumber(dec *jsontext.Decoder) (jsontext.Value, error) {
	v, err := dec.ReadValue()
	if err != nil {
		return nil, err
	}
	switch v.Kind() {
	case 'n':
		return nil, nil
	case '0':
		return v, nil
	}
	return nil, fmt.Errorf("want a number, got a JSON %s", v.Kind())
}
