package device

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// Record types of the queue log. Every change to the queue's state is one
// record, and replaying the records in order through the same apply
// functions rebuilds exactly the state the process had (coalescing
// included), so a snapshot is written with the same record types.
const (
	recState  byte = 1 // nextSeq, nextOpID, acked, synced: first record of a snapshot
	recOp     byte = 2 // id, flags, ts, key, value: an op appended
	recBatch  byte = 3 // seq, lastOpID, count: the live pending ops up to lastOpID form batch seq
	recAck    byte = 4 // seq: the edge applied every batch up to seq
	recReject byte = 5 // seq: the edge refused batch seq
	recSync   byte = 6 // seq: the edge's last seq seen on connect (renumbers when it is ahead)
)

const (
	flagDel byte = 1 << 0
	flagTS  byte = 1 << 1
	flagTTL byte = 1 << 2
)

// headerSize is the record header: payload length and CRC-32C of the
// payload, both little-endian uint32. The payload starts with the type byte.
const headerSize = 8

// maxRecord bounds a record's payload: a key, a 64 KiB value (the edge's
// limit is far below this) and the varints.
const maxRecord = 16 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errCorrupt = errors.New("corrupt record")

// appendRecord appends a framed record of type typ with the given body to
// dst.
func appendRecord(dst []byte, typ byte, body []byte) []byte {
	n := 1 + len(body)
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0, typ)
	dst = append(dst, body...)
	binary.LittleEndian.PutUint32(dst[start:], uint32(n))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(dst[start+headerSize:], castagnoli))
	return dst
}

// nextRecord parses the record at the start of data. It returns the type,
// the body and the bytes the record occupies; errCorrupt for a torn or
// damaged record.
func nextRecord(data []byte) (typ byte, body []byte, size int, err error) {
	if len(data) < headerSize+1 {
		return 0, nil, 0, errCorrupt
	}
	n := int(binary.LittleEndian.Uint32(data))
	if n < 1 || n > maxRecord || len(data) < headerSize+n {
		return 0, nil, 0, errCorrupt
	}
	payload := data[headerSize : headerSize+n]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(data[4:]) {
		return 0, nil, 0, errCorrupt
	}
	return payload[0], payload[1:], headerSize + n, nil
}

// decoder reads varints and length-prefixed strings from a record body.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.err = errCorrupt
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil || uint64(len(d.b)) < n {
		d.err = errCorrupt
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func appendBytes(dst, v []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	return append(dst, v...)
}
