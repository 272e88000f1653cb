package edge

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/iotkv/iotkv"
)

// The committer's single goroutine encodes every record and change entry,
// so it does not use encoding/json's reflection (which also re-validates
// every value): these appenders write exactly what a json.Encoder with SetEscapeHTML(false) would for
// storedRecord and Change, given values that are already compact, valid
// JSON (compactOps makes them so in the caller's goroutine) and strings that
// are valid UTF-8 (keys and names are validated). encode_test.go holds them
// to that.

func appendRecord(dst []byte, r storedRecord) []byte {
	if r.Expiry != 0 {
		dst = append(dst, `{"x":`...)
		dst = strconv.AppendInt(dst, r.Expiry, 10)
		dst = append(dst, `,"v":`...)
	} else {
		dst = append(dst, `{"v":`...)
	}
	dst = append(dst, r.Value...)
	if r.TS != nil {
		dst = append(dst, `,"ts":`...)
		dst = strconv.AppendInt(dst, *r.TS, 10)
	}
	dst = append(dst, `,"u":`...)
	dst = strconv.AppendInt(dst, r.UpdatedAt, 10)
	if r.Seq != 0 {
		dst = append(dst, `,"s":`...)
		dst = strconv.AppendUint(dst, r.Seq, 10)
	}
	dst = append(dst, `,"c":`...)
	dst = strconv.AppendUint(dst, r.ChangeSeq, 10)
	return append(dst, '}')
}

func appendChange(dst []byte, c Change) []byte {
	dst = append(dst, `{"cseq":`...)
	dst = strconv.AppendUint(dst, c.Seq, 10)
	dst = append(dst, `,"device":`...)
	dst = appendString(dst, c.Device)
	dst = append(dst, `,"key":`...)
	dst = appendString(dst, c.Key)
	dst = append(dst, `,"op":`...)
	dst = appendString(dst, c.Op)
	if c.Value != nil {
		dst = append(dst, `,"value":`...)
		dst = append(dst, c.Value...)
	}
	if c.TS != nil {
		dst = append(dst, `,"ts":`...)
		dst = strconv.AppendInt(dst, *c.TS, 10)
	}
	dst = append(dst, `,"updated_at":`...)
	dst = strconv.AppendInt(dst, c.UpdatedAt, 10)
	if c.DeviceSeq != 0 {
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendUint(dst, c.DeviceSeq, 10)
	}
	return append(dst, '}')
}

// appendString quotes s as encoding/json does with SetEscapeHTML(false).
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == '\u2028' || r == '\u2029' || r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			if r == utf8.RuneError {
				dst = append(dst, `\ufffd`...)
			} else {
				dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"

// compactOps rewrites values that hold insignificant whitespace into
// compact JSON, in the submitting goroutine: journals are JSON Lines, so a
// stored value must never span lines.
func compactOps(ops []iotkv.Op) {
	for i := range ops {
		v := ops[i].Value
		if v == nil || !bytes.ContainsAny(v, " \t\r\n") {
			continue
		}
		var buf bytes.Buffer
		if json.Compact(&buf, v) == nil {
			ops[i].Value = buf.Bytes()
		}
	}
}
