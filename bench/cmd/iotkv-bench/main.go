// Command iotkv-bench runs iotkv's benchmark scenarios on loopback and
// writes bench/results/report.md, raw JSON and PNG plots. See bench/.
//
//	iotkv-bench [--quick] [--rounds N] [--out DIR] [--cache DIR] [--only 1,2,...] [--nats-server BIN]
//	iotkv-bench --readme README.md [--out DIR]   (the table from DIR/results-full.json)
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/iotkv/iotkv/bench"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "serve" {
		if err := bench.Serve(os.Args[2], os.Args[3:]); err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			os.Exit(1)
		}
		return
	}
	fs := flag.NewFlagSet("iotkv-bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "the CI-sized run (≤ 2 minutes)")
	out := fs.String("out", "bench/results", "results directory")
	cache := fs.String("cache", "bench/.cache", "where generated identities are kept between runs")
	only := fs.String("only", "", "comma-separated scenario ids to run (default: all)")
	repo := fs.String("repo", ".", "the module root")
	readme := fs.String("readme", "", "rewrite this README's generated performance table from OUT/results-full.json, then exit")
	nats := fs.String("nats-server", "", "nats-server binary for the NATS baseline (default: PATH, then GOPATH/bin); 2.15 or later")
	rounds := fs.Int("rounds", 0, "load rounds per figure (default 1 with --quick, 3 otherwise; odd, so the median is a round)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *rounds < 0 || (*rounds > 0 && *rounds%2 == 0) {
		fmt.Fprintln(os.Stderr, "iotkv-bench: --rounds must be odd (the median is then a measured round)")
		os.Exit(2)
	}
	if *readme != "" {
		if err := updateReadme(*readme, filepath.Join(*out, "results-full.json")); err != nil {
			fmt.Fprintln(os.Stderr, "iotkv-bench:", err)
			os.Exit(1)
		}
		return
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg := bench.Config{Quick: *quick, Rounds: *rounds, NATS: *nats, Out: *out, Cache: *cache, Repo: *repo, Logger: log}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	err := bench.Run(ctx, cfg)
	bench.StopAll()
	if err != nil {
		log.Error("bench failed", "err", err)
		os.Exit(1)
	}
}

// updateReadme rewrites readme's generated performance table from the
// results JSON at results.
func updateReadme(readme, results string) error {
	data, err := os.ReadFile(results)
	if err != nil {
		return err
	}
	table, err := bench.ReadmeTable(data)
	if err != nil {
		return err
	}
	old, err := os.ReadFile(readme)
	if err != nil {
		return err
	}
	updated, err := bench.UpdateReadme(old, table)
	if err != nil {
		return fmt.Errorf("%s: %w", readme, err)
	}
	return os.WriteFile(readme, updated, 0o644)
}
