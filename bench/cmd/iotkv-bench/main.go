// Command iotkv-bench runs iotkv's benchmark scenarios on loopback and
// writes bench/results/report.md, raw JSON and PNG plots. See bench/.
//
//	iotkv-bench [--quick] [--out DIR] [--cache DIR] [--only 1,2,...]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
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
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg := bench.Config{Quick: *quick, Out: *out, Cache: *cache, Repo: *repo, Logger: log}
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
