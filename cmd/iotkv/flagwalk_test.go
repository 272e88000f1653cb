package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/cliutil"
	"github.com/iotkv/iotkv/internal/flagwalk"
)

// file writes content to a new file in dir and returns its path.
func file(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// common are the rows of the flags most commands share.
func common(t *testing.T, dir string) map[string]flagwalk.Row {
	return map[string]flagwalk.Row{
		"log-level":  {Value: "debug"},
		"log-format": {Value: "json"},
		"certs":      {Value: filepath.Join(dir, "other-pki")},
		"ca":         {Value: "other-ca.crt"},
		"cert":       {Value: "other.crt"},
		"key":        {Value: "other.key"},
		"addr-file":  {Value: filepath.Join(dir, "addrs.json")},
		"crl":        {Value: file(t, dir, "crl.pem", "any CRL: it is read when the server starts\n")},
		"http-addr":  {Value: "127.0.0.1:1443"},
		// rest-client-cert: the default is optional.
		"rest-client-cert": {Value: "require"},
		"print-config":     {Err: cliutil.ErrConfigPrinted},
	}
}

func rows(maps ...map[string]flagwalk.Row) map[string]flagwalk.Row {
	out := map[string]flagwalk.Row{}
	for _, m := range maps {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func cfg[T any](f func([]string) (T, *flag.FlagSet, error)) flagwalk.Parse {
	return func(args []string) (any, *flag.FlagSet, error) { return f(args) }
}

// Every flag of every server and admin command changes the configuration
// the command runs with, or is refused in that combination (the device
// subcommands' walk is in internal/devicecli).
func TestEveryFlagDoesSomething(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("IOTKV_PASSWORD", "from-the-environment")
	pw := file(t, dir, "pw", "from-a-file\n")
	base := []string{"--accounts", "a.json", "--certs", "pki"}

	edgeBase := append([]string{"--id", "e1", "--data", dir}, base...)
	restore := []string{"--restore-from", "https://localhost:9443"}
	flagwalk.Walk(t, flagwalk.Command{
		Name: "edge", Base: edgeBase,
		Parse: cfg(func(a []string) (*edgeConfig, *flag.FlagSet, error) { return parseEdge(a, io.Discard) }),
		Rows: rows(common(t, dir), map[string]flagwalk.Row{
			"id": {Value: "e2"}, "data": {Value: filepath.Join(dir, "d2")}, "accounts": {Value: "b.json"},
			"mqtt-addr": {Value: "127.0.0.1:1883"}, "max-packet-size": {Value: "2048"},
			"max-key-bytes": {Value: "64"}, "max-value-bytes": {Value: "1024"}, "max-batch-ops": {Value: "10"},
			"connect-timeout": {Value: "3s"}, "max-clients": {Value: "5"}, "max-keepalive": {Value: "60"},
			"memtable-mib":          {Value: "8"},
			"restore-from":          {Value: "s3://bkt/p"},
			"name":                  {Value: "other", With: restore},
			"password-file":         {Value: pw, With: restore},
			"force":                 {With: restore},
			"s3-endpoint":           {Value: "http://127.0.0.1:9000", With: []string{"--restore-from", "s3://bkt/p"}},
			"s3-region":             {Value: "eu-west-1", With: []string{"--restore-from", "s3://bkt/p"}},
			"backup-retain-changes": {Value: "10"}, "backup-retain-bytes": {Value: "1000"}, "backup-retain-age": {Value: "1h"}, "max-backup-lag": {Value: "2s"},
			"master":     {Value: "mqtts://localhost:8884"},
			"quota-keys": {Value: "5"}, "quota-bytes": {Value: "1MiB"}, "rate-ops": {Value: "5"},
			"history-retain": {Value: "1d"}, "history-max-bytes": {Value: "2GiB"},
			"max-watchers": {Value: "5"}, "max-watchers-per-account": {Value: "2"},
			"config": {Value: file(t, dir, "edge.yaml", "max-clients: 7\n")},
		}),
	})

	masterBase := append([]string{"--edges", "e1=localhost:8883", "--data", dir}, base...)
	s3Base := append([]string{"--edges", "e1=localhost:8883", "--store", "s3://bkt/p"}, base...)
	flagwalk.Walk(t, flagwalk.Command{
		Name: "master", Base: masterBase,
		Parse: cfg(func(a []string) (*masterConfig, *flag.FlagSet, error) { return parseMaster(a, io.Discard) }),
		Rows: rows(common(t, dir), map[string]flagwalk.Row{
			"data": {Value: filepath.Join(dir, "d2")}, "accounts": {Value: "b.json"},
			"store":             {Value: "s3://bkt/other", Base: s3Base},
			"s3-endpoint":       {Value: "http://127.0.0.1:9000", Base: s3Base},
			"s3-region":         {Value: "eu-west-1", Base: s3Base},
			"s3-compress":       {Value: "none", Base: s3Base},
			"flush-interval":    {Value: "3s", Base: s3Base},
			"flush-bytes":       {Value: "2MiB", Base: s3Base},
			"lease-ttl":         {Value: "3s", Base: s3Base},
			"password-file":     {Value: pw},
			"edges":             {Value: "e2=localhost:8883"},
			"listen-edges":      {Value: "127.0.0.1:0"},
			"name":              {Value: "m2"},
			"snapshot-interval": {Value: "3s"}, "max-pending": {Value: "5"},
			"config": {Value: file(t, dir, "master.yaml", "max-pending: 7\n")},
		}),
	})

	ca := filepath.Join(dir, "ca")
	if err := certs.Init(ca, false); err != nil {
		t.Fatal(err)
	}
	certsCmd := func(sub string, base []string, r map[string]flagwalk.Row) {
		r["dir"] = flagwalk.Row{Value: filepath.Join(dir, "other")}
		flagwalk.Walk(t, flagwalk.Command{
			Name: "certs " + sub, Base: append([]string{"--dir", ca}, base...),
			Parse: cfg(func(a []string) (*certsConfig, *flag.FlagSet, error) { return parseCerts(append([]string{sub}, a...)) }),
			Rows:  r,
		})
	}
	request := map[string]flagwalk.Row{"name": {Value: "d2"}, "role": {Value: "client"}, "host": {Value: "a.example"}, "days": {Value: "10"}, "force": {}}
	certsCmd("init", nil, map[string]flagwalk.Row{"force": {}})
	certsCmd("issue", []string{"--name", "d1", "--role", "device"}, rows(request))
	certsCmd("sign", []string{"--name", "d1", "--role", "device", "--csr", file(t, dir, "a.csr", "request a")}, rows(request, map[string]flagwalk.Row{
		"csr": {Value: file(t, dir, "b.csr", "request b")}, "out": {Value: "d1.crt"},
	}))
	certsCmd("revoke", []string{"--name", "d1"}, map[string]flagwalk.Row{
		"name": {Value: "d2"}, "serial": {Value: "0b", Base: []string{"--dir", ca, "--serial", "0a"}}, "days": {Value: "3"},
	})
	certsCmd("crl", nil, map[string]flagwalk.Row{"days": {Value: "3"}})
	certsCmd("list", nil, map[string]flagwalk.Row{})

	users := func(sub string, base []string, r map[string]flagwalk.Row) {
		r["file"] = flagwalk.Row{Value: "b.json"}
		flagwalk.Walk(t, flagwalk.Command{
			Name: "users " + sub, Base: append([]string{"--file", "a.json"}, base...),
			Parse: cfg(func(a []string) (*usersConfig, *flag.FlagSet, error) {
				return parseUsers(append([]string{sub}, a...), strings.NewReader("from-stdin\n"))
			}),
			Rows: r,
		})
	}
	notUsed := map[string]flagwalk.Row{"role": {Value: "admin", Refused: true}, "password": {Value: "p", Refused: true},
		"password-stdin": {Refused: true}, "cost": {Value: "11", Refused: true}}
	pwRows := map[string]flagwalk.Row{"name": {Value: "n2"}, "password": {Value: "p2"}, "cost": {Value: "11"}}
	users("add", []string{"--name", "n", "--role", "device", "--password", "p"}, rows(pwRows, map[string]flagwalk.Row{
		"role": {Value: "admin"}, "password-stdin": {Base: []string{"--file", "a.json", "--name", "n", "--role", "device"}},
	}))
	users("passwd", []string{"--name", "n", "--password", "p"}, rows(pwRows, map[string]flagwalk.Row{
		"role": {Value: "admin", Refused: true}, "password-stdin": {Base: []string{"--file", "a.json", "--name", "n"}},
	}))
	users("list", nil, rows(notUsed, map[string]flagwalk.Row{"name": {Value: "n", Refused: true}}))
	for _, sub := range []string{"del", "disable", "enable"} {
		users(sub, []string{"--name", "n"}, rows(notUsed, map[string]flagwalk.Row{"name": {Value: "n2"}}))
	}

	flagwalk.Walk(t, flagwalk.Command{
		Name:  "demo",
		Parse: cfg(func(a []string) (any, *flag.FlagSet, error) { return parseDemo(a, os.Stdout) }),
		Rows: map[string]flagwalk.Row{
			"log-level": {Value: "debug"}, "log-format": {Value: "json"}, "dir": {Value: "d2"},
			"duration": {Value: "5s"}, "devices": {Value: "3"}, "rate": {Value: "2"},
		},
	})
	flagwalk.Walk(t, flagwalk.Command{
		Name:  "healthcheck",
		Parse: cfg(parseHealthcheck),
		Rows: map[string]flagwalk.Row{
			"url": {Value: "https://127.0.0.1:9443/readyz"}, "ca": {Value: filepath.Join(ca, "ca.crt")}, "timeout": {Value: "1s"},
		},
	})
}
