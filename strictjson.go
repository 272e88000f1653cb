package iotkv

import (
	"bytes"
	"encoding/json"
	"errors"
)

// ErrTrailingData is DecodeStrict's refusal of anything after the document.
var ErrTrailingData = errors.New("trailing data after the JSON document")

// DecodeStrict decodes data, which must hold exactly one JSON document,
// into v. A field that v does not declare is an error, and so is anything
// but JSON whitespace after the document. It decodes the backup
// protocol's requests and confirms and the accounts file; batches, most of
// the edge's ingest CPU, have their own reader (decodeBatchJSON) held to
// the same reading by FuzzDecodeBatch.
func DecodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	// Not dec.More: it is false before a stray ']' or '}', so `{...}]`
	// would pass.
	if len(bytes.TrimLeft(data[dec.InputOffset():], " \t\r\n")) > 0 {
		return ErrTrailingData
	}
	return nil
}
