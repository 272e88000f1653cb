package main

import (
	"context"
	"flag"
	"io"
	"os"
	"time"

	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/cliutil"
	"github.com/iotkv/iotkv/s3store"
)

// edgeConfig is what the edge's flags make: everything edgeCmd runs.
type edgeConfig struct {
	Options  edge.Options
	Restore  *restoreConfig // nil without --restore-from
	AddrFile string
}

// restoreConfig is --restore-from and what goes with it.
type restoreConfig struct {
	URL, Name, Password  string
	Force                bool
	S3Endpoint, S3Region string
}

func edgeCmd(args []string) error {
	cfg, _, err := parseEdge(args, os.Stdout)
	if err != nil {
		return err
	}
	o, log := cfg.Options, cfg.Options.Logger
	ctx, stop := cliutil.SignalContext()
	defer stop()
	if rc := cfg.Restore; rc != nil {
		if err := restoreEdge(ctx, log, rc.URL, o.ID, rc.Name, rc.Password, o.DataDir, o.TLSFiles, rc.Force, rc.S3Endpoint, rc.S3Region); err != nil {
			return err
		}
	}
	e, err := edge.Open(o)
	if err != nil {
		return err
	}
	if err := cliutil.WriteAddrFile(cfg.AddrFile, map[string]string{"mqtt": e.MQTTAddr(), "https": e.HTTPAddr()}); err != nil {
		_ = e.Close(context.Background())
		return err
	}
	hup, stopHup := cliutil.HangupSignals()
	defer stopHup()
	for ctx.Err() == nil {
		select {
		case <-hup:
			log.Info("SIGHUP: reloading accounts and TLS files")
			_ = e.Reload() // a refusal is logged; the files in force stay
		case <-ctx.Done():
		}
	}
	log.Info("shutting down: finishing writes in flight")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return e.Close(sctx)
}

