package s3store

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/iotkv/iotkv"
)

// FuzzSnapshotDecoder feeds the reader of snapshot objects. As a .json.zst
// object, any input must fail or decode within the expansion bound, never
// panic, and what it decodes goes through the backup document reader. As a
// document, it must come back byte for byte through our encoder and the
// decoder, and the backup reader must judge it the same either way.
func FuzzSnapshotDecoder(f *testing.F) {
	docs := []string{
		`{"edge":"e1","incarnation":"ab","seq":3,"taken_at":"2026-01-01T00:00:00.000Z",` + "\n" +
			`"devices":[{"device":"d","last_seq":9}],` + "\n" + `"entries":[` + "\n" +
			`{"device":"d","key":"a","value":{"temp":21.5},"ts":null},` + "\n" + `{"device":"d","key":"b/c","value":"x","ts":5}` + "\n]}\n",
		`{"edge":"e1","seq":1,"taken_at":"t","entries":[{"device":"d","key":"b","value":1},{"device":"d","key":"a","value":1}]}`,
		`{"edge":"e1"`,
		``,
	}
	for _, d := range docs {
		f.Add([]byte(d))
		z := zstdBytes(f, []byte(d))
		f.Add(z)
		if len(z) > 8 {
			cut := bytes.Clone(z[:len(z)-5])
			f.Add(cut)
			flipped := bytes.Clone(z)
			flipped[len(flipped)/2] ^= 0x55
			f.Add(flipped)
		}
	}
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0x01, 0x00, 0x00}) // a 1 GiB window
	f.Fuzz(func(t *testing.T, data []byte) {
		// data as a compressed object.
		d, err := newSnapshotDecoder(io.NopCloser(bytes.NewReader(data)), "snap/x.json.zst", int64(len(data)))
		if err == nil {
			counted := &countReader{r: d}
			if br, err := iotkv.NewBackupReader(counted); err == nil {
				for {
					if _, err := br.Next(); err != nil {
						break
					}
				}
			}
			_, err = io.Copy(io.Discard, counted)
			if counted.n > expansionLimit(int64(len(data))) {
				t.Fatalf("%d bytes decoded from %d, beyond the bound", counted.n, len(data))
			}
			if err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("a decoding error that is not ErrCorrupt: %v", err)
			}
			d.Close()
		} else if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("a decoding error that is not ErrCorrupt: %v", err)
		}

		// data as a document, through the encoder and back.
		z := zstdBytes(t, data)
		d, err = newSnapshotDecoder(io.NopCloser(bytes.NewReader(z)), "snap/x.json.zst", int64(len(z)))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		back, err := io.ReadAll(d)
		if err != nil || !bytes.Equal(back, data) {
			t.Fatalf("round trip: %d bytes, %v; want the %d given", len(back), err, len(data))
		}
		d2, _ := newSnapshotDecoder(io.NopCloser(bytes.NewReader(z)), "snap/x.json.zst", int64(len(z)))
		defer d2.Close()
		plainN, plainErr := readEntries(bytes.NewReader(data))
		zstdN, zstdErr := readEntries(d2)
		if plainN != zstdN || (plainErr == nil) != (zstdErr == nil) {
			t.Fatalf("plain: %d entries, %v; through zstd: %d entries, %v", plainN, plainErr, zstdN, zstdErr)
		}
	})
}

// encoders are reused: a new one per input would make the fuzzer measure
// its allocation.
var encoders = sync.Pool{New: func() any { zw, _ := newSnapshotEncoder(nil); return zw }}

func zstdBytes(tb testing.TB, data []byte) []byte {
	var b bytes.Buffer
	zw := encoders.Get().(*zstd.Encoder)
	defer encoders.Put(zw)
	zw.Reset(&b)
	_, err := zw.Write(data)
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

func readEntries(r io.Reader) (int, error) {
	br, err := iotkv.NewBackupReader(r)
	if err != nil {
		return 0, err
	}
	for {
		if _, err := br.Next(); errors.Is(err, io.EOF) {
			return br.Entries(), nil
		} else if err != nil {
			return br.Entries(), err
		}
	}
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
