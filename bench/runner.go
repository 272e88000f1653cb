// Package bench is iotkv's benchmark harness: it starts an edge and the
// baselines (mosquitto, bare mochi, NATS with durable JetStream, raw
// Pebble, a plain net/http TLS handler) on loopback, drives them with the
// same load generator, and writes every figure as a ratio against a
// baseline measured in the same invocation (bench/results/report.md, raw
// JSON and PNG plots).
//
// Every server runs in its own child process (the harness re-executes
// itself with "serve KIND"), so RSS and CPU profiles are the server's own.
// Every child is stopped on return, on failure and on a signal.
package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Config configures a run.
type Config struct {
	Quick  bool     // the CI-sized run (≤ 2 minutes)
	Rounds int      // load rounds per figure; default 1 quick, 3 full (odd: the median is a round)
	Out    string   // results directory
	Cache  string   // generated identities, kept between runs
	Only   []string // scenario ids to run; all when empty
	Repo   string   // the module root, for building iotkv-device
	NATS   string   // nats-server binary; default: PATH, then GOPATH/bin
	Logger *slog.Logger
}

// Runner holds what the scenarios share.
type Runner struct {
	Config
	Log    *slog.Logger
	PKI    *PKI
	Work   string // temp dir: data, configs, logs of children
	Self   string // this executable, started as "serve KIND"
	Report *Report
	shared sync.Map // figures one scenario hands to a later one
}

type scenario struct {
	id    string
	title string
	run   func(context.Context, *Section) error
}

// Run runs the scenarios and writes the report.
func Run(ctx context.Context, cfg Config) (err error) {
	defer StopAll()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Runner{Config: cfg, Log: cfg.Logger}
	if r.Self, err = os.Executable(); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if r.Work, err = os.MkdirTemp("", "iotkv-bench-"); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(r.Work)
	devs := 60 + r.stormDevices() // 0–59 for load and probes, then the storm's
	if r.PKI, err = EnsurePKI(filepath.Join(cfg.Cache, "pki-v1"), devs, r.Log); err != nil {
		return err
	}
	r.Report = NewReport(cfg.Quick)
	scenarios := []scenario{
		{"1", "Durable ingest: batches of 100 ops, 50 mTLS devices, QoS 1", r.scenIngest},
		{"2", "Single-op kv messages, QoS 1, 50 devices", r.scenKV},
		{"3", "REST reads with Basic auth (cost-12 account), 64 connections", r.scenREST},
		{"4", "The replaced system's menu workload through iotkv-device shell", r.scenDevice},
		{"5", "Latency: publish → readable over REST at 50% of the maximum rate", r.scenLatency},
		{"6", "Connection storm", r.scenStorm},
		{"7", "Backup lag and restore", r.scenBackup},
		{"8", "Scaling with stored keys", r.scenScale},
		{"9", "Master on S3 (versitygw): backup lag and PUTs at the default flush", r.scenS3},
		{"10", "Live watch: writers' PUBACK p99 with 100 watchers (10 stalled) vs none", r.scenWatch},
		{"11", "Quotas: 49 devices at a normal rate and one flooding", r.scenQuota},
		{"12", "Fleet: edges with simulated devices dialling out to two masters on S3; kill -9 of the lease holder", r.scenFleet},
	}
	start := time.Now()
	for _, s := range scenarios {
		if len(cfg.Only) > 0 && !contains(cfg.Only, s.id) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		sec := r.Report.Section(s.id, s.title)
		t0 := time.Now()
		r.Log.Info("scenario", "id", s.id, "title", s.title)
		err := s.run(ctx, sec)
		StopAll() // nothing of one scenario runs into the next
		sec.Seconds = time.Since(t0).Seconds()
		switch {
		case errors.Is(err, ErrSkip):
			sec.Skipped = err.Error()
			r.Log.Warn("scenario skipped", "id", s.id, "reason", err)
		case err != nil:
			sec.Failed = err.Error()
			r.Log.Error("scenario failed", "id", s.id, "err", err)
		default:
			r.Log.Info("scenario done", "id", s.id, "took", time.Since(t0).Round(time.Second))
		}
		if err := r.Report.Write(cfg.Out); err != nil { // partial results survive a later failure
			return err
		}
	}
	r.Report.TotalSeconds = time.Since(start).Seconds()
	return r.Report.Write(cfg.Out)
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// dur picks the quick or the full value.
func (r *Runner) dur(quick, full time.Duration) time.Duration {
	if r.Quick {
		return quick
	}
	return full
}

func (r *Runner) pick(quick, full int) int {
	if r.Quick {
		return quick
	}
	return full
}

// rounds is how many load rounds each load figure takes.
func (r *Runner) rounds() int {
	if r.Rounds > 0 {
		return r.Rounds
	}
	return r.pick(1, 3)
}

// stormDevices is how many identities the storm uses.
func (r *Runner) stormDevices() int {
	if len(r.Only) > 0 && !contains(r.Only, "6") {
		return 0
	}
	return r.pick(100, 2000)
}

// cores is the number of CPUs the Go runtime sees.
func cores() int { return runtime.NumCPU() }

func fmtRate(v float64) string {
	switch {
	case v >= 10_000:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.1fk", v/1000)
	default:
		return fmt.Sprintf("%.1f", v)
	}
}

func fmtMiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func join(xs ...string) string { return strings.Join(xs, " ") }
