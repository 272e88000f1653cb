package cliutil

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testFlags is a flag set like a command's, with one flag of each kind.
type testFlags struct {
	fs      *flag.FlagSet
	addr    *string
	clients *int64
	timeout *time.Duration
	verbose *bool
	edges   *string
	token   *string
	pwFile  *string
}

func newTestFlags() *testFlags {
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	return &testFlags{
		fs:      fs,
		addr:    fs.String("http-addr", ":8443", "listen address"),
		clients: fs.Int64("max-clients", 100, "clients"),
		timeout: fs.Duration("connect-timeout", 10*time.Second, "timeout"),
		verbose: fs.Bool("verbose", false, "verbose"),
		edges:   fs.String("edges", "", "id=host:port,..."),
		token:   fs.String("api-token", "", "a secret"),
		pwFile:  fs.String("password-file", "", "a file name"),
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEnvName(t *testing.T) {
	for in, want := range map[string]string{"http-addr": "IOTKV_HTTP_ADDR", "id": "IOTKV_ID", "max-key-bytes": "IOTKV_MAX_KEY_BYTES"} {
		if got := EnvName(in); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", in, got, want)
		}
	}
}

// Flag > environment > file > default, for every kind of flag.
func TestParseConfigPrecedence(t *testing.T) {
	file := writeFile(t, `
http-addr: ":1111"
max-clients: 5
connect-timeout: 3s
verbose: true
edges: [a=h1:1, b=h2:2]
`)
	t.Setenv("IOTKV_MAX_CLIENTS", "7")
	t.Setenv("IOTKV_CONNECT_TIMEOUT", "4s")
	t.Setenv("IOTKV_UNRELATED", "x") // names no flag: left alone
	f := newTestFlags()
	pos, err := ParseConfig(f.fs, []string{"--config", file, "arg", "--connect-timeout", "5s"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(pos) != 1 || pos[0] != "arg" {
		t.Errorf("positional = %q", pos)
	}
	if *f.addr != ":1111" || *f.clients != 7 || *f.timeout != 5*time.Second || !*f.verbose || *f.edges != "a=h1:1,b=h2:2" {
		t.Errorf("got addr %q clients %d timeout %v verbose %v edges %q; want file, env, flag, file, file",
			*f.addr, *f.clients, *f.timeout, *f.verbose, *f.edges)
	}
	if *f.token != "" {
		t.Errorf("unset flag changed: %q", *f.token)
	}
}

// IOTKV_CONFIG names the file like --config does.
func TestParseConfigFileFromEnv(t *testing.T) {
	t.Setenv("IOTKV_CONFIG", writeFile(t, "max-clients: 9\n"))
	f := newTestFlags()
	if _, err := ParseConfig(f.fs, nil, nil); err != nil {
		t.Fatal(err)
	}
	if *f.clients != 9 {
		t.Errorf("max-clients = %d, want 9 from the file named by IOTKV_CONFIG", *f.clients)
	}
}

func TestParseConfigErrorsNameTheKeyAndFile(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"unknown key", "http-addr: x\nmax-clinets: 5\n", []string{"max-clinets", "line 2", "unknown key"}},
		{"bad int", "max-clients: lots\n", []string{"max-clients", "line 1", `"lots"`}},
		{"bad duration", "connect-timeout: 10\n", []string{"connect-timeout", `"10"`}},
		{"bad bool", "verbose: yes\n", []string{"verbose", `"yes"`}},
		{"twice", "max-clients: 1\nmax-clients: 2\n", []string{"max-clients"}},
		{"null", "http-addr:\n", []string{"http-addr", "no value"}},
		{"mapping value", "http-addr: {a: 1}\n", []string{"http-addr", "mapping"}},
		{"nested list", "edges: [[a]]\n", []string{"edges", "list"}},
		{"not a mapping", "- a\n- b\n", []string{"mapping"}},
		{"config in config", "config: other.yaml\n", []string{"config", "unknown key"}},
		{"print-config in config", "print-config: true\n", []string{"print-config", "unknown key"}},
		{"syntax", "http-addr: [\n", []string{"yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := writeFile(t, tc.body)
			_, err := ParseConfig(newTestFlags().fs, []string{"--config", file}, nil)
			var ue *UsageError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v, want a UsageError (exit 2)", err)
			}
			for _, w := range append(tc.want, file) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := ParseConfig(newTestFlags().fs, []string{"--config", "/nonexistent/x.yaml"}, nil)
		var ue *UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "/nonexistent/x.yaml") {
			t.Fatalf("err = %v, want a UsageError naming the file", err)
		}
	})
	t.Run("bad env", func(t *testing.T) {
		t.Setenv("IOTKV_MAX_CLIENTS", "many")
		_, err := ParseConfig(newTestFlags().fs, nil, nil)
		var ue *UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "IOTKV_MAX_CLIENTS") {
			t.Fatalf("err = %v, want a UsageError naming IOTKV_MAX_CLIENTS", err)
		}
	})
}

// An empty file or one of comments only changes nothing.
func TestParseConfigEmptyFile(t *testing.T) {
	for _, body := range []string{"", "# nothing set\n"} {
		f := newTestFlags()
		if _, err := ParseConfig(f.fs, []string{"--config", writeFile(t, body)}, nil); err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		if *f.clients != 100 {
			t.Errorf("%q: max-clients = %d", body, *f.clients)
		}
	}
}

// --print-config writes a file --config reads back to the same values,
// each with its source, secrets masked.
func TestPrintConfigRoundTrip(t *testing.T) {
	t.Setenv("IOTKV_HTTP_ADDR", "127.0.0.1:9")
	file := writeFile(t, "max-clients: 5\nedges: [a=h:1]\napi-token: hunter2\n")
	f := newTestFlags()
	var out bytes.Buffer
	_, err := ParseConfig(f.fs, []string{"--config", file, "--verbose", "--print-config"}, &out)
	if !errors.Is(err, ErrConfigPrinted) {
		t.Fatalf("err = %v, want ErrConfigPrinted", err)
	}
	s := out.String()
	for _, want := range []string{
		`http-addr: 127.0.0.1:9 # env IOTKV_HTTP_ADDR`, `max-clients: 5 # file`, `verbose: true # flag`,
		`connect-timeout: 10s # default`, `api-token: '***' # file`, `password-file: "" # default`, "file: " + file,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("--print-config lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "hunter2") {
		t.Errorf("--print-config shows a secret:\n%s", s)
	}
	if strings.Contains(s, "config:") {
		t.Errorf("--print-config lists its own flags:\n%s", s)
	}
	os.Unsetenv("IOTKV_HTTP_ADDR")
	g := newTestFlags()
	if _, err := ParseConfig(g.fs, []string{"--config", writeFile(t, s)}, nil); err != nil {
		t.Fatalf("the printed configuration does not read back: %v\n%s", err, s)
	}
	if *g.addr != *f.addr || *g.clients != *f.clients || *g.verbose != *f.verbose || *g.edges != *f.edges || *g.timeout != *f.timeout {
		t.Errorf("read back %q %d %v %q %v, printed from %q %d %v %q %v",
			*g.addr, *g.clients, *g.verbose, *g.edges, *g.timeout, *f.addr, *f.clients, *f.verbose, *f.edges, *f.timeout)
	}
}
