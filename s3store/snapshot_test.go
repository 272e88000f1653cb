package s3store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

func testStore(t *testing.T, s3 *testenv.S3, prefix, compress string) *Store {
	t.Helper()
	st, err := Open(Options{URL: s3.URL(prefix), Endpoint: s3.Endpoint, Creds: s3.Creds(), RequestTimeout: 5 * time.Second, Compression: compress})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// testChain writes segments of changes to two devices and keeps the state
// they make.
type testChain struct {
	t       *testing.T
	edge    string
	inc     string
	next    uint64
	want    map[string]string // device/key -> value
	devices map[string]uint64
}

func newTestChain(t *testing.T, inc string) *testChain {
	return &testChain{t: t, edge: "e1", inc: inc, next: 1, want: map[string]string{}, devices: map[string]uint64{}}
}

// segment stores n changes: puts of k0..k39 (JSON objects alike but for a
// number, as sensor readings are), every seventh a delete.
func (c *testChain) segment(st *Store, n int) {
	c.t.Helper()
	var b bytes.Buffer
	first := c.next
	for i := 0; i < n; i++ {
		seq := c.next
		c.next++
		dev := fmt.Sprintf("d%d", seq%2+1)
		ch := iotkv.Change{Seq: seq, Device: dev, Key: fmt.Sprintf("sensors/k%d", seq%40), Op: iotkv.OpPut, UpdatedAt: 1, DeviceSeq: seq}
		if seq%7 == 0 {
			ch.Op = iotkv.OpDel
			delete(c.want, dev+"/"+ch.Key)
		} else {
			ch.Value = json.RawMessage(fmt.Sprintf(`{"temp":%d.%d,"unit":"C","ok":true}`, 20+seq%10, seq%10))
			c.want[dev+"/"+ch.Key] = string(ch.Value)
		}
		c.devices[dev] = seq
		line, _ := json.Marshal(ch)
		b.Write(append(line, '\n'))
	}
	if _, _, err := st.PutSegment(context.Background(), c.edge, c.inc, first, c.next-1, b.Bytes()); err != nil {
		c.t.Fatal(err)
	}
}

// restore reads the state with WriteState and compares it to the chain's.
func (c *testChain) restore(st *Store) {
	c.t.Helper()
	var buf bytes.Buffer
	h, err := st.WriteState(context.Background(), &buf, c.edge, "")
	if err != nil {
		c.t.Fatal(err)
	}
	br, err := iotkv.NewBackupReader(&buf)
	if err != nil {
		c.t.Fatal(err)
	}
	got, devs := map[string]string{}, map[string]uint64{}
	for {
		kind, err := br.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			c.t.Fatal(err)
		}
		if kind == iotkv.BackupItemDevice {
			devs[br.Device.Device] = br.Device.LastSeq
		} else {
			got[br.Entry.Device+"/"+br.Entry.Key] = string(br.Entry.Value)
		}
	}
	if h.Seq != c.next-1 || br.Header.Seq != h.Seq {
		c.t.Fatalf("restored seq %d (document %d), want %d", h.Seq, br.Header.Seq, c.next-1)
	}
	if len(got) != len(c.want) || len(devs) != len(c.devices) {
		c.t.Fatalf("restored %d keys and %d devices, want %d and %d", len(got), len(devs), len(c.want), len(c.devices))
	}
	for k, v := range c.want {
		if got[k] != v {
			c.t.Fatalf("%s restored as %q, want %q", k, got[k], v)
		}
	}
	for d, seq := range c.devices {
		if devs[d] != seq {
			c.t.Fatalf("device %s last seq %d, want %d", d, devs[d], seq)
		}
	}
}

func (c *testChain) compact(st *Store) Manifest {
	c.t.Helper()
	seq, _, err := st.Compact(context.Background(), c.edge, c.inc)
	if err != nil || seq != c.next-1 {
		c.t.Fatalf("compact: seq %d, err %v; want %d", seq, err, c.next-1)
	}
	m, _, err := st.ReadManifest(context.Background(), c.edge, c.inc)
	if err != nil || m.SnapSeq != seq {
		c.t.Fatalf("manifest %+v, %v", m, err)
	}
	return m
}

