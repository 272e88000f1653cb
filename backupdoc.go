package iotkv

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// BackupHeader is the scalar part of a backup document. latest.json has
// exactly edge, seq, taken_at and entries; the restore stream of the master
// adds incarnation and devices.
type BackupHeader struct {
	Edge        string `json:"edge"`
	Incarnation string `json:"incarnation,omitempty"`
	Seq         uint64 `json:"seq"`
	TakenAt     string `json:"taken_at"`
}

// BackupWriter streams a backup document: header first, then devices (when
// given), then entries one per line, so that memory does not grow with the
// number of keys.
type BackupWriter struct {
	w       *bufio.Writer
	entries int
	buf     []byte
}

// NewBackupWriter writes the header and devices (nil: no devices field).
func NewBackupWriter(w io.Writer, h BackupHeader, devices []DeviceSeq) (*BackupWriter, error) {
	bw := &BackupWriter{w: bufio.NewWriterSize(w, 256<<10)}
	b := append(bw.buf[:0], `{"edge":`...)
	b = appendString(b, h.Edge)
	if h.Incarnation != "" {
		b = append(b, `,"incarnation":`...)
		b = appendString(b, h.Incarnation)
	}
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, h.Seq, 10)
	b = append(b, `,"taken_at":`...)
	b = appendString(b, h.TakenAt)
	if devices != nil {
		b = append(b, ",\n"+`"devices":[`...)
		for i, d := range devices {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"device":`...)
			b = appendString(b, d.Device)
			b = append(b, `,"last_seq":`...)
			b = strconv.AppendUint(b, d.LastSeq, 10)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, ",\n"+`"entries":[`...)
	bw.buf = b
	if _, err := bw.w.Write(b); err != nil {
		return nil, fmt.Errorf("write backup header: %w", err)
	}
	return bw, nil
}

// Entry appends one entry; the caller keeps CompareEntries order.
func (bw *BackupWriter) Entry(e *BackupEntry) error {
	b := bw.buf[:0]
	if bw.entries > 0 {
		b = append(b, ',')
	}
	b = append(b, "\n"+`{"device":`...)
	b = appendString(b, e.Device)
	b = append(b, `,"key":`...)
	b = appendString(b, e.Key)
	b = append(b, `,"value":`...)
	b = append(b, e.Value...)
	b = append(b, `,"ts":`...)
	if e.TS != nil {
		b = strconv.AppendInt(b, *e.TS, 10)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, '}')
	bw.buf = b
	bw.entries++
	if _, err := bw.w.Write(b); err != nil {
		return fmt.Errorf("write backup entry: %w", err)
	}
	return nil
}

// Entries is the number of entries written.
func (bw *BackupWriter) Entries() int { return bw.entries }

// Close ends the document and flushes; it does not close the io.Writer.
func (bw *BackupWriter) Close() error {
	if _, err := bw.w.WriteString("\n]}\n"); err != nil {
		return fmt.Errorf("write backup end: %w", err)
	}
	if err := bw.w.Flush(); err != nil {
		return fmt.Errorf("write backup: %w", err)
	}
	return nil
}

func appendString(b []byte, s string) []byte {
	enc, _ := json.Marshal(s) // a string always encodes
	return append(b, enc...)
}

// Kinds of items BackupReader.Next returns.
const (
	BackupItemEntry  = 1
	BackupItemDevice = 2
)

// BackupReader streams a backup document (latest.json or the master's
// restore stream) whatever the order of its fields: Next returns devices
// and entries as they come; Header is complete once Next returns io.EOF.
// Every entry is validated, and entries must come in CompareEntries order.
type BackupReader struct {
	Header BackupHeader
	Entry  BackupEntry // the entry Next just read
	Device DeviceSeq   // the device Next just read

	dec    *json.Decoder
	inArr  string // "entries" or "devices" while inside that array
	done   bool
	prev   BackupEntry
	nEntry int
}

// NewBackupReader reads the opening brace.
func NewBackupReader(r io.Reader) (*BackupReader, error) {
	dec := json.NewDecoder(r)
	dec.UseNumber()
	t, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("backup document: %w", err)
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return nil, errors.New("backup document: not a JSON object")
	}
	return &BackupReader{dec: dec}, nil
}

// Next reads the next device or entry; io.EOF at the end of the document.
func (r *BackupReader) Next() (int, error) {
	for {
		if r.done {
			return 0, io.EOF
		}
		if r.inArr != "" {
			if !r.dec.More() {
				if _, err := r.dec.Token(); err != nil { // ']'
					return 0, r.fail(err)
				}
				r.inArr = ""
				continue
			}
			if r.inArr == "devices" {
				r.Device = DeviceSeq{}
				if err := r.dec.Decode(&r.Device); err != nil {
					return 0, r.fail(err)
				}
				if err := ValidateName(r.Device.Device); err != nil {
					return 0, r.fail(fmt.Errorf("device: %w", err))
				}
				return BackupItemDevice, nil
			}
			r.Entry = BackupEntry{}
			if err := r.dec.Decode(&r.Entry); err != nil {
				return 0, r.fail(err)
			}
			if err := r.Entry.Validate(); err != nil {
				return 0, r.fail(err)
			}
			if r.nEntry > 0 && CompareEntries(r.prev.Device, r.prev.Key, r.Entry.Device, r.Entry.Key) >= 0 {
				return 0, r.fail(fmt.Errorf("entry %d (%s/%s) out of order", r.nEntry, r.Entry.Device, r.Entry.Key))
			}
			r.prev.Device, r.prev.Key = r.Entry.Device, r.Entry.Key
			r.nEntry++
			return BackupItemEntry, nil
		}
		if !r.dec.More() {
			if _, err := r.dec.Token(); err != nil { // '}'
				return 0, r.fail(err)
			}
			if _, err := r.dec.Token(); !errors.Is(err, io.EOF) {
				return 0, r.fail(errors.New("trailing data after the document"))
			}
			if r.Header.Edge == "" || r.Header.TakenAt == "" {
				return 0, r.fail(errors.New("edge and taken_at are required"))
			}
			r.done = true
			return 0, io.EOF
		}
		t, err := r.dec.Token()
		if err != nil {
			return 0, r.fail(err)
		}
		name, _ := t.(string)
		switch name {
		case "entries", "devices":
			t, err := r.dec.Token()
			if err != nil {
				return 0, r.fail(err)
			}
			if d, ok := t.(json.Delim); !ok || d != '[' {
				return 0, r.fail(fmt.Errorf("%s is not an array", name))
			}
			r.inArr = name
		case "edge":
			err = r.dec.Decode(&r.Header.Edge)
			if err == nil {
				err = ValidateName(r.Header.Edge)
			}
		case "incarnation":
			err = r.dec.Decode(&r.Header.Incarnation)
		case "taken_at":
			err = r.dec.Decode(&r.Header.TakenAt)
		case "seq":
			err = r.dec.Decode(&r.Header.Seq)
		default:
			var skip json.RawMessage
			err = r.dec.Decode(&skip)
		}
		if err != nil {
			return 0, r.fail(fmt.Errorf("%s: %w", name, err))
		}
	}
}

// Entries is the number of entries read so far.
func (r *BackupReader) Entries() int { return r.nEntry }

// NextEntry skips to the next entry; it returns nil, nil at the end of the
// document. A nil reader has no entries.
func (r *BackupReader) NextEntry() (*BackupEntry, error) {
	for r != nil {
		kind, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if kind == BackupItemEntry {
			return &r.Entry, nil
		}
	}
	return nil, nil
}

func (r *BackupReader) fail(err error) error {
	r.done = true
	if errors.Is(err, io.EOF) {
		// Only Next's own io.EOF means a whole document: a cut one must
		// never look complete (a restore would load half a backup).
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		} else {
			err = fmt.Errorf("%s (%w)", err, io.ErrUnexpectedEOF)
		}
	}
	return fmt.Errorf("backup document: %w", err)
}
