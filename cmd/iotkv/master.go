package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/cliutil"
	"github.com/iotkv/iotkv/master"
	"github.com/iotkv/iotkv/s3store"
)

// masterConfig is what the master's flags make: everything masterCmd runs.
type masterConfig struct {
	Options  master.Options   // Store is opened from StoreOptions by masterCmd
	Store    *s3store.Options // nil without --store
	AddrFile string
}

func masterCmd(args []string) error {
	cfg, _, err := parseMaster(args, os.Stdout)
	if err != nil {
		return err
	}
	o, log := cfg.Options, cfg.Options.Logger
	if cfg.Store != nil {
		if o.Store, err = s3store.Open(*cfg.Store); err != nil {
			return cliutil.Usagef("master: %v", err)
		}
		if err := o.Store.Ping(context.Background()); err != nil {
			log.Warn("object storage not reachable yet: not ready until it is", "err", err)
		}
	}
	ctx, stop := cliutil.SignalContext()
	defer stop()
	m, err := master.Open(o)
	if err != nil {
		return err
	}
	addrs := map[string]string{"https": m.HTTPAddr()}
	if a := m.EdgesAddr(); a != "" {
		addrs["edges"] = a
	}
	if err := cliutil.WriteAddrFile(cfg.AddrFile, addrs); err != nil {
		_ = m.Close(context.Background())
		return err
	}
	hup, stopHup := cliutil.HangupSignals()
	defer stopHup()
	for ctx.Err() == nil {
		select {
		case <-hup:
			log.Info("SIGHUP: reloading accounts and TLS files")
			_ = m.Reload() // a refusal is logged; the files in force stay
		case <-ctx.Done():
		}
	}
	log.Info("shutting down: journaling what is in flight, writing latest.json")
	sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return m.Close(sctx)
}

// parseMaster reads the master's flags (command line, environment,
// --config) into what masterCmd runs, and returns the flag set it used.
func parseMaster(args []string, stdout io.Writer) (*masterConfig, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("master", flag.ContinueOnError)
	var lf cliutil.Log
	lf.Register(fs)
	var tf cliutil.TLSFlags
	tf.Register(fs)
	data := fs.String("data", "", "backup directory (this or --store is required)")
	store := fs.String("store", "", "keep the backups in object storage: s3://BUCKET/PREFIX")
	s3Endpoint := fs.String("s3-endpoint", "", "S3 endpoint URL for MinIO/Ceph/versitygw (path-style); default AWS")
	s3Region := fs.String("s3-region", "", "S3 region (default $AWS_REGION, then us-east-1)")
	s3Compress := fs.String("s3-compress", s3store.CompressZstd, "with --store: snapshots as zstd (.json.zst) or none (.json); restores read either")
	flushInterval := fs.Duration("flush-interval", time.Second, "with --store: store a segment at least this often")
	flushBytesS := fs.String("flush-bytes", "1MiB", "with --store: or when this much is buffered (B, KiB, MiB)")
	leaseTTL := fs.Duration("lease-ttl", 10*time.Second, "with --store: lease time of the master that compacts")
	acc := fs.String("accounts", "", "accounts file for the REST API (required)")
	pwFile := fs.String("password-file", "", "the master account's password (first line; IOTKV_PASSWORD as fallback)")
	edges := fs.String("edges", "", "edges to dial and follow: id=host:port,...")
	listenEdges := fs.String("listen-edges", "", "mTLS MQTT listen address for edges that dial out (iotkv edge --master mqtts://...)")
	name := fs.String("name", "master", "account and certificate name")
	httpAddr := fs.String("http-addr", ":9443", "HTTPS listen address")
	restCert := fs.String("rest-client-cert", "optional", "none|optional|require")
	interval := fs.Duration("snapshot-interval", 10*time.Second, "how often latest.json is rewritten when something changed")
	maxPending := fs.Int("max-pending", 100_000, "keys changed since latest.json held in memory before an early snapshot")
	addrFile := fs.String("addr-file", "", "write the bound addresses here as JSON")
	crl := fs.String("crl", "", "certificate revocation list to enforce (default D/crl.pem of --certs D when present; reloaded on change)")
	if pos, err := cliutil.ParseConfig(fs, args, stdout); err != nil {
		return nil, nil, err
	} else if len(pos) > 0 {
		return nil, nil, cliutil.Usagef("master: unexpected argument %q", pos[0])
	}
	if (*data == "") == (*store == "") || *acc == "" || (*edges == "" && *listenEdges == "") {
		return nil, nil, cliutil.Usagef("master: one of --data or --store, --accounts, and --edges or --listen-edges are required")
	}
	if *edges == "" {
		if err := cliutil.Refuse(fs, "only with --edges (the master logs in only to edges it dials)", "password-file"); err != nil {
			return nil, nil, err
		}
	}
	flushBytes, err := parseBytes(*flushBytesS)
	if err != nil || *flushInterval <= 0 || flushBytes <= 0 || *leaseTTL <= 0 {
		return nil, nil, cliutil.Usagef("master: --flush-interval, --flush-bytes and --lease-ttl must be positive")
	}
	if *interval <= 0 {
		return nil, nil, cliutil.Usagef("master: --snapshot-interval must be positive")
	}
	if *store != "" {
		// The S3 store keeps no map of pending keys: it stores segments.
		if err := cliutil.Refuse(fs, "not used with --store (the object store flushes by --flush-interval and --flush-bytes)", "max-pending"); err != nil {
			return nil, nil, err
		}
		if err := checkStoreURL("master: --store", *store); err != nil {
			return nil, nil, err
		}
		if _, err := s3store.ParseCompression(*s3Compress); err != nil {
			return nil, nil, cliutil.Usagef("master: --s3-compress: %v", err)
		}
	}
	if *store == "" {
		if err := cliutil.Refuse(fs, "only with --store s3://...", "s3-endpoint", "s3-region", "s3-compress", "flush-interval", "flush-bytes", "lease-ttl"); err != nil {
			return nil, nil, err
		}
	}
	if _, err := edge.ClientAuth(*restCert); err != nil {
		return nil, nil, cliutil.Usagef("%v", err)
	}
	var list []master.Edge
	if *edges != "" {
		if list, err = parseEdges(*edges); err != nil {
			return nil, nil, err
		}
	}
	log, err := lf.Logger()
	if err != nil {
		return nil, nil, err
	}
	paths, err := tf.ServerPaths(*name, *crl)
	if err != nil {
		return nil, nil, err
	}
	pw := "" // only to log in to edges the master dials
	if len(list) > 0 {
		if pw, err = cliutil.ReadPassword(*pwFile); err != nil {
			return nil, nil, err
		}
	}
	cfg := &masterConfig{AddrFile: *addrFile, Options: master.Options{
		FlushInterval: *flushInterval, FlushBytes: flushBytes, LeaseTTL: *leaseTTL,
		DataDir: *data, Name: *name, Password: pw, TLSFiles: paths, Accounts: *acc, Edges: list, ListenEdges: *listenEdges,
		HTTPAddr: *httpAddr, RestClientCert: *restCert, SnapshotInterval: *interval, MaxPending: *maxPending,
		Logger: log,
	}}
	if *store != "" {
		cfg.Store = &s3store.Options{URL: *store, Endpoint: *s3Endpoint, Region: *s3Region, Compression: *s3Compress, Logger: log}
	}
	return cfg, fs, nil
}