func (c *testChain) snapshots(st *Store) []string {
	c.t.Helper()
	p := st.incDir(c.edge, c.inc)
	keys, err := st.list(context.Background(), p+"snap/", false)
	if err != nil {
		c.t.Fatal(err)
	}
	for i := range keys {
		keys[i] = strings.TrimPrefix(keys[i], p)
	}
	slices.Sort(keys)
	return keys
}

func TestAZstdSnapshotPlusSegmentsRestoresAndCompactsAgain(t *testing.T) {
	s3 := testenv.StartS3(t)
	st := testStore(t, s3, "zst", "") // the default
	c := newTestChain(t, "inc1")
	c.segment(st, 60)
	c.segment(st, 60)
	m := c.compact(st)
	if m.Snapshot != "snap/00000000000000000120.json.zst" {
		t.Fatalf("manifest names %q, want the .json.zst", m.Snapshot)
	}
	info, err := st.stat(context.Background(), "snapshot", st.incDir("e1", "inc1")+m.Snapshot)
	if err != nil || info.ContentType != "application/zstd" {
		t.Fatalf("snapshot object: %+v %v", info.ContentType, err)
	}
	// Segments after the snapshot: the restore reads both.
	c.segment(st, 25)
	c.segment(st, 10)
	c.restore(st)
	// Compaction reads the compressed snapshot; the one after it trims
	// the first.
	c.compact(st)
	c.restore(st)
	c.segment(st, 5)
	c.compact(st)
	c.restore(st)
	if got, want := c.snapshots(st), []string{"snap/00000000000000000155.json.zst", "snap/00000000000000000160.json.zst"}; !slices.Equal(got, want) {
		t.Fatalf("snapshots after trimming: %v, want %v", got, want)
	}
	// The edge's restore with no master reads the same through OpenState.
	rc := st.OpenState(context.Background(), "e1")
	defer rc.Close()
	br, err := iotkv.NewBackupReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := br.Next(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if br.Entries() != len(c.want) {
		t.Fatalf("OpenState: %d entries, want %d", br.Entries(), len(c.want))
	}
}

func TestALegacyPlainSnapshotStillRestores(t *testing.T) {
	s3 := testenv.StartS3(t)
	ctx := context.Background()
	old := testStore(t, s3, "legacy", CompressNone) // as written before compression
	c := newTestChain(t, "inc1")
	c.segment(old, 50)
	m := c.compact(old)
	if m.Snapshot != "snap/00000000000000000050.json" {
		t.Fatalf("manifest names %q, want the plain .json", m.Snapshot)
	}
	c.segment(old, 20)
	st := testStore(t, s3, "legacy", CompressZstd)
	c.restore(st)

	// A manifest that names no snapshot object means the .json.
	m, etag, err := st.ReadManifest(ctx, "e1", "inc1")
	if err != nil {
		t.Fatal(err)
	}
	m.Snapshot = ""
	body, _ := json.Marshal(m)
	if _, err := st.put(ctx, "manifest", st.manifestKey("e1", "inc1"), body, etag, nil); err != nil {
		t.Fatal(err)
	}
	c.restore(st)

	// A zstd master compacts on top of it: it reads the .json, writes
	// .json.zst, and both kinds restore until the older is trimmed.
	m = c.compact(st)
	if m.Snapshot != "snap/00000000000000000070.json.zst" {
		t.Fatalf("manifest names %q after compaction, want the .json.zst", m.Snapshot)
	}
	c.restore(old)
	c.segment(st, 3)
	c.compact(st)
	c.restore(old)
	if got, want := c.snapshots(st), []string{"snap/00000000000000000070.json.zst", "snap/00000000000000000073.json.zst"}; !slices.Equal(got, want) {
		t.Fatalf("snapshots after trimming: %v, want %v", got, want)
	}
}

func TestACorruptZstdSnapshotFailsTheRestoreLoudly(t *testing.T) {
	s3 := testenv.StartS3(t)
	ctx := context.Background()
	st := testStore(t, s3, "corrupt", "")
	c := newTestChain(t, "inc1")
	c.segment(st, 80)
	m := c.compact(st)
	c.segment(st, 5)
	key := st.incDir("e1", "inc1") + m.Snapshot
	good, _, err := st.get(ctx, "snapshot", key)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0xff
	// 64 MiB of one string in a document's header: a few hundred bytes
	// of zstd that would make a JSON decoder buffer it all.
	var bomb bytes.Buffer
	zw, _ := newSnapshotEncoder(&bomb)
	fmt.Fprintf(zw, `{"edge":"e1","seq":80,"taken_at":"t","x":"`)
	_, _ = zw.Write(bytes.Repeat([]byte("a"), 64<<20))
	fmt.Fprint(zw, `"}`)
	_ = zw.Close()

	tests := []struct {
		name string
		body []byte
		want string
	}{
		{"a flipped byte", flipped, "zstd"},
		{"a cut object", good[:len(good)-9], "zstd"},
		{"not zstd at all", []byte(`{"edge":"e1"}`), "zstd"},
		{"a small object that expands without bound", bomb.Bytes(), "expands beyond"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := st.put(ctx, "snapshot", key, tc.body, "", nil); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			_, err := st.WriteState(ctx, &buf, "e1", "")
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), m.Snapshot) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("restore from %s: %v; want ErrCorrupt naming %s and %q", tc.name, err, m.Snapshot, tc.want)
			}
			if buf.Len() != 0 {
				t.Fatalf("%d bytes of a document were written before the failure", buf.Len())
			}
			// The restore stream fails instead of ending early; compaction
			// fails and leaves the manifest.
			if _, err := io.Copy(io.Discard, st.OpenState(ctx, "e1")); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("OpenState: %v, want ErrCorrupt", err)
			}
			if seq, _, err := st.Compact(ctx, "e1", "inc1"); !errors.Is(err, ErrCorrupt) || seq != m.SnapSeq {
				t.Fatalf("compact over a corrupt snapshot: %d %v", seq, err)
			}
		})
	}
	if _, err := st.put(ctx, "snapshot", key, good, "", nil); err != nil {
		t.Fatal(err)
	}
	c.restore(st)
}

