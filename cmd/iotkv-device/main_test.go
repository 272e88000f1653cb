package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/device"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// bin is the iotkv-device binary and iotkvBin the iotkv binary, built
// once in TestMain the way the Makefile builds the release
// (CGO_ENABLED=0, -trimpath, -ldflags='-s -w').
var bin, iotkvBin string

func TestMain(m *testing.M) {
	if os.Getenv("IOTKV_TEST_WRITER") != "" {
		os.Exit(crashWriter())
	}
	dir, err := os.MkdirTemp("", "iotkv-device-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin, iotkvBin = filepath.Join(dir, "iotkv-device"), filepath.Join(dir, "iotkv")
	for _, b := range []struct{ out, pkg string }{{bin, "."}, {iotkvBin, "../iotkv"}} {
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", b.out, b.pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b.pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func TestBinaryLinksNoServerCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/mochi-mqtt/", "github.com/cockroachdb/pebble", "github.com/iotkv/iotkv/broker", "github.com/iotkv/iotkv/edge", "github.com/iotkv/iotkv/master", "github.com/iotkv/iotkv/rest", "github.com/prometheus/"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("iotkv-device links %s", dep)
			}
		}
	}
}

// env is an edge and one device identity with a password file.
type env struct {
	p      *testenv.PKI
	e      *edge.Edge
	name   string
	pwFile string
}

// devicePasswordHash is bcrypt(devicePassword) at cost 10, made once:
// hashing takes ~3 s per account under the race detector.
const (
	devicePassword     = "device-secret"
	devicePasswordHash = "$2a$10$hBFlnnaH1J6Pwjjf7a4pSuk09RMZrGAZJttGKWV6dSAVRlZbLt62G"
)

// addDevice issues a device certificate for name and adds its account
// with devicePassword.
func addDevice(t testing.TB, p *testenv.PKI, name string) {
	t.Helper()
	if err := certs.Issue(p.Dir, certs.Request{Name: name, Role: certs.RoleDevice}); err != nil {
		t.Fatal(err)
	}
	f, err := accounts.Load(p.Accounts)
	if err != nil {
		t.Fatal(err)
	}
	f.Accounts = append(f.Accounts, accounts.Account{Name: name, Role: iotkv.RoleDevice, Hash: devicePasswordHash})
	if err := f.Save(p.Accounts); err != nil {
		t.Fatal(err)
	}
}

