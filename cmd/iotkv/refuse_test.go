package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/iotkv/iotkv/internal/cliutil"
)

// A flag that a combination of flags would ignore is refused: exit 2 with a
// one-line reason naming it, before anything starts.
func TestIgnoredFlagsAreRefused(t *testing.T) {
	edge := []string{"edge", "--id", "e1", "--data", t.TempDir(), "--accounts", "a.json", "--certs", "pki"}
	master := []string{"master", "--accounts", "a.json", "--edges", "e1=localhost:8883", "--certs", "pki"}
	sim := []string{"device", "simulate", "--certs", "pki", "--devices", "1", "--duration", "1s"}
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{append(master, "--store", "s3://bkt/p", "--max-pending", "5"), "--max-pending"},
		{append(master, "--data", "d", "--s3-endpoint", "http://127.0.0.1:1"), "--s3-endpoint"},
		{append(master, "--data", "d", "--s3-region", "eu"), "--s3-region"},
		{append(master, "--data", "d", "--s3-compress", "none"), "--s3-compress"},
		{append(master, "--data", "d", "--flush-interval", "2s"), "--flush-interval"},
		{append(master, "--data", "d", "--flush-bytes", "2MiB"), "--flush-bytes"},
		{append(master, "--data", "d", "--lease-ttl", "2s"), "--lease-ttl"},
		{append(edge, "--name", "x"), "--name"},
		{append(edge, "--password-file", "p"), "--password-file"},
		{append(edge, "--force"), "--force"},
		{append(edge, "--s3-endpoint", "http://127.0.0.1:1"), "--s3-endpoint"},
		{append(edge, "--s3-region", "eu"), "--s3-region"},
		{append(edge, "--restore-from", "https://localhost:9443", "--s3-region", "eu"), "--s3-region"},
		{append(edge, "--restore-from", "s3://bkt/p", "--password-file", "p"), "--password-file"},
		{append(sim, "--name", "x"), "--name"},
		{append(sim, "--ca", "ca.crt"), "--ca"},
		{append(sim, "--cert", "x.crt"), "--cert"},
		{append(sim, "--key", "x.key"), "--key"},
	} {
		err := run(tc.args)
		var ue *cliutil.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.flag) || strings.Contains(err.Error(), "\n") {
			t.Errorf("iotkv %s: %v; want a one-line usage error naming %s", strings.Join(tc.args, " "), err, tc.flag)
		}
	}
}