// parseEdges reads id=host:port,id=host:port.
func parseEdges(s string) ([]master.Edge, error) {
	var out []master.Edge
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok || id == "" || addr == "" {
			return nil, cliutil.Usagef("master: --edges entry %q: want id=host:port", part)
		}
		out = append(out, master.Edge{ID: id, Addr: addr})
	}
	if len(out) == 0 {
		return nil, cliutil.Usagef("master: --edges is empty")
	}
	return out, nil
}

// restoreEdge restores from a master (https://) or, with no master
// running, straight from object storage (s3://BUCKET/PREFIX; the endpoint
// and region come from --s3-endpoint/--s3-region, credentials from AWS_*).
func restoreEdge(ctx context.Context, log *slog.Logger, url, id, name, password, dataDir string, paths certs.Paths, force bool, s3Endpoint, s3Region string) error {
	o := edge.RestoreOptions{
		URL: url, ID: id, Name: name, Password: password, TLSFiles: paths, DataDir: dataDir, Force: force, Logger: log,
	}
	if s3store.IsURL(url) {
		st, err := s3store.Open(s3store.Options{URL: url, Endpoint: s3Endpoint, Region: s3Region, Logger: log})
		if err != nil {
			return cliutil.Usagef("edge: --restore-from: %v", err)
		}
		o.Source = func(ctx context.Context) (io.ReadCloser, error) {
			// An empty or wrong prefix must fail here, with a reason, and
			// not look like a restore that found nothing to load.
			if _, err := st.Current(ctx, id); errors.Is(err, s3store.ErrNotFound) {
				return nil, fmt.Errorf("restore: no backup of edge %s in %s: check the bucket, the prefix and --s3-endpoint", id, st)
			} else if err != nil {
				return nil, fmt.Errorf("restore: %w", err)
			}
			return st.OpenState(ctx, id), nil
		}
	}
	return edge.Restore(ctx, o)
}

// parseBytes reads 1048576, 512KiB, 1MiB, 1MB.
func parseBytes(s string) (int, error) {
	s = strings.TrimSpace(s)
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1000}, {"MB", 1000_000}, {"B", 1}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}
