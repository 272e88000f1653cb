package bench

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/master"
)

// Serve runs one of the servers the harness measures in this process (the
// harness starts itself as a child for each, so every server has its own
// process, RSS and profile): "edge", "mochi" or "http".
func Serve(kind string, args []string) error {
	fs := flag.NewFlagSet("serve "+kind, flag.ContinueOnError)
	certDir := fs.String("certs", "", "certificate directory")
	acc := fs.String("accounts", "", "accounts file (edge)")
	data := fs.String("data", "", "data directory (edge)")
	addrFile := fs.String("addr-file", "", "write the bound addresses here")
	authCache := fs.Int("auth-cache", 0, "edge AuthCacheSize (-1 disables)")
	restoreFrom := fs.String("restore-from", "", "edge: restore the data dir from this master first")
	edgeAddr := fs.String("edge-addr", "", "master: the edge's MQTT address")
	// The harness measures the edge without quotas (scenario 8 stores
	// more keys than the default per-device quota); scenario 11 sets them.
	quotaKeys := fs.Int64("quota-keys", -1, "edge: most keys per device (-1: no limit)")
	quotaBytes := fs.Int64("quota-bytes", -1, "edge: most stored bytes per device (-1: no limit)")
	rateOps := fs.Int64("rate-ops", -1, "edge: ops per second per device (-1: no limit)")
	maxLag := fs.Duration("max-backup-lag", 0, "edge: slow writers to keep the master within this lag (0: never)")
	readsBeforeSync := fs.Bool("reads-before-sync", false, "edge: reads see groups before their fsync (to measure what durable reads cost)")
	snapshot := fs.Duration("snapshot-interval", 2*time.Second, "master: snapshot interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	paths := certs.PathsFor(*certDir, EdgeID)
	addrs := map[string]string{}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("pprof listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	go func() { _ = http.Serve(pl, mux) }()
	addrs["pprof"] = pl.Addr().String()

	var closeFn func() error
	switch kind {
	case "edge":
		if *restoreFrom != "" {
			t0 := time.Now()
			if err := edge.Restore(ctx, edge.RestoreOptions{URL: *restoreFrom, ID: EdgeID, Password: Password(EdgeID), TLSFiles: paths, DataDir: *data, Logger: log}); err != nil {
				return err
			}
			addrs["restore_seconds"] = fmt.Sprint(time.Since(t0).Seconds())
		}
		e, err := edge.Open(edge.Options{
			ID: EdgeID, DataDir: *data, TLSFiles: paths, Accounts: *acc,
			MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", AuthCacheSize: *authCache,
			MaxClients: 20_000, Logger: log, ReadsBeforeSync: *readsBeforeSync,
			Backup: edge.BackupOptions{MaxLag: *maxLag},
			Quota:  edge.QuotaOptions{Keys: *quotaKeys, Bytes: *quotaBytes, RateOps: *rateOps},
			Watch:  edge.WatchOptions{MaxPerAccount: 1000}, // scenario 10 opens 100 watchers as one account
		})
		if err != nil {
			return err
		}
		addrs["mqtt"], addrs["https"] = e.MQTTAddr(), e.HTTPAddr()
		closeFn = func() error {
			cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			return e.Close(cctx)
		}
	case "master":
		m, err := master.Open(master.Options{
			DataDir: *data, Password: Password(MasterName), TLSFiles: certs.PathsFor(*certDir, MasterName), Accounts: *acc,
			Edges: []master.Edge{{ID: EdgeID, Addr: *edgeAddr}}, HTTPAddr: "127.0.0.1:0", SnapshotInterval: *snapshot, Logger: log,
		})
		if err != nil {
			return err
		}
		addrs["https"] = m.HTTPAddr()
		closeFn = func() error {
			cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			return m.Close(cctx)
		}
	case "mochi":
		tc, err := certs.ServerConfig(paths, tls.RequireAndVerifyClientCert)
		if err != nil {
			return err
		}
		s := mqtt.New(&mqtt.Options{Logger: log})
		if err := s.AddHook(new(allowHook), nil); err != nil {
			return fmt.Errorf("mochi: %w", err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("mochi: %w", err)
		}
		addr := l.Addr().String()
		l.Close()
		if err := s.AddListener(listeners.NewTCP(listeners.Config{ID: "tls", Address: addr, TLSConfig: tc})); err != nil {
			return fmt.Errorf("mochi: %w", err)
		}
		if err := s.Serve(); err != nil {
			return fmt.Errorf("mochi: %w", err)
		}
		addrs["mqtt"] = addr
		closeFn = s.Close
	case "http":
		tc, err := certs.ServerConfig(paths, tls.VerifyClientCertIfGiven)
		if err != nil {
			return err
		}
		l, err := tls.Listen("tcp", "127.0.0.1:0", tc)
		if err != nil {
			return fmt.Errorf("plain https: %w", err)
		}
		body := []byte(`{"device":"dev-00001","key":"k","value":21.5,"ts":0,"updated_at":"2025-01-01T00:00:00Z","seq":1}`)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		}), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(l) }()
		addrs["https"] = l.Addr().String()
		closeFn = func() error { return srv.Close() }
	default:
		return fmt.Errorf("serve: unknown kind %q", kind)
	}
	b, _ := json.Marshal(addrs)
	if err := os.WriteFile(*addrFile, b, 0o644); err != nil {
		_ = closeFn()
		return fmt.Errorf("addr file: %w", err)
	}
	<-ctx.Done()
	err = closeFn()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// allowHook admits every client that passed the TLS handshake (the bare
// mochi baseline checks no passwords and no ACL).
type allowHook struct{ mqtt.HookBase }

func (h *allowHook) ID() string { return "allow" }

func (h *allowHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *allowHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (h *allowHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }
