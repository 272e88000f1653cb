package s3store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// Snapshot compression (Options.Compression, the master's --s3-compress).
const (
	CompressZstd = "zstd" // snap/{seq}.json.zst, the default
	CompressNone = "none" // snap/{seq}.json
)

// Snapshot object names end in one of these; a reader decodes by the name,
// so snapshots of either kind (and those written before compression
// existed) restore whatever the reader's own setting.
const (
	extPlain = ".json"
	extZstd  = ".json.zst"
)

// Bounds on reading a compressed snapshot, so that a corrupt or hostile
// object cannot make a reader allocate or stream without limit:
//   - the zstd window (what a streaming decoder holds) is at most
//     maxZstdWindow; our encoder uses 8 MiB;
//   - the document may be at most maxExpansion times the object's size
//     (plus expansionSlack). Our writer stores a snapshot that would
//     exceed this as plain .json, so every snapshot it writes reads back.
const (
	maxZstdWindow  = 32 << 20
	maxExpansion   = 256
	expansionSlack = 1 << 20
)

// ErrCorrupt: a snapshot object does not decode (bad zstd frame, checksum
// mismatch, or it expands beyond the bound).
var ErrCorrupt = errors.New("s3store: corrupt snapshot object")

func expansionLimit(compressed int64) int64 {
	return compressed*maxExpansion + expansionSlack
}

// ParseCompression checks a --s3-compress value ("" is the default, zstd).
func ParseCompression(s string) (string, error) {
	switch s {
	case "", CompressZstd:
		return CompressZstd, nil
	case CompressNone:
		return CompressNone, nil
	}
	return "", fmt.Errorf("snapshot compression %q: want zstd or none", s)
}

// snapshotName is snap/{seq:020d}.json or .json.zst, relative to the
// incarnation's directory (as the manifest records it).
func snapshotName(seq uint64, ext string) string {
	return fmt.Sprintf("snap/%020d%s", seq, ext)
}

// parseSnapshotName reads a name snapshotName makes.
func parseSnapshotName(name string) (seq uint64, ext string, ok bool) {
	n, found := strings.CutPrefix(name, "snap/")
	if !found {
		return 0, "", false
	}
	for _, e := range []string{extZstd, extPlain} {
		if digits, found := strings.CutSuffix(n, e); found && len(digits) == 20 {
			seq, err := strconv.ParseUint(digits, 10, 64)
			return seq, e, err == nil
		}
	}
	return 0, "", false
}

// snapshotKey is the object a restore of manifest m starts from ("" when
// m has no snapshot). A manifest names its snapshot; one that does not
// (older versions could write none) means the plain .json.
func (s *Store) snapshotKey(m Manifest) (string, error) {
	if m.SnapSeq == 0 {
		return "", nil
	}
	if m.Snapshot == "" {
		return s.SnapshotKey(m.Edge, m.Incarnation, m.SnapSeq), nil
	}
	seq, _, ok := parseSnapshotName(m.Snapshot)
	if !ok || seq != m.SnapSeq {
		return "", fmt.Errorf("s3store: manifest of %s/%s names snapshot %q: want snap/%020d.json or .json.zst",
			m.Edge, m.Incarnation, m.Snapshot, m.SnapSeq)
	}
	return s.incDir(m.Edge, m.Incarnation) + m.Snapshot, nil
}

// openSnapshot streams the backup document in snapshot object key,
// decompressing a .json.zst as it is read.
func (s *Store) openSnapshot(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, size, err := s.open(ctx, "snapshot", key)
	if err != nil {
		return nil, err
	}
	if !strings.HasSuffix(key, extZstd) {
		return rc, nil
	}
	zr, err := newSnapshotDecoder(rc, key, size)
	if err != nil {
		rc.Close()
		return nil, err
	}
	return zr, nil
}

// newSnapshotEncoder compresses a snapshot: the default level (about 3 of
// the reference zstd), one goroutine (compaction must not take the cores
// the stream needs), an 8 MiB window and a checksum per frame.
func newSnapshotEncoder(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(8<<20), zstd.WithEncoderCRC(true))
}

// snapshotDecoder decompresses one .json.zst object within the bounds
// above; its errors name the object and wrap ErrCorrupt.
type snapshotDecoder struct {
	body  io.ReadCloser
	dec   *zstd.Decoder
	key   string
	size  int64 // the object's
	n     int64 // decompressed bytes returned
	limit int64
	err   error
}