func TestZstdDecoderRefusesAWindowBeyondTheBound(t *testing.T) {
	// A frame header asking for a 1 GiB window (window descriptor:
	// exponent 20 → 2^30), then a raw block.
	frame := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0x01, 0x00, 0x00}
	d, err := newSnapshotDecoder(io.NopCloser(bytes.NewReader(frame)), "snap/x.json.zst", int64(len(frame)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := io.ReadAll(d); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "window") {
		t.Fatalf("a 1 GiB window: %v, want ErrCorrupt about the window", err)
	}
}

func TestASnapshotThatWouldNotReadBackIsStoredPlain(t *testing.T) {
	st := &Store{compress: CompressZstd}
	doc := func(value string, n int) []byte {
		var b bytes.Buffer
		bw, _ := iotkv.NewBackupWriter(&b, iotkv.BackupHeader{Edge: "e1", Seq: 1, TakenAt: "t"}, []iotkv.DeviceSeq{})
		for i := 0; i < n; i++ {
			_ = bw.Entry(&iotkv.BackupEntry{Device: "d", Key: fmt.Sprintf("k%06d", i), Value: json.RawMessage(value)})
		}
		_ = bw.Close()
		return b.Bytes()
	}
	tests := []struct {
		name    string
		doc     []byte
		wantExt string
	}{
		{"readings compress", doc(`{"temp":21.5,"unit":"C"}`, 10000), extZstd},
		{"the same 60 KiB value a hundred times expands too much", doc(`"`+strings.Repeat("x", 60<<10)+`"`, 100), extPlain},
		{"an empty document gains nothing", doc(`1`, 0), extPlain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sf, err := st.newSnapFile("iotkv-test-*")
			if err != nil {
				t.Fatal(err)
			}
			defer sf.remove()
			if _, err := sf.Write(tc.doc); err != nil {
				t.Fatal(err)
			}
			ext, size, err := sf.finish()
			if err != nil || ext != tc.wantExt {
				t.Fatalf("finish: %q %v, want %q", ext, err, tc.wantExt)
			}
			stored, err := os.ReadFile(sf.f.Name())
			if err != nil || int64(len(stored)) != size {
				t.Fatalf("spool: %d bytes, size %d, %v", len(stored), size, err)
			}
			var r io.Reader = bytes.NewReader(stored)
			if ext == extZstd {
				d, err := newSnapshotDecoder(io.NopCloser(r), "snap/x"+ext, size)
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				r = d
				t.Logf("%d bytes → %d (%.1f×)", len(tc.doc), size, float64(len(tc.doc))/float64(size))
			}
			back, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(back, tc.doc) {
				t.Fatalf("read back %d bytes (%v), want the %d written", len(back), err, len(tc.doc))
			}
		})
	}
}

