// Package s3store keeps iotkv edge backups in S3-compatible object storage
// (AWS S3, MinIO, Ceph, versitygw). Objects per edge incarnation, under
// PREFIX/edges/{edge}/{incarnation}/:
//
//	seg/{firstSeq:020d}.jsonl  changes firstSeq..last, one per line; create-only
//	snap/{seq:020d}.json.zst   the full state at seq (a backup document), zstd;
//	                           or .json, plain (Options.Compression none); create-only
//	manifest.json              which snapshot restores start from; compare-and-swap
//	lease.json                 which master compacts; compare-and-swap
//
// Create-only (If-None-Match: *) means two writers can never fork the
// chain: the second gets 412 and reads what the first wrote. Every object
// we write names its writer (a random nonce per Store), so a 412 caused by
// the client retrying our own successful request is recognised as ours.
//
// The manifest names its snapshot object, and readers decode by that name,
// so plain and compressed snapshots (and those of versions before
// compression) restore alike.
//
// The package depends on the root iotkv package, minio-go and
// klauspost/compress (zstd) only; the master (writer) and the edge's
// restore (reader) both use it.
package s3store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
)

// Metadata names (sent as X-Amz-Meta-Iotkv-*).
const (
	metaWriter = "Iotkv-Writer"
	metaLast   = "Iotkv-Last"
)

// Sentinel errors.
var (
	// ErrConflict: a compare-and-swap lost (412) to another writer.
	ErrConflict = errors.New("s3store: object changed by another writer")
	// ErrNotFound: the object or backup does not exist.
	ErrNotFound = errors.New("s3store: not found")
	// ErrGap: the chain of segments has a hole; a restore would lose data.
	ErrGap = errors.New("s3store: gap in the backup chain")
)

// Options configure a Store.
type Options struct {
	URL      string // s3://BUCKET/PREFIX (PREFIX may be empty)
	Endpoint string // http(s)://host:port for MinIO/Ceph/versitygw (path-style); empty: AWS
	Region   string // default $AWS_REGION, then us-east-1
	// Creds override the standard chain (AWS_* environment, then the
	// shared credentials file).
	Creds    *credentials.Credentials
	Logger   *slog.Logger
	Registry prometheus.Registerer // nil: metrics are kept but not registered
	// RequestTimeout bounds one request, retries included. Default 10s.
	RequestTimeout time.Duration
	// Compression of the snapshots this Store writes: CompressZstd
	// (default, .json.zst) or CompressNone (.json). Reading takes either.
	Compression string
}

// Store is an open bucket/prefix. Safe for concurrent use.
type Store struct {
	c       *minio.Client
	bucket  string
	prefix  string // "" or ending in "/"
	nonce   string
	log     *slog.Logger
	timeout time.Duration
	m       *Metrics
	// compress is CompressZstd or CompressNone.
	compress string
}

// ParseURL splits s3://BUCKET/PREFIX.
func ParseURL(s string) (bucket, prefix string, err error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return "", "", fmt.Errorf("want s3://BUCKET/PREFIX, got %q", s)
	}
	prefix = strings.Trim(u.Path, "/")
	if prefix != "" {
		prefix += "/"
	}
	return u.Host, prefix, nil
}

// IsURL reports whether s names an S3 store.
func IsURL(s string) bool { return strings.HasPrefix(s, "s3://") }

// Open makes a client; it does not contact the server.
func Open(o Options) (*Store, error) {
	bucket, prefix, err := ParseURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	compress, err := ParseCompression(o.Compression)
	if err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	if o.Region == "" {
		o.Region = cmpOr(os.Getenv("AWS_REGION"), os.Getenv("AWS_DEFAULT_REGION"), "us-east-1")
	}
	creds := o.Creds
	if creds == nil {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{}, &credentials.FileAWSCredentials{},
		})
	}
	host, secure, lookup := "s3.amazonaws.com", true, minio.BucketLookupAuto
	if o.Endpoint != "" {
		u, err := url.Parse(o.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("s3store: endpoint %q: want http(s)://host:port", o.Endpoint)
		}
		host, secure, lookup = u.Host, u.Scheme == "https", minio.BucketLookupPath
	}
	c, err := minio.New(host, &minio.Options{Creds: creds, Secure: secure, Region: o.Region, BucketLookup: lookup})
	if err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	var n [8]byte
	_, _ = rand.Read(n[:])
	m := newMetrics()
	if o.Registry != nil {
		if err := m.Register(o.Registry); err != nil {
			return nil, err
		}
	}
	return &Store{c: c, bucket: bucket, prefix: prefix, nonce: hex.EncodeToString(n[:]), log: o.Logger, timeout: o.RequestTimeout, m: m,
		compress: compress}, nil
}