func newEnv(t testing.TB, name string) *env {
	t.Helper()
	p := testenv.NewPKI(t)
	addDevice(t, p, name) // before the edge starts: no wait for a reload
	if err := certs.Issue(p.Dir, certs.Request{Name: "edge1", Role: certs.RoleEdge}); err != nil {
		t.Fatal(err)
	}
	e := testenv.StartEdge(t, p, "edge1", nil) // the edge needs no account here
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte(devicePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &env{p: p, e: e, name: name, pwFile: pw}
}

func reader(t testing.TB, p *testenv.PKI, e *edge.Edge, name string) *device.Reader {
	t.Helper()
	tc, err := certs.ClientConfig(p.Paths(name))
	if err != nil {
		t.Fatal(err)
	}
	return device.NewReader("https://"+e.HTTPAddr(), name, devicePassword, tc)
}

func (v *env) args(queue string, extra ...string) []string {
	return append(extra, "--name", v.name, "--password-file", v.pwFile, "--certs", v.p.Dir,
		"--edge", v.e.MQTTAddr(), "--rest", "https://"+v.e.HTTPAddr(), "--queue", queue)
}

func menu100() string {
	var b strings.Builder
	for i := range 100 {
		fmt.Fprintf(&b, "w\nkey%d\nvalue%d\n", i, i)
	}
	b.WriteString("q\n")
	return b.String()
}

// shellRun is the outcome of one `iotkv-device shell` process.
type shellRun struct {
	ok     bool
	code   int
	out    string
	wall   time.Duration
	maxRSS int64 // KiB; 0 when /usr/bin/time is missing
}

// runShell runs `iotkv-device shell` with input. The max RSS comes from
// GNU time wrapped around the binary: the rusage Go's os/exec reports for
// a child includes the parent's RSS at the time of the exec (Go starts
// children with CLONE_VM, and the kernel carries the old mm's high-water
// mark across exec), so a fat test binary would be measured instead.
func runShell(t testing.TB, v *env, queue, input string) shellRun {
	t.Helper()
	args := append([]string{"shell"}, v.args(queue, "--log-level", "warn")...)
	name := bin
	rssFile := filepath.Join(t.TempDir(), "rss")
	if tm, err := exec.LookPath("/usr/bin/time"); err == nil {
		name, args = tm, append([]string{"-f", "%M", "-o", rssFile, bin}, args...)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(input)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	r := shellRun{wall: time.Since(start), out: out.String()}
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	r.ok, r.code = cmd.ProcessState.Success(), cmd.ProcessState.ExitCode()
	if data, err := os.ReadFile(rssFile); err == nil {
		fields := strings.Fields(string(data))
		if len(fields) > 0 {
			r.maxRSS, _ = strconv.ParseInt(fields[len(fields)-1], 10, 64)
		}
	}
	return r
}

func TestShellMenu100WritesReadBack(t *testing.T) {
	v := newEnv(t, "shelldev")
	r := runShell(t, v, filepath.Join(t.TempDir(), "q"), menu100())
	if !r.ok {
		t.Fatalf("shell exit %d:\n%s", r.code, r.out)
	}
	t.Logf("100 writes: wall %v, max RSS %d KiB", r.wall, r.maxRSS)
	recs, err := reader(t, v.p, v.e, v.name).List(context.Background(), "key")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range recs {
		got[r.Key] = string(r.Value)
	}
	for i := range 100 {
		if want := fmt.Sprintf(`"value%d"`, i); got[fmt.Sprintf("key%d", i)] != want {
			t.Fatalf("key%d = %s, want %s", i, got[fmt.Sprintf("key%d", i)], want)
		}
	}
}

func TestShellLineCommands(t *testing.T) {
	v := newEnv(t, "linedev")
	in := "put a 42\nput b {\"x\": 1}\nput c hello world\ndel a\nget a\nget b\nget c\nr\nc\nflush\nquit\n"
	r := runShell(t, v, filepath.Join(t.TempDir(), "q"), in)
	if !r.ok {
		t.Fatalf("shell exit %d:\n%s", r.code, r.out)
	}
	want := "(not found)\n{\"x\":1}\nhello world\nhello world\nok\n"
	if r.out != want {
		t.Fatalf("output:\n%s\nwant:\n%s", r.out, want)
	}
}

func TestShellFailsWhenTheEdgeDoesNotAcknowledge(t *testing.T) {
	v := newEnv(t, "downdev")
	args := []string{"shell", "--name", v.name, "--password-file", v.pwFile, "--certs", v.p.Dir,
		"--edge", "127.0.0.1:1", "--queue", filepath.Join(t.TempDir(), "q"), "--flush-timeout", "500ms", "--log-level", "error"}
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader("put a 1\nput b 2\n")
	out, err := cmd.CombinedOutput()
	if err == nil || cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("exit %v, want 1:\n%s", err, out)
	}
	if !strings.Contains(string(out), "2 ops not acknowledged") {
		t.Fatalf("output does not give the count:\n%s", out)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"put", "k"}, {"put", "k", "v"}, {"simulate", "--devices", "0", "--certs", "x"}} {
		cmd := exec.Command(bin, args...)
		out, _ := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != 2 {
			t.Errorf("%q: exit %d, want 2:\n%s", args, cmd.ProcessState.ExitCode(), out)
		}
	}
}

// writerConf tells the crash test's writer process what to open.
type writerConf struct{ Name, Certs, Edge, Queue string }

