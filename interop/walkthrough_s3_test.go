package interop_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotkv/iotkv/internal/testenv"
)

var (
	// A port a README server listens on: its --http-addr, --mqtt-addr, or
	// versitygw's --port.
	serverPort = regexp.MustCompile(`--(?:http-addr|mqtt-addr|port) \S*:(\d+)\b`)
	// Where a command names a port: host:PORT, :PORT, mosquitto's -p PORT.
	portUse        = regexp.MustCompile(`(:|-p )(\d+)\b`)
	serverHTTPPort = regexp.MustCompile(`--http-addr \S*:(\d+)`)
	goInstall      = regexp.MustCompile(`^go install (\S+)@\S+`)
	envPrefix      = regexp.MustCompile(`^((?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)+)(.*)$`)
	healthCheck    = regexp.MustCompile(`--port (\S+) .*--health (\S+)`)
)

// walkthrough runs README commands in one directory the way a person
// pastes them into one terminal: exports carry over to later commands,
// servers (`./iotkv edge|master`, anything ending in &) run in the
// background and are waited for, and every port a server listens on is
// replaced everywhere by a free loopback port, so the walkthrough can run
// beside other tests.
type walkthrough struct {
	t        *testing.T
	ctx      context.Context
	repo     string
	dir      string
	env      []string
	ports    map[string]string // README port → the port used
	servers  []*exec.Cmd
	serverNo int
}

func newWalkthrough(t *testing.T, ctx context.Context, cmds []string) *walkthrough {
	t.Helper()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	w := &walkthrough{t: t, ctx: ctx, repo: repo, dir: t.TempDir(), env: os.Environ(), ports: map[string]string{}}
	for _, c := range cmds {
		for _, m := range serverPort.FindAllStringSubmatch(c, -1) {
			if _, ok := w.ports[m[1]]; ok {
				continue
			}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			_, port, _ := net.SplitHostPort(l.Addr().String())
			l.Close()
			w.ports[m[1]] = port
		}
	}
	t.Cleanup(w.stop)
	return w
}

// port is the port used for the README's port p.
func (w *walkthrough) port(p string) string {
	w.t.Helper()
	if q, ok := w.ports[p]; ok {
		return q
	}
	w.t.Fatalf("no server of the walkthrough listens on README port %s", p)
	return ""
}

// remap replaces every README server port in c by the one used.
func (w *walkthrough) remap(c string) string {
	return portUse.ReplaceAllStringFunc(c, func(s string) string {
		m := portUse.FindStringSubmatch(s)
		if q, ok := w.ports[m[2]]; ok {
			return m[1] + q
		}
		return s
	})
}

// stop interrupts the servers, last started first (the S3 server they
// use goes last), and kills what does not exit within 20s.
func (w *walkthrough) stop() {
	for _, s := range slices.Backward(w.servers) {
		_ = s.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = s.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = s.Process.Kill()
		}
	}
}

// setPath puts dir first on the PATH of the commands.
func (w *walkthrough) setPath(dir string) {
	for i, kv := range w.env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			w.env[i] = "PATH=" + dir + string(os.PathListSeparator) + v
			return
		}
	}
	w.env = append(w.env, "PATH="+dir)
}

// run runs the README command c (step i).
func (w *walkthrough) run(i int, readme string) {
	t := w.t
	t.Helper()
	c := w.remap(readme)
	switch {
	case goBuild.MatchString(c):
		m := goBuild.FindStringSubmatch(c)
		build := exec.Command("bash", "-c", strings.Replace(c, "-o "+m[1], "-o "+filepath.Join(w.dir, m[1]), 1))
		build.Dir = w.repo
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("step %d %q: %v\n%s", i, readme, err, out)
		}
	case goInstall.MatchString(c):
		// Installed already (testenv finds it on PATH or in GOPATH/bin).
		tool := goInstall.FindStringSubmatch(c)[1]
		if filepath.Base(tool) != "versitygw" {
			t.Fatalf("step %d %q: the walkthrough test knows no installed copy of %s", i, readme, tool)
		}
		bin := testenv.RequireVersityGW(t)
		w.setPath(filepath.Dir(bin))
		t.Logf("$ %s\n(installed already: %s)", c, bin)
	case strings.HasPrefix(c, "export "):
		// Run it and keep the environment it leaves, as the terminal would.
		cmd := exec.CommandContext(w.ctx, "bash", "-c", c+" && env -0")
		cmd.Dir, cmd.Env = w.dir, w.env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("step %d %q: %v", i, readme, err)
		}
		w.env = strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
		t.Logf("$ %s", c)
	case strings.HasPrefix(c, "./iotkv edge ") || strings.HasPrefix(c, "./iotkv master "):
		m := serverHTTPPort.FindStringSubmatch(c)
		if m == nil {
			t.Fatalf("step %d %q: a server command of the walkthrough must name its --http-addr port", i, readme)
		}
		w.background(i, readme, c, "https://localhost:"+m[1]+"/readyz")
	case strings.HasSuffix(c, "&"):
		m := healthCheck.FindStringSubmatch(c)
		if m == nil {
			t.Fatalf("step %d %q: a background command of the walkthrough needs --port ADDR and --health PATH to wait on", i, readme)
		}
		w.background(i, readme, strings.TrimSpace(strings.TrimSuffix(c, "&")), "http://"+m[1]+m[2])
	default:
		cmd := exec.CommandContext(w.ctx, "bash", "-o", "pipefail", "-c", c)
		cmd.Dir, cmd.Env = w.dir, w.env
		cmd.WaitDelay = time.Second
		out, err := cmd.CombinedOutput()
		t.Logf("$ %s\n%s", c, out)
		if err != nil {
			t.Fatalf("step %d %q failed: %v\n%s", i, readme, err, out)
		}
	}
}