func cmpOr(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// Nonce identifies this Store's writes.
func (s *Store) Nonce() string { return s.nonce }

// Metrics are the store's counters.
func (s *Store) Metrics() *Metrics { return s.m }

// String is the store's URL.
func (s *Store) String() string { return "s3://" + s.bucket + "/" + s.prefix }

// Ping checks that the bucket is reachable.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ok, err := s.c.BucketExists(ctx, s.bucket)
	s.m.observe("head_bucket", err)
	if err != nil {
		return fmt.Errorf("s3store: %s: %w", s, err)
	}
	if !ok {
		return fmt.Errorf("s3store: bucket %s does not exist", s.bucket)
	}
	return nil
}

func (s *Store) incDir(edge, inc string) string {
	return s.prefix + "edges/" + edge + "/" + inc + "/"
}

// SegmentKey is edges/{edge}/{inc}/seg/{first:020d}.jsonl under the prefix.
func (s *Store) SegmentKey(edge, inc string, first uint64) string {
	return fmt.Sprintf("%sseg/%020d.jsonl", s.incDir(edge, inc), first)
}

// SnapshotKey is edges/{edge}/{inc}/snap/{seq:020d}.json under the prefix:
// a plain snapshot (the compressed one adds .zst; the manifest names which).
func (s *Store) SnapshotKey(edge, inc string, seq uint64) string {
	return s.incDir(edge, inc) + snapshotName(seq, extPlain)
}

// snapExt is the extension of the snapshots this Store writes.
func (s *Store) snapExt() string {
	if s.compress == CompressZstd {
		return extZstd
	}
	return extPlain
}

func (s *Store) manifestKey(edge, inc string) string { return s.incDir(edge, inc) + "manifest.json" }
func (s *Store) leaseKey(edge, inc string) string    { return s.incDir(edge, inc) + "lease.json" }

func isStatus(err error, code int) bool {
	return err != nil && minio.ToErrorResponse(err).StatusCode == code
}

// put writes an object. cond: "" unconditional, "*" create-only, else
// If-Match that ETag. A lost condition is ErrConflict.
func (s *Store) put(ctx context.Context, kind, key string, body []byte, cond string, meta map[string]string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	opts := minio.PutObjectOptions{UserMetadata: meta, ContentType: "application/json", DisableMultipart: true, SendContentMd5: true}
	switch cond {
	case "":
	case "*":
		opts.SetMatchETagExcept("*")
	default:
		opts.SetMatchETag(cond)
	}
	info, err := s.c.PutObject(ctx, s.bucket, key, bytes.NewReader(body), int64(len(body)), opts)
	s.m.observe("put_"+kind, err)
	if err == nil {
		s.m.bytes.WithLabelValues(kind).Add(float64(len(body)))
		return info.ETag, nil
	}
	if isStatus(err, http.StatusPreconditionFailed) {
		return "", ErrConflict
	}
	return "", fmt.Errorf("s3store: put %s: %w", key, err)
}

// putFile writes a file create-only; it reports whether the object existed.
func (s *Store) putFile(ctx context.Context, kind, key string, f *os.File, size int64, meta map[string]string) (existed bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*s.timeout)
	defer cancel()
	opts := minio.PutObjectOptions{UserMetadata: meta, ContentType: "application/json", DisableMultipart: true}
	if strings.HasSuffix(key, extZstd) {
		opts.ContentType = "application/zstd"
	}
	opts.SetMatchETagExcept("*")
	_, err = s.c.PutObject(ctx, s.bucket, key, io.NewSectionReader(f, 0, size), size, opts)
	s.m.observe("put_"+kind, err)
	if err == nil {
		s.m.bytes.WithLabelValues(kind).Add(float64(size))
		return false, nil
	}
	if isStatus(err, http.StatusPreconditionFailed) {
		return true, nil
	}
	return false, fmt.Errorf("s3store: put %s: %w", key, err)
}

// get reads a whole (small) object and its ETag.
func (s *Store) get(ctx context.Context, kind, key string) ([]byte, minio.ObjectInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	obj, err := s.c.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	var info minio.ObjectInfo
	var data []byte
	if err == nil {
		// Read first: the info then comes from the same GET. Stat first
		// sends its own request, and minio-go reads the body with
		// If-Match its ETag, which fails (412) when a master replaced
		// the object (the manifest, the lease) in between.
		data, err = io.ReadAll(obj)
		if err == nil {
			info, err = obj.Stat()
		}
		obj.Close()
	}
	if isStatus(err, http.StatusNotFound) {
		s.m.observe("get_"+kind, nil)
		return nil, info, ErrNotFound
	}
	s.m.observe("get_"+kind, err)
	if err != nil {
		return nil, info, fmt.Errorf("s3store: get %s: %w", key, err)
	}
	return data, info, nil
}

