package iotkv

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzDecodeBackupMessages feeds the master's parsers of the backup stream:
// they must never panic, and what they accept must be self-consistent.
func FuzzDecodeBackupMessages(f *testing.F) {
	for _, s := range []string{
		`{"edge":"e1","inc":"ab","from":1,"to":2,"changes":[{"cseq":1,"device":"d","key":"k","op":"put","value":1,"updated_at":5},{"cseq":2,"device":"d","key":"k","op":"del","updated_at":6}]}`,
		`{"edge":"e1","inc":"ab","from":3,"to":2,"changes":[]}`,
		`{"edge":"e1","inc":"ab","snap":"s","seq":9,"part":0,"devices":[{"device":"d","last_seq":4}],"entries":[{"device":"d","key":"a","value":"x","ts":null},{"device":"d","key":"b","value":{"n":[1,2]},"ts":7}]}`,
		`{"edge":"e1","inc":"ab","snap":"s","seq":9,"part":1,"last":true,"entries":[{"device":"d","key":"b","value":1},{"device":"d","key":"a","value":1}]}`,
		`{"edge":"e1","inc":"ab","seq":10,"first":3,"streaming":true}`,
		`{"edge":"../x","inc":"ab","seq":1}`,
		`{"changes":[{"cseq":18446744073709551615}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if m, changes, err := DecodeBackupChanges(data); err == nil {
			if uint64(len(changes)) != m.To-m.From+1 {
				t.Fatalf("accepted %d changes for %d..%d", len(changes), m.From, m.To)
			}
			for i := range changes {
				if err := changes[i].Validate(); err != nil {
					t.Fatalf("accepted an invalid change: %v", err)
				}
			}
		}
		if p, err := DecodeBackupSnapshotPart(data); err == nil {
			for i := range p.Entries {
				if err := p.Entries[i].Validate(); err != nil {
					t.Fatalf("accepted an invalid entry: %v", err)
				}
			}
		}
		_, _ = DecodeBackupHello(data)
		var req BackupRequest
		_ = DecodeStrict(data, &req)
	})
}

// FuzzBackupReader feeds the reader of latest.json and of the master's
// restore stream: no panic, and whatever it accepts can be written back
// with BackupWriter and read again to the same entries.
func FuzzBackupReader(f *testing.F) {
	for _, s := range []string{
		`{"edge":"e1","seq":3,"taken_at":"2026-01-01T00:00:00.000Z","entries":[{"device":"d","key":"a","value":1,"ts":null},{"device":"d","key":"b/c","value":"x","ts":5}]}`,
		`{"edge":"e1","incarnation":"ab","seq":3,"taken_at":"t","devices":[{"device":"d","last_seq":9}],"entries":[]}`,
		`{"entries":[{"device":"d","key":"a","value":{"x":[1,{"y":null}]}}],"edge":"e1","taken_at":"t","extra":{"a":[1]}}`,
		`{"edge":"e1","seq":1,"taken_at":"t","entries":[{"device":"d","key":"b","value":1},{"device":"d","key":"a","value":1}]}`,
		`{"edge":"e1","seq":1,"taken_at":"t","entries":[{"device":"d","key":"a","value":1}]}trailing`,
		`{"edge":"e1","seq":-1}`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, devices, hdr, err := readAll(bytes.NewReader(data))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		bw, err := NewBackupWriter(&buf, hdr, devices)
		if err != nil {
			t.Fatal(err)
		}
		for i := range entries {
			if err := bw.Entry(&entries[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := bw.Close(); err != nil {
			t.Fatal(err)
		}
		again, devAgain, hdrAgain, err := readAll(&buf)
		if err != nil {
			t.Fatalf("rewritten document does not read back: %v\n%s", err, buf.Bytes())
		}
		if len(again) != len(entries) || len(devAgain) != len(devices) || hdrAgain != hdr {
			t.Fatalf("round trip changed the document: %d/%d entries, %d/%d devices, %+v/%+v", len(again), len(entries), len(devAgain), len(devices), hdrAgain, hdr)
		}
	})
}

func readAll(r io.Reader) ([]BackupEntry, []DeviceSeq, BackupHeader, error) {
	br, err := NewBackupReader(r)
	if err != nil {
		return nil, nil, BackupHeader{}, err
	}
	var entries []BackupEntry
	devices := []DeviceSeq{}
	for {
		kind, err := br.Next()
		if errors.Is(err, io.EOF) {
			return entries, devices, br.Header, nil
		}
		if err != nil {
			return nil, nil, BackupHeader{}, err
		}
		if kind == BackupItemEntry {
			entries = append(entries, br.Entry)
		} else {
			devices = append(devices, br.Device)
		}
	}
}