// background starts c as the process itself (exec: leading VAR=value
// words go to its environment), logging to a file, and waits until url
// answers 200 (https: trusting the walkthrough's pki/ca.crt).
func (w *walkthrough) background(i int, readme, c, url string) {
	t := w.t
	t.Helper()
	env := slices.Clone(w.env)
	if m := envPrefix.FindStringSubmatch(c); m != nil {
		env = append(env, strings.Fields(m[1])...)
		c = m[2]
	}
	srv := exec.CommandContext(w.ctx, "bash", "-c", "exec "+c)
	srv.Dir, srv.Env = w.dir, env
	// Die with the test binary, even when it is killed by a timeout.
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	w.serverNo++
	logPath := filepath.Join(w.dir, fmt.Sprintf("server-%d.log", w.serverNo))
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatalf("step %d %q: %v", i, readme, err)
	}
	w.servers = append(w.servers, srv)
	exited := make(chan struct{})
	go func() { _, _ = srv.Process.Wait(); close(exited) }()
	t.Logf("$ %s &", c)
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if strings.HasPrefix(url, "https:") && client.Transport == nil {
			if pem, err := os.ReadFile(filepath.Join(w.dir, "pki", "ca.crt")); err == nil {
				client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509Pool(pem)}}
			}
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("%s", resp.Status)
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("step %d %q: exited before %s answered 200\n%s", i, readme, url, log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			t.Fatalf("step %d %q: %s not 200 within 60s: %v\n%s", i, readme, url, err, log)
		}
		time.Sleep(100 * time.Millisecond) // polling: the server tells us nothing else
	}
}

// segmentsWith returns the segment objects under root (versitygw's posix
// backend keeps an object as a file at its key) that contain s.
func segmentsWith(t *testing.T, root, s string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "edges", "*", "*", "seg", "*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		if data, err := os.ReadFile(f); err == nil && bytes.Contains(data, []byte(s)) {
			out = append(out, f)
		}
	}
	return out
}

// TestREADMEMasterOnS3Walkthrough runs README.md's "Master on S3" section
// as a person pastes it after steps 1 and 2 of "Running it for real"
// (certificates, accounts and the edge e1 it continues from): versitygw,
// a write, the master on S3, the wait for lag 0, the restore from the
// bucket. The mechanical changes are those of TestREADMEWalkthrough, plus:
// `go install versitygw` uses the installed copy, an export carries over
// to later commands, and servers listen on free ports instead of the
// README's. Then it checks what the walkthrough promises: the master is
// ready, the change is in a segment object in the bucket, the restored
// edge serves it, and a later write to e1 reaches the bucket too.
func TestREADMEMasterOnS3Walkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq", "mosquitto_pub", "find"} {
		testenv.RequireTool(t, tool)
	}
	testenv.RequireVersityGW(t)
	cmds := readmeCommands(t, "### 1. Certificates and accounts", "### 3. A device")
	s3cmds := readmeCommands(t, "## Master on S3", "**Layout**")
	if len(cmds) < 10 || len(s3cmds) < 8 {
		t.Fatalf("found only %d commands in steps 1 and 2 and %d in the S3 section", len(cmds), len(s3cmds))
	}
	cmds = append(cmds, s3cmds...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := newWalkthrough(t, ctx, cmds)
	start := time.Now()
	for i, c := range cmds {
		w.run(i, c)
	}
	t.Logf("the walkthrough ran in %v", time.Since(start).Round(time.Millisecond))

	// What the README's commands name: the bucket dir, the ports, dev1's
	// password, the key the S3 section writes.
	bucketDir := filepath.Join(w.dir, "s3data", "backups", "fleet")
	pem, err := os.ReadFile(filepath.Join(w.dir, "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509Pool(pem)}}}
	get := func(url, user, password string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if user != "" {
			req.SetBasicAuth(user, password)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode, b.Bytes()
	}

	if code, body := get("https://localhost:"+w.port("9443")+"/readyz", "", ""); code != http.StatusOK {
		t.Errorf("the master on S3 is not ready after the walkthrough: %d %s", code, body)
	}
	if segs := segmentsWith(t, bucketDir, `"key":"where"`); len(segs) == 0 {
		t.Errorf("no segment object under %s holds the change to dev1/where", bucketDir)
	}
	code, body := get("https://localhost:"+w.port("28443")+"/v1/kv/dev1/where", "dev1", "dev1-pw")
	var rec struct {
		Value json.RawMessage `json:"value"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &rec) != nil || string(rec.Value) != `"s3"` {
		t.Errorf("the edge restored from S3: GET dev1/where = %d %s, want the value \"s3\"", code, body)
	}

	// The master keeps following e1: a later write reaches the bucket.
	pub := exec.CommandContext(ctx, "mosquitto_pub", "-h", "localhost", "-p", w.port("8883"), "--cafile", "pki/ca.crt",
		"--cert", "pki/dev1.crt", "--key", "pki/dev1.key", "-u", "dev1", "-P", "dev1-pw", "-q", "1",
		"-t", "iotkv/v1/devices/dev1/batch", "-m", `{"seq":3000,"ops":[{"op":"put","key":"later","value":1}]}`)
	pub.Dir = w.dir
	if out, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub to e1: %v\n%s", err, out)
	}
	written := time.Now()
	for len(segmentsWith(t, bucketDir, `"key":"later"`)) == 0 {
		if time.Since(written) > 30*time.Second {
			t.Fatalf("a write to e1 was not in a segment object under %s within 30s (--flush-interval 1s)", bucketDir)
		}
		time.Sleep(100 * time.Millisecond) // polling files: nothing to wait on
	}
	t.Logf("a later write to e1 was in the bucket %v after its PUBACK", time.Since(written).Round(time.Millisecond))
}