// open streams an object and tells its size; the caller closes it.
func (s *Store) open(ctx context.Context, kind, key string) (io.ReadCloser, int64, error) {
	obj, err := s.c.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	var info minio.ObjectInfo
	if err == nil {
		info, err = obj.Stat()
		if err != nil {
			obj.Close()
		}
	}
	if isStatus(err, http.StatusNotFound) {
		s.m.observe("get_"+kind, nil)
		return nil, 0, ErrNotFound
	}
	s.m.observe("get_"+kind, err)
	if err != nil {
		return nil, 0, fmt.Errorf("s3store: get %s: %w", key, err)
	}
	return obj, info.Size, nil
}

func (s *Store) stat(ctx context.Context, kind, key string) (minio.ObjectInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	info, err := s.c.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if isStatus(err, http.StatusNotFound) {
		s.m.observe("head_"+kind, nil)
		return info, ErrNotFound
	}
	s.m.observe("head_"+kind, err)
	if err != nil {
		return info, fmt.Errorf("s3store: head %s: %w", key, err)
	}
	return info, nil
}

// list returns the keys (or, with delim, the common prefixes) under p.
func (s *Store) list(ctx context.Context, p string, delim bool) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*s.timeout)
	defer cancel()
	var out []string
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: p, Recursive: !delim}) {
		if o.Err != nil {
			s.m.observe("list", o.Err)
			return nil, fmt.Errorf("s3store: list %s: %w", p, o.Err)
		}
		out = append(out, o.Key)
	}
	s.m.observe("list", nil)
	return out, nil
}

func (s *Store) remove(ctx context.Context, kind, key string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	err := s.c.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{})
	s.m.observe("delete_"+kind, err)
	return err
}

func metaGet(info minio.ObjectInfo, name string) string {
	if v := info.Metadata.Get("X-Amz-Meta-" + name); v != "" {
		return v
	}
	for k, v := range info.UserMetadata {
		if strings.EqualFold(k, name) || strings.EqualFold(k, "X-Amz-Meta-"+name) {
			return v
		}
	}
	return ""
}

// PutSegment stores changes first..last (JSON Lines, one change a line)
// create-only. When the object already exists (another master, or our own
// retried request) it reports the last seq the existing object holds and
// whether we wrote it; the caller drops what that object covers.
func (s *Store) PutSegment(ctx context.Context, edge, inc string, first, last uint64, body []byte) (storedLast uint64, ours bool, err error) {
	key := s.SegmentKey(edge, inc, first)
	meta := map[string]string{metaWriter: s.nonce, metaLast: strconv.FormatUint(last, 10)}
	if _, err = s.put(ctx, "segment", key, body, "*", meta); err == nil {
		return last, true, nil
	} else if !errors.Is(err, ErrConflict) {
		return 0, false, err
	}
	// A 412 can come before the winner's object is visible (a server
	// commits it after the check): look again for a while.
	var theirLast uint64
	var writer string
	for i := 0; ; i++ {
		theirLast, writer, err = s.SegmentLast(ctx, edge, inc, first)
		if !errors.Is(err, ErrNotFound) || i == 20 {
			break
		}
		time.Sleep(time.Duration(i+1) * 10 * time.Millisecond)
	}
	if err != nil {
		return 0, false, err
	}
	ours = writer == s.nonce && theirLast == last
	if ours {
		s.m.ownRetries.Inc()
	} else {
		s.m.lostRaces.Inc()
	}
	return theirLast, ours, nil
}

// SegmentLast reads the last seq (and writer) of seg/{first} from its
// metadata; ErrNotFound when there is none.
func (s *Store) SegmentLast(ctx context.Context, edge, inc string, first uint64) (uint64, string, error) {
	info, err := s.stat(ctx, "segment", s.SegmentKey(edge, inc, first))
	if err != nil {
		return 0, "", err
	}
	last, perr := strconv.ParseUint(metaGet(info, metaLast), 10, 64)
	if perr != nil || last < first {
		// Not written by us: count its lines the slow way.
		var n uint64
		err := s.readSegment(ctx, edge, inc, first, func(c *iotkv.Change, _ []byte) error { n = c.Seq; return nil })
		if err != nil {
			return 0, "", err
		}
		last = n
	}
	return last, metaGet(info, metaWriter), nil
}
