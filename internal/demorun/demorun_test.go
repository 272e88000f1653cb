package demorun

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/iotkv/iotkv/internal/testenv"
)

// The demo runs the whole system, the commands it prints work when pasted
// into a shell while it runs, and it ends with a verified summary.
func TestDemoRunsAndItsPrintedCommandsWork(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "mosquitto_pub", "mosquitto_sub"} {
		testenv.RequireTool(t, tool)
	}
	var out testenv.Buffer
	type ran struct {
		cmd, out string
		err      error
	}
	results := make(chan []ran, 1)
	consoleErrs := make(chan []string, 1)
	dir := t.TempDir()
	// Ctrl-C (ctx) ends the demo once the pasted commands have run.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sum, err := Run(ctx, Options{
		Dir: dir, Duration: 2 * time.Minute, Devices: 4, Rate: 5, Out: &out,
		Ready: func(cmds []string) {
			consoleErrs <- consoleLogin(out.String(), filepath.Join(dir, "certs", "ca.crt"))
			var rs []ran
			for _, c := range cmds {
				o, err := exec.Command("bash", "-o", "pipefail", "-c", c).CombinedOutput()
				rs = append(rs, ran{c, string(o), err})
			}
			results <- rs
			stop()
		},
	})
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	if sum.Written == 0 || sum.Acked != sum.Written || sum.Lost != 0 || sum.Mismatched != 0 {
		t.Errorf("summary %+v: want writes, all acked, none lost", sum)
	}
	for _, e := range []string{"e1", "e2"} {
		if sum.BackupSeq[e] == 0 || sum.BackupSeq[e] != sum.EdgeSeq[e] {
			t.Errorf("backup of %s: master seq %d, edge seq %d", e, sum.BackupSeq[e], sum.EdgeSeq[e])
		}
	}
	var rs []ran
	select {
	case rs = <-results:
	default:
		t.Fatal("the printed commands did not finish")
	}
	if len(rs) < 7 {
		t.Fatalf("only %d commands printed", len(rs))
	}
	for _, r := range rs {
		silent := strings.HasPrefix(r.cmd, "mosquitto_pub") // prints nothing on success
		if r.err != nil || (!silent && strings.TrimSpace(r.out) == "") || strings.Contains(r.out, `"error"`) {
			t.Errorf("pasted command failed: %s\n→ %v\n%s", r.cmd, r.err, r.out)
		}
	}
	if last := rs[len(rs)-1]; !strings.Contains(last.out, `"value":"world"`) {
		t.Errorf("the key written by the pasted mosquitto_pub did not read back: %s", last.out)
	}
	select {
	case errs := <-consoleErrs:
		for _, e := range errs {
			t.Errorf("web console: %s", e)
		}
	default:
		t.Error("the console addresses were not checked")
	}
	if !strings.Contains(out.String(), "summary: written=") {
		t.Error("no summary line printed")
	}
}

// consoleLogin reads the console addresses and the login the demo printed,
// and checks, while the demo runs, that every address serves the console
// and that the login works there (the console logs in with GET
// /v1/whoami).
func consoleLogin(out, caFile string) []string {
	m := regexp.MustCompile(`Web console \(log in as (\S+), password (\S+)\)`).FindStringSubmatch(out)
	if m == nil {
		return []string{"the demo printed no console login"}
	}
	urls := regexp.MustCompile(`(?m)^  (?:edge \S+|master):\s+(https://\S+/ui/)$`).FindAllStringSubmatch(out, -1)
	if len(urls) != 3 {
		return []string{fmt.Sprintf("want console addresses for e1, e2 and the master, got %q", urls)}
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return []string{err.Error()}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	var errs []string
	for _, u := range urls {
		for _, path := range []string{u[1], strings.TrimSuffix(u[1], "/ui/") + "/v1/whoami"} {
			req, _ := http.NewRequest("GET", path, nil)
			if strings.HasSuffix(path, "whoami") {
				req.SetBasicAuth(m[1], m[2])
			}
			resp, err := c.Do(req)
			if err != nil {
				errs = append(errs, fmt.Sprintf("GET %s: %v", path, err))
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || (!strings.Contains(string(body), "<title>iotkv") && !strings.Contains(string(body), `"role":"admin"`)) {
				errs = append(errs, fmt.Sprintf("GET %s as %s: %d %s", path, m[1], resp.StatusCode, body))
			}
		}
	}
	return errs
}
