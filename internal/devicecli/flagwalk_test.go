package devicecli

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/iotkv/iotkv/internal/cliutil"
	"github.com/iotkv/iotkv/internal/flagwalk"
)

// Every flag of every device subcommand (iotkv device and iotkv-device
// run this same code) changes the configuration the subcommand runs with,
// or is refused for it.
func TestEveryFlagDoesSomething(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("IOTKV_PASSWORD", "from-the-environment")
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pw := write("pw", "from-a-file\n")
	shared := func() map[string]flagwalk.Row {
		return map[string]flagwalk.Row{
			"log-level": {Value: "debug"}, "log-format": {Value: "json"},
			"name": {Value: "dev2"}, "password-file": {Value: pw},
			"certs": {Value: filepath.Join(dir, "other-pki")},
			"ca":    {Value: "other-ca.crt"}, "cert": {Value: "other.crt"}, "key": {Value: "other.key"},
			"edge": {Value: "127.0.0.1:1883"}, "rest": {Value: "https://127.0.0.1:1443"},
			"queue": {Value: filepath.Join(dir, "q")}, "queue-max-bytes": {Value: "1024"},
			"flush-timeout": {Value: "3s"}, "linger": {Value: "1ms"}, "window": {Value: "2"},
			"config":       {Value: write("device.yaml", "window: 3\n")},
			"print-config": {Err: cliutil.ErrConfigPrinted},
		}
	}
	base := []string{"--name", "dev1", "--certs", "pki"}
	for _, tc := range []struct {
		sub  string
		args []string
		rows func(map[string]flagwalk.Row)
	}{
		{"put", []string{"k", "v"}, func(r map[string]flagwalk.Row) {
			r["rest"] = flagwalk.Row{Value: "https://127.0.0.1:1443", Refused: true}
			r["ttl"] = flagwalk.Row{Value: "60"}
		}},
		{"del", []string{"k"}, func(r map[string]flagwalk.Row) {
			r["rest"] = flagwalk.Row{Value: "https://127.0.0.1:1443", Refused: true}
		}},
		{"shell", nil, func(map[string]flagwalk.Row) {}},
		{"get", []string{"k"}, func(r map[string]flagwalk.Row) {
			for _, n := range []string{"edge", "queue", "queue-max-bytes", "flush-timeout", "linger", "window"} {
				r[n] = flagwalk.Row{Value: r[n].Value, Refused: true}
			}
			r["config"] = flagwalk.Row{Value: write("get.yaml", "rest: https://127.0.0.1:2443\n")}
		}},
		{"history", []string{"k"}, func(r map[string]flagwalk.Row) {
			for _, n := range []string{"edge", "queue", "queue-max-bytes", "flush-timeout", "linger", "window"} {
				r[n] = flagwalk.Row{Value: r[n].Value, Refused: true}
			}
			r["config"] = flagwalk.Row{Value: write("history.yaml", "rest: https://127.0.0.1:2443\n")}
			r["since"] = flagwalk.Row{Value: "1h"}
		}},
	} {
		r := shared()
		tc.rows(r)
		flagwalk.Walk(t, flagwalk.Command{
			Name: "device " + tc.sub, Base: append(append([]string(nil), base...), tc.args...), Rows: r,
			Parse: func(a []string) (any, *flag.FlagSet, error) { return parseDevice(tc.sub, a, io.Discard) },
		})
	}

	sim := shared()
	for _, n := range []string{"name", "ca", "cert", "key"} {
		sim[n] = flagwalk.Row{Value: sim[n].Value, Refused: true}
	}
	sim["rest"] = flagwalk.Row{Value: "https://127.0.0.1:1443", With: []string{"--verify"}}
	for n, v := range map[string]string{"devices": "3", "rate": "2", "duration": "3s", "prefix": "s-", "accounts": "a.json", "keys": "4"} {
		sim[n] = flagwalk.Row{Value: v}
	}
	sim["verify"] = flagwalk.Row{}
	flagwalk.Walk(t, flagwalk.Command{
		Name: "device simulate", Base: []string{"--certs", "pki"}, Rows: sim,
		Parse: func(a []string) (any, *flag.FlagSet, error) { return parseSimulate(a, io.Discard) },
	})

	flagwalk.Walk(t, flagwalk.Command{
		Name: "device enroll", Base: base,
		Parse: func(a []string) (any, *flag.FlagSet, error) { return parseEnroll(a, io.Discard) },
		Rows: map[string]flagwalk.Row{
			"name": {Value: "dev2"}, "certs": {Value: "other-pki"}, "force": {},
			"config": {Value: write("enroll.yaml", "force: true\n")}, "print-config": {Err: cliutil.ErrConfigPrinted},
		},
	})
}

// A device configuration file is shared by every subcommand: the flags
// get does not use are refused on its command line, not from the file.
func TestSharedDeviceConfigIsNotRefused(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("IOTKV_PASSWORD", "pw")
	conf := filepath.Join(dir, "device.yaml")
	if err := os.WriteFile(conf, []byte("name: dev1\ncerts: pki\nedge: 127.0.0.1:1883\nrest: https://127.0.0.1:1443\nqueue: q\nwindow: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"get", "k"}, {"history", "k"}, {"put", "k", "v"}, {"del", "k"}} {
		if _, _, err := parseDevice(args[0], append(args[1:], "--config", conf), io.Discard); err != nil {
			t.Errorf("device %s --config %s: %v", args[0], conf, err)
		}
	}
	if _, _, err := parseSimulate([]string{"--config", conf}, io.Discard); err != nil {
		t.Errorf("device simulate --config %s: %v", conf, err)
	}
}
