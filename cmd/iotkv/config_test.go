package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

// cleanEnv is the test's environment without IOTKV_ variables, plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "IOTKV_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// runEnv runs the iotkv binary with env and returns its exit code, its
// standard output and its standard error.
func runEnv(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(iotkvBin, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stdout.String(), stderr.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, stdout.String(), stderr.String()
}

// printedConfig runs `iotkv ARGS --print-config` and returns the values
// and the sources (the line comments) it printed.
func printedConfig(t *testing.T, env []string, args ...string) (vals, srcs map[string]string) {
	t.Helper()
	code, out, errOut := runEnv(t, env, append(args, "--print-config")...)
	if code != 0 {
		t.Fatalf("iotkv %s --print-config: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("--print-config output is not YAML: %v\n%s", err, out)
	}
	vals, srcs = map[string]string{}, map[string]string{}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i].Value, m.Content[i+1]
		vals[k], srcs[k] = v.Value, strings.TrimPrefix(v.LineComment, "# ")
	}
	return vals, srcs
}

var deployDir = filepath.Join("..", "..", "deploy")

// Every example configuration parses, and every key it sets is taken.
func TestDeployExamplesParse(t *testing.T) {
	for _, tc := range []struct{ file, cmd string }{
		{"edge.yaml", "edge"}, {"master.yaml", "master"}, {"device.yaml", "device put"},
	} {
		file := filepath.Join(deployDir, tc.file)
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var keys map[string]any
		if err := yaml.Unmarshal(raw, &keys); err != nil {
			t.Fatal(err)
		}
		_, srcs := printedConfig(t, cleanEnv(), append(strings.Fields(tc.cmd), "--config", file)...)
		for k := range keys {
			if srcs[k] != "file" {
				t.Errorf("%s: key %s: source %q, want file", tc.file, k, srcs[k])
			}
		}
		if len(keys) < 10 {
			t.Errorf("%s: only %d keys", tc.file, len(keys))
		}
	}
}

// `iotkv edge --config deploy/edge.yaml` is the edge the same values
// given as flags make; the environment overrides the file and a flag the
// environment; that edge starts and serves.
func TestEdgeConfigFileEqualsFlags(t *testing.T) {
	file := filepath.Join(deployDir, "edge.yaml")
	fromFile, srcs := printedConfig(t, cleanEnv(), "edge", "--config", file)
	var flags []string
	for k, v := range fromFile {
		if srcs[k] == "file" {
			flags = append(flags, "--"+k+"="+v)
		}
	}
	fromFlags, flagSrcs := printedConfig(t, cleanEnv(), append([]string{"edge"}, flags...)...)
	if len(flags) < 10 {
		t.Fatalf("only %d values from %s", len(flags), file)
	}
	for k, v := range fromFile {
		if fromFlags[k] != v {
			t.Errorf("%s: %q from the file, %q from flags", k, v, fromFlags[k])
		}
		if srcs[k] == "file" && flagSrcs[k] != "flag" {
			t.Errorf("%s: source %q with flags", k, flagSrcs[k])
		}
	}
	if len(fromFlags) != len(fromFile) {
		t.Errorf("%d values from flags, %d from the file", len(fromFlags), len(fromFile))
	}

	env := cleanEnv("IOTKV_MAX_CLIENTS=77", "IOTKV_MAX_KEEPALIVE=60")
	vals, srcs := printedConfig(t, env, "edge", "--config", file, "--max-keepalive", "30")
	if vals["max-clients"] != "77" || srcs["max-clients"] != "env IOTKV_MAX_CLIENTS" {
		t.Errorf("max-clients %q from %q: the environment does not override the file", vals["max-clients"], srcs["max-clients"])
	}
	if vals["max-keepalive"] != "30" || srcs["max-keepalive"] != "flag" {
		t.Errorf("max-keepalive %q from %q: a flag does not override the environment", vals["max-keepalive"], srcs["max-keepalive"])
	}

	// The example's paths are the package's; point them at a test PKI.
	p := testenv.NewPKI(t)
	p.Identity(t, "edge1", iotkv.RoleEdge)
	p.Identity(t, "dev", iotkv.RoleDevice)
	addrFile := filepath.Join(t.TempDir(), "addrs.json")
	cmd := exec.Command(iotkvBin, "edge", "--config", file)
	cmd.Env = cleanEnv("IOTKV_DATA="+t.TempDir(), "IOTKV_CERTS="+p.Dir, "IOTKV_ACCOUNTS="+p.Accounts,
		"IOTKV_MQTT_ADDR=127.0.0.1:0", "IOTKV_HTTP_ADDR=127.0.0.1:0", "IOTKV_ADDR_FILE="+addrFile)
	e := runEdgeProc(t, p, cmd, addrFile)
	if err := e.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := e.wait(t, 60e9); code != 0 {
		t.Fatalf("edge exit %d after SIGINT:\n%s", code, e.out)
	}
	if !strings.Contains(e.out.String(), `"msg":"listening"`) {
		t.Errorf("the edge did not log in JSON as %s says:\n%s", file, e.out)
	}
}

// A typo in a key, a bad value in the file or in the environment exits 2
// naming it, for edge, master and the device commands.
func TestConfigMistakesExit2(t *testing.T) {
	dir := t.TempDir()
	typo := filepath.Join(dir, "typo.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	badDevice := filepath.Join(dir, "bad-device.yaml")
	if err := os.WriteFile(typo, []byte("log-level: info\nmax-clinets: 5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("log-level: info\nid: e\nmax-clients: many\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(badDevice, []byte("log-level: info\nlinger: soon\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  string
		want []string
	}{
		{[]string{"edge", "--config", typo}, "", []string{typo, "line 2", "max-clinets", "unknown key"}},
		{[]string{"master", "--config", typo}, "", []string{typo, "max-clinets"}},
		{[]string{"device", "get", "--config", typo, "k"}, "", []string{typo, "max-clinets"}},
		{[]string{"edge", "--config", bad}, "", []string{bad, "line 3", "max-clients", `"many"`}},
		{[]string{"device", "simulate", "--config", badDevice}, "", []string{badDevice, "line 2", "linger", `"soon"`}},
		{[]string{"edge", "--id", "e"}, "IOTKV_MAX_CLIENTS=many", []string{"IOTKV_MAX_CLIENTS", `"many"`}},
		{[]string{"master", "--config", filepath.Join(dir, "missing.yaml")}, "", []string{"missing.yaml"}},
	} {
		code, _, errOut := runEnv(t, cleanEnv(tc.env), tc.args...)
		if code != 2 {
			t.Errorf("%v %s: exit %d, want 2: %s", tc.args, tc.env, code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%v %s: error %q does not name %q", tc.args, tc.env, errOut, w)
			}
		}
		if strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
			t.Errorf("%v: error is not one line: %q", tc.args, errOut)
		}
	}
}
