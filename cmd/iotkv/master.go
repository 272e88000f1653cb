package main

import (
	"context"
	"flag"
	"log/slog"
	"strings"
	"time"

	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/cliutil"
	"github.com/iotkv/iotkv/master"
)

func masterCmd(args []string) error {
	fs := flag.NewFlagSet("master", flag.ContinueOnError)
	var lf cliutil.Log
	lf.Register(fs)
	var tf tlsFlags
	tf.register(fs)
	data := fs.String("data", "", "backup directory (required)")
	acc := fs.String("accounts", "", "accounts file for the REST API (required)")
	pwFile := fs.String("password-file", "", "the master account's password (first line; IOTKV_PASSWORD as fallback)")
	edges := fs.String("edges", "", "edges to follow: id=host:port,... (required)")
	name := fs.String("name", "master", "account and certificate name")
	httpAddr := fs.String("http-addr", ":9443", "HTTPS listen address")
	restCert := fs.String("rest-client-cert", "optional", "none|optional|require")
	interval := fs.Duration("snapshot-interval", 10*time.Second, "how often latest.json is rewritten when something changed")
	maxPending := fs.Int("max-pending", 100_000, "keys changed since latest.json held in memory before an early snapshot")
	addrFile := fs.String("addr-file", "", "write the bound addresses here as JSON")
	if pos, err := cliutil.Parse(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return cliutil.Usagef("master: unexpected argument %q", pos[0])
	}
	if *data == "" || *acc == "" || *edges == "" {
		return cliutil.Usagef("master: --data, --accounts and --edges are required")
	}
	if *interval <= 0 {
		return cliutil.Usagef("master: --snapshot-interval must be positive")
	}
	if _, err := edge.ClientAuth(*restCert); err != nil {
		return cliutil.Usagef("%v", err)
	}
	list, err := parseEdges(*edges)
	if err != nil {
		return err
	}
	log, err := lf.Logger()
	if err != nil {
		return err
	}
	paths, err := tf.paths(*name)
	if err != nil {
		return err
	}
	pw, err := cliutil.ReadPassword(*pwFile)
	if err != nil {
		return err
	}
	ctx, stop := cliutil.SignalContext()
	defer stop()
	m, err := master.Open(master.Options{
		DataDir: *data, Name: *name, Password: pw, TLSFiles: paths, Accounts: *acc, Edges: list,
		HTTPAddr: *httpAddr, RestClientCert: *restCert, SnapshotInterval: *interval, MaxPending: *maxPending,
		Logger: log,
	})
	if err != nil {
		return err
	}
	if err := cliutil.WriteAddrFile(*addrFile, map[string]string{"https": m.HTTPAddr()}); err != nil {
		_ = m.Close(context.Background())
		return err
	}
	<-ctx.Done()
	log.Info("shutting down: journaling what is in flight, writing latest.json")
	sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return m.Close(sctx)
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

func restoreEdge(ctx context.Context, log *slog.Logger, url, id, name, password, dataDir string, paths certs.Paths, force bool) error {
	return edge.Restore(ctx, edge.RestoreOptions{
		URL: url, ID: id, Name: name, Password: password, TLSFiles: paths, DataDir: dataDir, Force: force, Logger: log,
	})
}