// crashWriter is the writer process of the crash test: it puts
// k(i mod 20) = i for i from $IOTKV_TEST_START and prints each put whose
// Put returned nil. With IOTKV_TEST_FLUSH set it writes nothing and
// flushes.
func crashWriter() int {
	start, _ := strconv.Atoi(os.Getenv("IOTKV_TEST_START"))
	var w writerConf
	if err := json.Unmarshal([]byte(os.Getenv("IOTKV_TEST_WRITER")), &w); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c, err := device.Open(device.Options{
		Name: w.Name, Password: devicePassword, TLSFiles: certs.PathsFor(w.Certs, w.Name),
		Edge: w.Edge, QueueDir: w.Queue, ReconnectMin: 20 * time.Millisecond,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	if os.Getenv("IOTKV_TEST_FLUSH") != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Flush(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	out := bufio.NewWriter(os.Stdout)
	for i := start; ; i++ {
		key := fmt.Sprintf("k%02d", i%20)
		if err := c.Put(context.Background(), key, json.RawMessage(strconv.Itoa(i))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintf(out, "%s %d\n", key, i)
		out.Flush()
	}
}

func TestKill9KeepsEveryAcknowledgedPut(t *testing.T) {
	v := newEnv(t, "crashdev")
	conf, _ := json.Marshal(writerConf{Name: v.name, Certs: v.p.Dir, Edge: v.e.MQTTAddr(), Queue: filepath.Join(t.TempDir(), "q")})
	run := func(start int, flush bool, d time.Duration) string {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "IOTKV_TEST_WRITER="+string(conf), "IOTKV_TEST_START="+strconv.Itoa(start))
		if flush {
			cmd.Env = append(cmd.Env, "IOTKV_TEST_FLUSH=1")
		}
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if flush {
			if err := cmd.Wait(); err != nil {
				t.Fatalf("final flush: %v\n%s", err, errOut.String())
			}
			return out.String()
		}
		time.Sleep(d)
		_ = cmd.Process.Kill() // kill -9
		_ = cmd.Wait()
		return out.String()
	}
	acked := map[string]int{} // key -> highest value whose Put returned nil
	total := 0
	for round := range 5 {
		out := run(round*1_000_000, false, time.Duration(300+rand.IntN(400))*time.Millisecond)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var k string
			var n int
			if _, err := fmt.Sscanf(line, "%s %d", &k, &n); err != nil {
				continue // a line torn by the kill
			}
			acked[k] = max(acked[k], n)
			total++
		}
	}
	run(0, true, 0)
	if total < 20 {
		t.Fatalf("only %d puts acknowledged across the rounds: the writer is not writing", total)
	}
	recs, err := reader(t, v.p, v.e, v.name).List(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, r := range recs {
		n, _ := strconv.Atoi(string(r.Value))
		got[r.Key] = n
	}
	for k, n := range acked {
		if got[k] < n {
			t.Errorf("%s = %d on the edge, but the put of %d returned nil", k, got[k], n)
		}
	}
	t.Logf("%d acknowledged puts over 5 kill -9 rounds; all on the edge", total)
}

func TestSimulateVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s of simulated load")
	}
	// The edge runs as its own process, built without the race detector:
	// 20 first logins cost 20 bcrypt checks, ~3 s each under -race.
	p := testenv.NewPKI(t)
	mqttAddr, httpsAddr := startEdgeProcess(t, p)
	cmd := simulateCmd(t, p, mqttAddr, httpsAddr, "--devices", "20", "--rate", "50", "--duration", "10s", "--verify")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("simulate: %v\n%s", err, out.String())
	}
	t.Log(strings.TrimSpace(out.String()))
	if !strings.Contains(out.String(), "lost=0 mismatched=0") {
		t.Fatalf("simulate output:\n%s", out.String())
	}
}

// simulateCmd is `iotkv-device simulate` against the edge at mqttAddr and
// httpsAddr with p's certificates and accounts, a fresh queue, and args.
func simulateCmd(t *testing.T, p *testenv.PKI, mqttAddr, httpsAddr string, args ...string) *exec.Cmd {
	t.Helper()
	return exec.Command(bin, append(append([]string{"simulate"}, args...),
		"--certs", p.Dir, "--accounts", p.Accounts, "--queue", filepath.Join(t.TempDir(), "q"),
		"--edge", mqttAddr, "--rest", "https://"+httpsAddr, "--log-level", "warn")...)
}