// parseEdge reads the edge's flags (command line, environment, --config)
// into what edgeCmd runs, and returns the flag set it used.
func parseEdge(args []string, stdout io.Writer) (*edgeConfig, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	var lf cliutil.Log
	lf.Register(fs)
	var tf cliutil.TLSFlags
	tf.Register(fs)
	id := fs.String("id", "", "edge id (required); also its certificate name")
	data := fs.String("data", "", "data directory (required)")
	acc := fs.String("accounts", "", "accounts file (required)")
	mqttAddr := fs.String("mqtt-addr", ":8883", "MQTT/TLS listen address")
	httpAddr := fs.String("http-addr", ":8443", "HTTPS listen address")
	restCert := fs.String("rest-client-cert", "optional", "none|optional|require")
	addrFile := fs.String("addr-file", "", "write the bound addresses here as JSON")
	crl := fs.String("crl", "", "certificate revocation list to enforce (default D/crl.pem of --certs D when present; reloaded on change)")
	maxPacket := fs.Uint("max-packet-size", 1<<20, "largest MQTT packet in bytes")
	maxKey := fs.Int("max-key-bytes", 256, "longest key in bytes")
	maxValue := fs.Int("max-value-bytes", 64<<10, "largest value in bytes")
	maxOps := fs.Int("max-batch-ops", 1000, "most ops in one batch")
	connectTimeout := fs.Duration("connect-timeout", 10*time.Second, "time allowed for the TLS handshake and CONNECT")
	maxClients := fs.Int64("max-clients", 10000, "most MQTT clients at once")
	maxKeepalive := fs.Uint("max-keepalive", 300, "longest MQTT keepalive in seconds")
	memtable := fs.Uint64("memtable-mib", edge.DefaultMemTableSize>>20, "store memtable size in MiB (Pebble keeps up to two)")
	restoreFrom := fs.String("restore-from", "", "restore an empty data dir first, from a master (https://host:port) or a store (s3://BUCKET/PREFIX)")
	name := fs.String("name", "", "account name for --restore-from (default: the edge id)")
	pwFile := fs.String("password-file", "", "password for --restore-from (first line; IOTKV_PASSWORD as fallback)")
	force := fs.Bool("force", false, "with --restore-from: replace a data dir that is not empty")
	s3Endpoint := fs.String("s3-endpoint", "", "with --restore-from s3://...: S3 endpoint URL (path-style); default AWS")
	s3Region := fs.String("s3-region", "", "with --restore-from s3://...: S3 region")
	retainChanges := fs.Int64("backup-retain-changes", 1_000_000, "most changes the change log keeps for the master")
	retainBytes := fs.Int64("backup-retain-bytes", 256<<20, "most bytes the change log keeps for the master")
	masters := fs.String("master", "", "dial out to masters and carry the backup stream there: mqtts://host:port[,mqtts://host2:port] (their --listen-edges)")
	quotaKeys := fs.Int64("quota-keys", edge.DefaultQuotaKeys, "most live keys per device (0: no limit)")
	quotaBytesS := fs.String("quota-bytes", "256MiB", "most stored key+value bytes per device (B, KiB, MiB, GiB; 0: no limit)")
	rateOps := fs.Int64("rate-ops", edge.DefaultRateOps, "sustained ops per second per device, with a burst of 10 s of them (0: no limit)")
	retainAge := fs.Duration("backup-retain-age", 24*time.Hour, "oldest change the change log keeps for the master")
	maxLag := fs.Duration("max-backup-lag", 0, "slow writers so that the master following the backup stream stays within this lag, e.g. 1s (0: never slow writers)")
	histRetain := &durationValue{7 * 24 * time.Hour}
	fs.Var(histRetain, "history-retain", "how long the history of every key is kept (GET /v1/history), e.g. 7d; 0 turns history off")
	histBytes := &bytesValue{1 << 30}
	fs.Var(histBytes, "history-max-bytes", "most bytes of history (change log and index) the edge keeps, e.g. 1GiB")
	maxWatchers := fs.Int("max-watchers", 1000, "most watch streams (GET /v1/watch) open at once")
	maxWatchersAcct := fs.Int("max-watchers-per-account", 16, "most watch streams open at once per account")
	if pos, err := cliutil.ParseConfig(fs, args, stdout); err != nil {
		return nil, nil, err
	} else if len(pos) > 0 {
		return nil, nil, cliutil.Usagef("edge: unexpected argument %q", pos[0])
	}
	if *id == "" || *data == "" || *acc == "" {
		return nil, nil, cliutil.Usagef("edge: --id, --data and --accounts are required")
	}
	if histBytes.n <= 0 {
		return nil, nil, cliutil.Usagef("edge: --history-max-bytes must be positive")
	}
	if *maxWatchers <= 0 || *maxWatchersAcct <= 0 {
		return nil, nil, cliutil.Usagef("edge: --max-watchers and --max-watchers-per-account must be positive")
	}
	if err := checkRestoreURL(*restoreFrom); err != nil {
		return nil, nil, err
	}
	quotaBytes, err := parseBytes(*quotaBytesS)
	if err != nil {
		return nil, nil, cliutil.Usagef("edge: --quota-bytes: %v", err)
	}
	if *quotaKeys < 0 || *rateOps < 0 {
		return nil, nil, cliutil.Usagef("edge: --quota-keys and --rate-ops must not be negative")
	}
	noLimit := func(n int64) int64 {
		if n == 0 {
			return -1
		}
		return n
	}
	var dial edge.DialOutOptions
	if *masters != "" {
		var err error
		if dial.Masters, err = edge.ParseMasterURLs(*masters); err != nil {
			return nil, nil, cliutil.Usagef("edge: --master: %v", err)
		}
	}
	// --name and --password-file are the edge's account at a master: for
	// --master, and for --restore-from https://.
	switch {
	case *restoreFrom == "":
		if err := cliutil.Refuse(fs, "only with --restore-from", "force", "s3-endpoint", "s3-region"); err != nil {
			return nil, nil, err
		}
		if *masters == "" {
			if err := cliutil.Refuse(fs, "only with --restore-from or --master", "name", "password-file"); err != nil {
				return nil, nil, err
			}
		}
	case s3store.IsURL(*restoreFrom):
		// Object storage uses the AWS credentials, not an iotkv account.
		if *masters == "" {
			if err := cliutil.Refuse(fs, "not used with --restore-from s3://... (credentials come from AWS_*)", "name", "password-file"); err != nil {
				return nil, nil, err
			}
		}
	default:
		if err := cliutil.Refuse(fs, "only with --restore-from s3://...", "s3-endpoint", "s3-region"); err != nil {
			return nil, nil, err
		}
	}
	log, err := lf.Logger()
	if err != nil {
		return nil, nil, err
	}
	paths, err := tf.ServerPaths(*id, *crl)
	if err != nil {
		return nil, nil, err
	}
	if _, err := edge.ClientAuth(*restCert); err != nil {
		return nil, nil, cliutil.Usagef("%v", err)
	}
	if *name == "" {
		*name = *id
	}
	if len(dial.Masters) > 0 {
		dial.Name = *name
		if dial.Password, err = cliutil.ReadPassword(*pwFile); err != nil {
			return nil, nil, err
		}
	}
	cfg := &edgeConfig{AddrFile: *addrFile}
	if *restoreFrom != "" {
		pw := ""
		if !s3store.IsURL(*restoreFrom) { // object storage uses AWS credentials instead
			if pw, err = cliutil.ReadPassword(*pwFile); err != nil {
				return nil, nil, err
			}
		}
		cfg.Restore = &restoreConfig{URL: *restoreFrom, Name: *name, Password: pw, Force: *force, S3Endpoint: *s3Endpoint, S3Region: *s3Region}
	}
	cfg.Options = edge.Options{
		ID: *id, DataDir: *data, TLSFiles: paths, Accounts: *acc,
		MQTTAddr: *mqttAddr, HTTPAddr: *httpAddr, RestClientCert: *restCert,
		MaxPacketSize: uint32(*maxPacket), ConnectTimeout: *connectTimeout,
		MaxClients: *maxClients, MaxKeepalive: uint16(min(*maxKeepalive, 65535)),
		MemTableSize: *memtable << 20,
		Backup:       edge.BackupOptions{RetainChanges: *retainChanges, RetainBytes: *retainBytes, RetainAge: *retainAge, MaxLag: *maxLag},
		DialOut:      dial,
		Quota:        edge.QuotaOptions{Keys: noLimit(*quotaKeys), Bytes: noLimit(int64(quotaBytes)), RateOps: noLimit(*rateOps)},
		History:      edge.HistoryOptions{Off: histRetain.d == 0, Retain: histRetain.d, MaxBytes: histBytes.n},
		Watch:        edge.WatchOptions{MaxTotal: *maxWatchers, MaxPerAccount: *maxWatchersAcct},
		Logger:       log,
	}.WithLimits(*maxKey, *maxValue, *maxOps)
	return cfg, fs, nil
}