func newSnapshotDecoder(body io.ReadCloser, key string, size int64) (*snapshotDecoder, error) {
	dec, err := zstd.NewReader(body,
		zstd.WithDecoderConcurrency(1), // synchronous: no goroutines, one block in flight
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(maxZstdWindow),
		zstd.WithDecoderMaxMemory(maxZstdWindow))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: zstd: %w", ErrCorrupt, key, err)
	}
	return &snapshotDecoder{body: body, dec: dec, key: key, size: size, limit: expansionLimit(size)}, nil
}

func (d *snapshotDecoder) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if room := d.limit - d.n + 1; int64(len(p)) > room {
		p = p[:room] // one byte past the limit tells "too big" from "exactly the limit"
	}
	n, err := d.dec.Read(p)
	d.n += int64(n)
	switch {
	case d.n > d.limit:
		d.err = fmt.Errorf("%w: %s expands beyond %d bytes (%d× its %d bytes, plus 1 MiB): refusing to read on",
			ErrCorrupt, d.key, d.limit, maxExpansion, d.size)
		return n - int(d.n-d.limit), d.err
	case err != nil && !errors.Is(err, io.EOF):
		d.err = fmt.Errorf("%w: %s: zstd: %w", ErrCorrupt, d.key, err)
		return n, d.err
	}
	return n, err
}

func (d *snapshotDecoder) Close() error {
	d.dec.Close()
	return d.body.Close()
}

// snapFile spools a snapshot document into a temporary file, compressed
// when the store compresses, so that it can be stored with one PUT of a
// known size. Memory does not grow with the document.
type snapFile struct {
	f     *os.File
	buf   *bufio.Writer // over f
	zw    *zstd.Encoder // over buf; nil: plain
	plain int64         // document bytes written
}

func (s *Store) newSnapFile(pattern string) (*snapFile, error) {
	f, err := os.CreateTemp("", pattern)
	if err != nil {
		return nil, fmt.Errorf("s3store: snapshot spool: %w", err)
	}
	sf := &snapFile{f: f, buf: bufio.NewWriterSize(f, 256<<10)}
	if s.compress == CompressZstd {
		if sf.zw, err = newSnapshotEncoder(sf.buf); err != nil {
			sf.remove()
			return nil, fmt.Errorf("s3store: snapshot spool: %w", err)
		}
	}
	return sf, nil
}

func (sf *snapFile) Write(p []byte) (int, error) {
	var n int
	var err error
	if sf.zw != nil {
		n, err = sf.zw.Write(p)
	} else {
		n, err = sf.buf.Write(p)
	}
	sf.plain += int64(n)
	if err != nil {
		return n, fmt.Errorf("s3store: snapshot spool: %w", err)
	}
	return n, nil
}

// finish ends the document and returns the name's extension and the
// object's size. A compressed document that would expand beyond what a
// reader accepts, or that compression did not make smaller, is stored
// plain instead.
func (sf *snapFile) finish() (ext string, size int64, err error) {
	if sf.zw != nil {
		if err := sf.zw.Close(); err != nil {
			return "", 0, fmt.Errorf("s3store: snapshot spool: zstd: %w", err)
		}
	}
	if err := sf.buf.Flush(); err != nil {
		return "", 0, fmt.Errorf("s3store: snapshot spool: %w", err)
	}
	if size, err = sf.f.Seek(0, io.SeekCurrent); err != nil {
		return "", 0, fmt.Errorf("s3store: snapshot spool: %w", err)
	}
	if sf.zw == nil {
		return extPlain, size, nil
	}
	if sf.plain <= expansionLimit(size) && size < sf.plain {
		return extZstd, size, nil
	}
	if err := sf.decompress(size); err != nil {
		return "", 0, err
	}
	return extPlain, sf.plain, nil
}

// decompress replaces the spooled .zst with the plain document.
func (sf *snapFile) decompress(size int64) error {
	plain, err := os.CreateTemp("", "iotkv-snap-plain-*.json")
	if err != nil {
		return fmt.Errorf("s3store: snapshot spool: %w", err)
	}
	dec, err := zstd.NewReader(io.NewSectionReader(sf.f, 0, size), zstd.WithDecoderConcurrency(1))
	if err == nil {
		_, err = io.Copy(plain, dec)
		dec.Close()
	}
	if err != nil {
		plain.Close()
		os.Remove(plain.Name())
		return fmt.Errorf("s3store: snapshot spool: read back: %w", err)
	}
	sf.remove()
	sf.f = plain
	return nil
}

func (sf *snapFile) remove() {
	if sf.f != nil {
		_ = sf.f.Close()
		_ = os.Remove(sf.f.Name())
		sf.f = nil
	}
}