// The first SIGINT ends a simulate run early the way --duration does: the
// sensors stop writing, flush, --verify reads every key back, and the
// process exits 0 with its summary, so a caller (the bench's fleet
// scenario) can end the load when it chooses and keep the verification.
func TestSimulateInterruptedEndsTheWritingAndStillVerifies(t *testing.T) {
	if testing.Short() {
		t.Skip("a few seconds of simulated load")
	}
	p := testenv.NewPKI(t)
	p.Identity(t, "admin", iotkv.RoleAdmin)
	hc := p.HTTPClient(t, "admin")
	mqttAddr, httpsAddr := startEdgeProcess(t, p)
	cmd := simulateCmd(t, p, mqttAddr, httpsAddr, "--devices", "4", "--rate", "20", "--duration", "1h", "--verify")
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	// Interrupt once the edge holds keys of every sensor.
	deadline := time.Now().Add(60 * time.Second)
	for {
		var body struct {
			Devices []struct {
				Keys int `json:"keys"`
			} `json:"devices"`
		}
		req, _ := http.NewRequest(http.MethodGet, "https://"+httpsAddr+"/v1/devices", nil)
		req.SetBasicAuth("admin", testenv.Password("admin"))
		if resp, err := hc.Do(req); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
		}
		writing := 0
		for _, d := range body.Devices {
			if d.Keys > 0 {
				writing++
			}
		}
		if writing == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the 4 sensors did not all write within 60s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("simulate after SIGINT: %v\n%s", err, out.String())
		}
	case <-time.After(2 * time.Minute): // a hang, not a speed limit
		t.Fatalf("simulate still running 2 minutes after SIGINT (--duration 1h):\n%s", out.String())
	}
	m := regexp.MustCompile(`verify: written=(\d+) acked=(\d+) lost=0 mismatched=0`).FindStringSubmatch(out.String())
	if m == nil || m[1] == "0" || m[1] != m[2] {
		t.Fatalf("want a verify line with every written op acknowledged, none lost:\n%s", out.String())
	}
	t.Log(strings.TrimSpace(out.String()))
}

// startEdgeProcess runs `iotkv edge` on loopback port 0 and returns its
// MQTT and HTTPS addresses.
func startEdgeProcess(t *testing.T, p *testenv.PKI) (mqttAddr, httpsAddr string) {
	t.Helper()
	if err := certs.Issue(p.Dir, certs.Request{Name: "edge1", Role: certs.RoleEdge}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	addrFile := filepath.Join(dir, "addr.json")
	cmd := exec.Command(iotkvBin, "edge", "--id", "edge1", "--data", filepath.Join(dir, "data"), "--certs", p.Dir,
		"--accounts", p.Accounts, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--addr-file", addrFile, "--log-level", "warn")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("edge log:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		var addrs struct{ MQTT, HTTPS string }
		if data, err := os.ReadFile(addrFile); err == nil && json.Unmarshal(data, &addrs) == nil && addrs.MQTT != "" {
			return addrs.MQTT, addrs.HTTPS
		}
		if time.Now().After(deadline) {
			t.Fatalf("edge did not write %s:\n%s", addrFile, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkShellMenu100 runs the seed's 100-write menu workload through the
// release-built binary against a real edge: a fresh queue dir each time
// (so the connect-time seq sync is included), exit 0 required. It reports
// the wall time and the max RSS of the process.
func BenchmarkShellMenu100(b *testing.B) {
	v := newEnv(b, "benchdev")
	input := menu100()
	var wall time.Duration
	var rss int64
	for i := 0; b.Loop(); i++ {
		r := runShell(b, v, filepath.Join(b.TempDir(), fmt.Sprint("q", i)), input)
		if !r.ok {
			b.Fatalf("shell exit %d:\n%s", r.code, r.out)
		}
		wall += r.wall
		rss = max(rss, r.maxRSS)
	}
	b.ReportMetric(float64(wall.Microseconds())/1000/float64(b.N), "wall-ms/op")
	b.ReportMetric(float64(rss)/1024, "maxrss-MiB")
}

// The device binary reads the example configuration, with the
// environment over the file, like the server commands.
func TestDeviceConfigFile(t *testing.T) {
	cmd := exec.Command(bin, "put", "--config", filepath.Join("..", "..", "deploy", "device.yaml"), "--print-config")
	cmd.Env = append(os.Environ(), "IOTKV_WINDOW=3")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("iotkv-device put --config deploy/device.yaml --print-config: %v", err)
	}
	for _, want := range []string{"name: sensor1 # file", "window: 3 # env IOTKV_WINDOW", "certs: /etc/iotkv/certs # file"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--print-config lacks %q:\n%s", want, out)
		}
	}
	// A misspelt key is refused with exit 2, naming the file, line and key.
	typo := filepath.Join(t.TempDir(), "device.yaml")
	if err := os.WriteFile(typo, []byte("name: sensor1\nwindwo: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin, "put", "--config", typo, "k", "1")
	msg, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 {
		t.Fatalf("a config file with a misspelt key: exit %d, want 2:\n%s", cmd.ProcessState.ExitCode(), msg)
	}
	for _, want := range []string{typo, "line 2", "windwo"} {
		if !strings.Contains(string(msg), want) {
			t.Errorf("the error does not name %q:\n%s", want, msg)
		}
	}
}
