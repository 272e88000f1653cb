package interop_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotkv/iotkv/internal/testenv"
)

// TestOperationsGuide runs the operator's guide (docs/operations.md) and
// the README's short version of it, command by command, each in a fresh
// system: the built iotkv and iotkv-device on PATH, the packaged
// configuration files in place, and /etc/iotkv and /var/lib/iotkv moved to
// a temp dir and the ports 8883 and 8443 moved to free ones (in the
// commands and in the files). Blocks marked ```sh system
// (dpkg, systemctl, chown, journalctl) are not run; those that start, stop
// or restart iotkv-edge (dpkg -i restarts a running one) are played by
// running `iotkv edge --config /etc/iotkv/edge.yaml` here.
func TestOperationsGuide(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "tar"} {
		testenv.RequireTool(t, tool)
	}
	bin := t.TempDir()
	for _, cmd := range []string{"iotkv", "iotkv-device"} {
		build := exec.Command("go", "build", "-o", filepath.Join(bin, cmd), "./cmd/"+cmd)
		build.Dir = ".."
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", cmd, err, out)
		}
	}
	t.Run("docs/operations.md", func(t *testing.T) {
		runOperations(t, bin, docCommands(t, "../docs/operations.md", "", ""), 20)
	})
	t.Run("README", func(t *testing.T) {
		runOperations(t, bin, docCommands(t, "../README.md", "## Operator's guide", "## "), 5)
	})
}

// runOperations runs cmds (at least min of them outside system blocks) on
// a fresh system, as TestOperationsGuide says.
func runOperations(t *testing.T, bin string, cmds []docCommand, min int) {
	root := t.TempDir()
	etc, state := filepath.Join(root, "etc", "iotkv"), filepath.Join(root, "var", "lib", "iotkv")
	local := strings.NewReplacer("/etc/iotkv", etc, "/var/lib/iotkv", state)
	// What the .deb installs in /etc/iotkv, with the servers on loopback.
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	// Ports of its own, free now: a README walkthrough elsewhere on the
	// machine may hold 8883 and 8443.
	mqttPort, httpPort := freePort(t), freePort(t)
	ports := strings.NewReplacer(`":8883"`, `"127.0.0.1:`+mqttPort+`"`, `":8443"`, `"127.0.0.1:`+httpPort+`"`, `":9443"`, `"127.0.0.1:`+freePort(t)+`"`)
	for _, f := range []string{"edge.yaml", "master.yaml", "device.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", "deploy", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(etc, f), []byte(ports.Replace(local.Replace(string(data)))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The servers' ports in the commands, and the edge's name in
	// device.yaml: localhost here.
	local = strings.NewReplacer("/etc/iotkv", etc, "/var/lib/iotkv", state, "localhost:8443", "localhost:"+httpPort)
	device := filepath.Join(etc, "device.yaml")
	data, err := os.ReadFile(device)
	if err != nil {
		t.Fatal(err)
	}
	here := strings.NewReplacer("edge1.example:8883", "localhost:"+mqttPort, "edge1.example:8443", "localhost:"+httpPort)
	if err := os.WriteFile(device, []byte(here.Replace(string(data))), 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The edge systemd would run.
	var edge *exec.Cmd
	logFile := filepath.Join(root, "edge.log")
	edgeLog, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer edgeLog.Close()
	log := func() string { b, _ := os.ReadFile(logFile); return string(b) }
	starts := 0
	start := func(step int) {
		edge = exec.CommandContext(ctx, filepath.Join(bin, "iotkv"), "edge", "--config", filepath.Join(etc, "edge.yaml"))
		edge.Dir, edge.Env = work, env
		edge.Stdout, edge.Stderr = edgeLog, edgeLog
		edge.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := edge.Start(); err != nil {
			t.Fatalf("step %d: start the edge: %v", step, err)
		}
		starts++
		if err := waitReady(filepath.Join(etc, "certs", "ca.crt"), "https://localhost:"+httpPort+"/readyz", 60*time.Second); err != nil {
			t.Fatalf("step %d: the edge is not ready: %v\n%s", step, err, log())
		}
	}
	stop := func(step int) {
		if err := edge.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := edge.Wait(); err != nil {
			t.Fatalf("step %d: the edge exited with %v on SIGTERM:\n%s", step, err, log())
		}
		edge = nil
	}
	t.Cleanup(func() {
		if edge != nil {
			_ = edge.Process.Kill()
			_ = edge.Wait()
		}
	})

	run := 0
	for i, c := range cmds {
		if c.system {
			switch {
			case strings.HasPrefix(c.text, "systemctl enable --now iotkv-edge"), strings.HasPrefix(c.text, "systemctl start iotkv-edge"):
				start(i)
			case strings.HasPrefix(c.text, "systemctl stop iotkv-edge"):
				stop(i)
			case strings.HasPrefix(c.text, "systemctl restart iotkv-edge"), strings.HasPrefix(c.text, "dpkg -i ") && edge != nil:
				stop(i)
				start(i)
			default:
				t.Logf("# not run (system): %s", c.text)
			}
			continue
		}
		cmd := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c", local.Replace(c.text))
		cmd.Dir, cmd.Env = work, env
		cmd.WaitDelay = time.Second
		out, err := cmd.CombinedOutput()
		t.Logf("$ %s\n%s", c.text, out)
		if err != nil {
			t.Fatalf("step %d %q failed: %v\n%s\nedge:\n%s", i, c.text, err, out, log())
		}
		run++
	}
	if run < min || starts == 0 {
		t.Fatalf("ran %d commands and started the edge %d times; want at least %d commands and a start", run, starts, min)
	}
	if edge != nil {
		stop(len(cmds))
	}
}

// The README's table of the units' systemd-analyze security exposure is
// what deploy/unit-scores.sh makes of deploy/systemd today.
func TestREADMEUnitSecurityScores(t *testing.T) {
	testenv.RequireTool(t, "systemd-analyze")
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(t.TempDir(), "README.md")
	if err := os.WriteFile(fresh, readme, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "../deploy/unit-scores.sh", "--readme", fresh).CombinedOutput(); err != nil {
		t.Fatalf("deploy/unit-scores.sh --readme: %v\n%s", err, out)
	}
	got, err := os.ReadFile(fresh)
	if err != nil {
		t.Fatal(err)
	}
	if here, there := unitScoresHeader(got), unitScoresHeader(readme); here != there {
		// Another systemd scores differently: the README states the one
		// it was measured with, and this machine cannot check that one.
		t.Skipf("README.md's scores are from another systemd than this machine's (%s here, %s there)", here, there)
	}
	if !bytes.Equal(got, readme) {
		t.Fatalf("README.md's unit exposure table is stale: run bash deploy/unit-scores.sh --readme README.md\n%s", got[bytes.Index(got, []byte("<!-- unit-security")):bytes.Index(got, []byte("<!-- /unit-security"))])
	}
}

// unitScoresHeader is the header line of the unit exposure table, which
// names the systemd that scored the units.
func unitScoresHeader(b []byte) string {
	i := bytes.Index(b, []byte("| unit | exposure ("))
	if i < 0 {
		return ""
	}
	return string(b[i : i+bytes.IndexByte(b[i:], '\n')])
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