func TestARestoreOverlappingCompactionsStartsAgainFromTheNewSnapshot(t *testing.T) {
	s3 := testenv.StartS3(t)
	ctx := context.Background()
	st := testStore(t, s3, "moved", "")
	c := newTestChain(t, "inc1")
	c.segment(st, 10)
	c.segment(st, 10)
	c.compact(st)
	c.segment(st, 10)
	// A restore reads this manifest; two compactions happen before it
	// gets to the objects: the second trims the segments and snapshot
	// it names.
	stale, _, err := st.ReadManifest(ctx, "e1", "inc1")
	if err != nil {
		t.Fatal(err)
	}
	c.compact(st)
	c.segment(st, 10)
	c.compact(st)
	var buf bytes.Buffer
	if _, err := st.writeStateAt(ctx, &buf, stale, nil, nil); !errors.Is(err, ErrGap) && !errors.Is(err, ErrNotFound) {
		t.Fatalf("reading a trimmed manifest's objects: %v, want a gap or not found", err)
	}
	buf.Reset()
	h, err := st.writeState(ctx, &buf, stale)
	if err != nil || h.Seq != c.next-1 {
		t.Fatalf("restore from a manifest compaction moved on: seq %d, %v; want %d", h.Seq, err, c.next-1)
	}
	c.restore(st)
}

// TestSnapshotOf10000KeysCompresses measures what --s3-compress saves: the
// same 10,000 keys (10 devices, sensor-like JSON readings with varying
// numbers, each key written once) compacted by a plain and a zstd store.
// The README quotes its log line.
func TestSnapshotOf10000KeysCompresses(t *testing.T) {
	s3 := testenv.StartS3(t)
	ctx := context.Background()
	rnd := rand.New(rand.NewPCG(1, 2))
	var segs [][]byte
	var b bytes.Buffer
	for seq := uint64(1); seq <= 10000; seq++ {
		dev := fmt.Sprintf("dev-%02d", seq%10)
		ts := int64(1764000000000 + seq*250)
		ch := iotkv.Change{Seq: seq, Device: dev, Key: fmt.Sprintf("site/floor-%d/room-%03d/sensor-%d", seq%7, seq/10%100, seq/1000),
			Op: iotkv.OpPut, TS: &ts, UpdatedAt: ts, DeviceSeq: seq/10 + 1,
			Value: json.RawMessage(fmt.Sprintf(`{"temp":%.2f,"hum":%.1f,"co2":%d,"battery":%d,"ok":%t}`,
				18+rnd.Float64()*8, 30+rnd.Float64()*40, 400+rnd.IntN(800), rnd.IntN(101), rnd.IntN(20) > 0))}
		line, _ := json.Marshal(ch)
		b.Write(append(line, '\n'))
		if seq%1000 == 0 {
			segs = append(segs, bytes.Clone(b.Bytes()))
			b.Reset()
		}
	}
	size := map[string]int64{}
	for _, compress := range []string{CompressNone, CompressZstd} {
		st := testStore(t, s3, "size-"+compress, compress)
		for i, seg := range segs {
			first := uint64(i*1000 + 1)
			if _, _, err := st.PutSegment(ctx, "e1", "inc1", first, first+999, seg); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := st.Compact(ctx, "e1", "inc1"); err != nil {
			t.Fatal(err)
		}
		m, _, err := st.ReadManifest(ctx, "e1", "inc1")
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.stat(ctx, "snapshot", st.incDir("e1", "inc1")+m.Snapshot)
		if err != nil {
			t.Fatal(err)
		}
		size[compress] = info.Size
	}
	ratio := float64(size[CompressNone]) / float64(size[CompressZstd])
	t.Logf("snapshot of 10,000 keys: .json %d bytes, .json.zst %d bytes: %.1f× smaller (%.0f%% of the plain size)",
		size[CompressNone], size[CompressZstd], ratio, 100/ratio)
	if ratio < 3 {
		t.Fatalf("zstd saves only %.1f×", ratio)
	}
}
