package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/iotkv/iotkv/certs"
)

func masterCmd(args []string) error {
	return errors.New("master: not built yet")
}

func restoreEdge(ctx context.Context, log *slog.Logger, url, id, name, password, dataDir string, paths certs.Paths) error {
	return errors.New("restore: not built yet")
}
