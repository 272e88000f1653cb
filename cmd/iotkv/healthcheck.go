package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/iotkv/iotkv/internal/cliutil"
)

// healthcheckCmd asks a server's /readyz (or any URL) once and exits 0
// when it answers 200: the container image's HEALTHCHECK, and a probe for
// scripts. It needs no account: /healthz and /readyz are open.
func healthcheckCmd(args []string) error {
	c, _, err := parseHealthcheck(args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL.String(), nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: c.TLS}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s: %s %s", c.URL, resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Printf("%s: %s\n", c.URL, resp.Status)
	return nil
}

// healthcheckConfig is what healthcheck's flags make.
type healthcheckConfig struct {
	URL     *url.URL
	TLS     *tls.Config
	Timeout time.Duration
}

// parseHealthcheck reads healthcheck's flags (the CA file too), and
// returns the flag set it used.
func parseHealthcheck(args []string) (*healthcheckConfig, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	u := fs.String("url", "https://127.0.0.1:8443/readyz", "URL to GET; healthy when it answers 200")
	caFile := fs.String("ca", "", "CA certificate the server's is checked against (default: the system's roots)")
	timeout := fs.Duration("timeout", 5*time.Second, "time allowed for the whole request")
	if pos, err := cliutil.Parse(fs, args); err != nil {
		return nil, nil, err
	} else if len(pos) > 0 {
		return nil, nil, cliutil.Usagef("healthcheck: unexpected argument %q", pos[0])
	}
	target, err := url.Parse(*u)
	if err != nil || (target.Scheme != "https" && target.Scheme != "http") || target.Host == "" {
		return nil, nil, cliutil.Usagef("healthcheck: --url %q: want http(s)://host:port/path", *u)
	}
	if *timeout <= 0 {
		return nil, nil, cliutil.Usagef("healthcheck: --timeout must be positive")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return nil, nil, fmt.Errorf("healthcheck: read CA: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("healthcheck: %s holds no PEM certificate", *caFile)
		}
	}
	return &healthcheckConfig{URL: target, TLS: tc, Timeout: *timeout}, fs, nil
}
