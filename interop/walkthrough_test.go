package interop_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotkv/iotkv/internal/testenv"
)

// walkthroughCommands returns the shell commands of README.md's section
// "Running it for real", in order, with continuation lines joined.
func walkthroughCommands(t *testing.T) []string {
	t.Helper()
	return readmeCommands(t, "## Running it for real", "## Topics and REST")
}

// readmeCommands returns the commands of the ```sh blocks of README.md
// from the line starting with from to the next line starting with to, in
// order, with continuation lines joined and every curl run with --fail (a
// 401 or 404 is a failed step, not an answer). Blocks marked ```sh system
// (root and systemd) are left out.
func readmeCommands(t *testing.T, from, to string) []string {
	t.Helper()
	var cmds []string
	for _, c := range docCommands(t, "../README.md", from, to) {
		if !c.system {
			cmds = append(cmds, c.text)
		}
	}
	return cmds
}

// docCommand is one command of a documentation page's shell blocks.
type docCommand struct {
	text   string
	system bool // from a ```sh system block: needs root and systemd
}

// docCommands returns the commands of the ```sh and ```sh system blocks of
// file from the line starting with from to the next line starting with to
// (from "" is the start, to "" the end), as readmeCommands does.
func docCommands(t *testing.T, file, from, to string) []docCommand {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := "\n" + string(data)
	if from != "" {
		start := strings.Index(text, "\n"+from)
		if start < 0 {
			t.Fatalf("%s has no line starting with %q", file, from)
		}
		text = text[start:]
	}
	if to != "" {
		end := strings.Index(text[1:], "\n"+to)
		if end < 0 {
			t.Fatalf("%s has no line starting with %q after %q", file, to, from)
		}
		text = text[:1+end]
	}
	var cmds []docCommand
	in, fenced, system := false, false, false
	var cur strings.Builder
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```") && fenced:
			fenced, in = false, false
		case strings.HasPrefix(line, "```"):
			info := strings.Fields(strings.TrimPrefix(line, "```"))
			fenced = true
			in = len(info) > 0 && info[0] == "sh"
			system = len(info) > 1 && info[1] == "system"
		case in && strings.TrimSpace(line) != "":
			if strings.HasSuffix(line, `\`) {
				cur.WriteString(strings.TrimSuffix(line, `\`))
				continue
			}
			cur.WriteString(line)
			cmds = append(cmds, docCommand{curlFail(strings.Join(strings.Fields(cur.String()), " ")), system})
			cur.Reset()
		}
	}
	return cmds
}

// curlFail adds --fail to every curl of a shell command.
func curlFail(cmd string) string {
	return curlWord.ReplaceAllString(cmd, "${1}curl --fail ")
}

var (
	curlWord = regexp.MustCompile(`(^|[\s;|&(])curl\s+`)
	goBuild  = regexp.MustCompile(`go build .*-o (\S+) (\./cmd/\S+)$`)
	httpAddr = regexp.MustCompile(`--http-addr :(\d+)`)
)

// TestREADMEWalkthrough runs the README's production walkthrough, command
// by command, in a clean temp dir: exactly the commands a person pastes,
// with two mechanical changes: `go build` runs in the repository with its
// output in the temp dir, and the long-running servers (`iotkv edge`,
// `iotkv master`) start in the background and are waited for on /readyz.
func TestREADMEWalkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq", "mosquitto_pub", "mosquitto_sub"} {
		testenv.RequireTool(t, tool)
	}
	repo, _ := filepath.Abs("..")
	dir := t.TempDir()
	cmds := walkthroughCommands(t)
	if len(cmds) < 10 {
		t.Fatalf("found only %d commands in the walkthrough", len(cmds))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var servers []*exec.Cmd
	t.Cleanup(func() {
		for _, s := range servers {
			_ = s.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { _ = s.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				_ = s.Process.Kill()
			}
		}
	})
	for i, c := range cmds {
		if m := goBuild.FindStringSubmatch(c); m != nil {
			build := strings.Replace(c, "-o "+m[1], "-o "+filepath.Join(dir, m[1]), 1)
			run := exec.Command("bash", "-c", build)
			run.Dir = repo
			if out, err := run.CombinedOutput(); err != nil {
				t.Fatalf("step %d %q: %v\n%s", i, c, err, out)
			}
			continue
		}
		if strings.HasPrefix(c, "./iotkv edge ") || strings.HasPrefix(c, "./iotkv master ") {
			m := httpAddr.FindStringSubmatch(c)
			port := "8443"
			if m != nil {
				port = m[1]
			}
			if ln, err := net.Listen("tcp", "127.0.0.1:"+port); err != nil {
				t.Fatalf("step %d needs port %s, which is busy: %v", i, port, err)
			} else {
				ln.Close()
			}
			srv := exec.CommandContext(ctx, "bash", "-c", "exec "+c)
			srv.Dir = dir
			// Die with the test binary, even when it is killed by a timeout.
			srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			logf, _ := os.Create(filepath.Join(dir, "server-"+port+".log"))
			srv.Stdout, srv.Stderr = logf, logf
			if err := srv.Start(); err != nil {
				t.Fatalf("step %d %q: %v", i, c, err)
			}
			servers = append(servers, srv)
			if err := waitReady(filepath.Join(dir, "pki", "ca.crt"), "https://localhost:"+port+"/readyz", 60*time.Second); err != nil {
				log, _ := os.ReadFile(logf.Name())
				t.Fatalf("step %d %q: not ready: %v\n%s", i, c, err, log)
			}
			continue
		}
		run := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c", c)
		run.Dir = dir
		run.WaitDelay = time.Second
		out, err := run.CombinedOutput()
		t.Logf("$ %s\n%s", c, out)
		if err != nil {
			t.Fatalf("step %d %q failed: %v\n%s", i, c, err, out)
		}
	}
}

func waitReady(caFile, url string, within time.Duration) error {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509Pool(pem)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(within)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func x509Pool(pem []byte) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}

// The walkthroughs' curl steps fail on an HTTP error: a README command
// answered 404 must fail its step.
func TestWalkthroughCurlFailsOnHTTPErrors(t *testing.T) {
	testenv.RequireTool(t, "curl")
	for in, want := range map[string]string{
		"curl -s https://x/y | jq .":          "curl --fail -s https://x/y | jq .",
		"until curl -s u; do sleep 1; done":   "until curl --fail -s u; do sleep 1; done",
		"echo curling; (curl u)":              "echo curling; (curl --fail u)",
		"go install example.com/curl@v1 && x": "go install example.com/curl@v1 && x",
	} {
		if got := curlFail(in); got != want {
			t.Errorf("curlFail(%q) = %q, want %q", in, got, want)
		}
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	if out, err := exec.Command("bash", "-c", curlFail("curl -s "+srv.URL+"/v1/kv/nope")).CombinedOutput(); err == nil {
		t.Fatalf("a README curl step answered 404 passed: %s", out)
	}
}
