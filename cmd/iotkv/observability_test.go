package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

// metricName finds the metric names in a PromQL expression: ours, and the
// Go and process collectors'.
var metricName = regexp.MustCompile(`\b(?:iotkv|process|go)_[a-z0-9_]+\b`)

// usedMetrics returns the metric names deploy/prometheus/rules.yml and
// deploy/grafana/iotkv.json query, each with where it is used.
func usedMetrics(t *testing.T) map[string]string {
	t.Helper()
	used := map[string]string{}
	raw, err := os.ReadFile(filepath.Join(deployDir, "prometheus", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Record, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatalf("rules.yml: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			for _, m := range metricName.FindAllString(r.Expr, -1) {
				used[m] = "rules.yml " + r.Alert + r.Record
			}
		}
	}
	raw, err = os.ReadFile(filepath.Join(deployDir, "grafana", "iotkv.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct{ Name, Definition string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("iotkv.json: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				used[m] = "iotkv.json panel " + p.Title
			}
		}
	}
	for _, v := range dash.Templating.List {
		for _, m := range metricName.FindAllString(v.Definition, -1) {
			used[m] = "iotkv.json variable " + v.Name
		}
	}
	return used
}

// dashboardRules writes the dashboard's queries as recording rules (the
// Grafana variables replaced) for promtool to parse.
func dashboardRules(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(deployDir, "grafana", "iotkv.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct{ Targets []struct{ Expr string } }
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	vars := strings.NewReplacer("$__rate_interval", "5m", "$edge", ".*", "$master", ".*")
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for i, p := range dash.Panels {
		for j, tg := range p.Targets {
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:panel%d:target%d", i, j), Expr: vars.Replace(tg.Expr)})
		}
	}
	if len(rules) < 20 {
		t.Fatalf("only %d dashboard queries", len(rules))
	}
	out, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// scrape returns the series names (histograms as _bucket, _sum, _count)
// of a server's /metrics.
func scrape(t *testing.T, c *http.Client, addr string) map[string]bool {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "https://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth("admin", testenv.Password("admin"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics of %s: %d %v", addr, resp.StatusCode, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics of %s: %v", addr, err)
	}
	names := map[string]bool{}
	for name, f := range fams {
		names[name] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[name+s] = true
			}
		}
	}
	return names
}

// The alert rules pass promtool, and every metric the dashboard and the
// rules query is served by a real edge, a master on a directory or a
// master on S3 (each driven to write, refuse, back up and count a failed
// login, so that labelled series exist).
func TestDashboardAndRulesMetricsExist(t *testing.T) {
	promtool := testenv.RequireTool(t, "promtool")
	for _, f := range []string{filepath.Join(deployDir, "prometheus", "rules.yml"), dashboardRules(t)} {
		if out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
			t.Fatalf("promtool check rules %s: %v\n%s", f, err, out)
		}
	}
	used := usedMetrics(t)
	if len(used) < 20 {
		t.Fatalf("only %d metric names found in the dashboard and the rules: %v", len(used), used)
	}
	s3 := testenv.StartS3(t)

	p := testenv.NewPKI(t)
	edgeCerts(t, p, "edge1")
	p.Identity(t, "dev", iotkv.RoleDevice)
	pwFile := masterIdentity(t, p, "master")
	pwFile2 := masterIdentity(t, p, "master2")
	p.Identity(t, "admin", iotkv.RoleAdmin)
	hc := p.HTTPClient(t, "admin")
	root := t.TempDir()
	edge := startServerProc(t, hc, "edge", "edge", "--id", "edge1", "--data", filepath.Join(root, "edge1"),
		"--certs", p.Dir, "--accounts", p.Accounts, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	edges := "edge1=" + edge.addrs["mqtt"]
	master := startServerProc(t, hc, "master", "master", "--data", filepath.Join(root, "backups"), "--certs", p.Dir,
		"--accounts", p.Accounts, "--password-file", pwFile, "--edges", edges, "--http-addr", "127.0.0.1:0",
		"--snapshot-interval", "1s")
	s3master := startServerProcEnv(t, hc, "s3 master", s3.Env(), "master", "--store", s3.URL("site"),
		"--s3-endpoint", s3.Endpoint, "--certs", p.Dir, "--accounts", p.Accounts, "--password-file", pwFile2,
		"--name", "master2", "--edges", edges, "--http-addr", "127.0.0.1:0", "--snapshot-interval", "1s", "--flush-interval", "200ms")

	// A write, a refused batch, a failed MQTT login and a failed REST login.
	c := p.Connect(t, edge.addrs["mqtt"], "dev")
	for _, payload := range []string{`{"seq":1,"ops":[{"op":"put","key":"a","value":1}]}`, `{"seq":2}`} {
		if tok := c.Publish(iotkv.BatchTopic("dev"), 1, false, payload); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	c.Disconnect(0)
	bad := p.MQTTOptionsTLS(edge.addrs["mqtt"], "dev", "wrong", p.ClientTLS(t, "dev"))
	bc := paho.NewClient(bad)
	if tok := bc.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() == nil {
		bc.Disconnect(0)
		t.Fatal("a wrong MQTT password was not refused")
	}
	req, err := http.NewRequest(http.MethodGet, "https://"+edge.addrs["https"]+"/v1/kv/dev/a", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth("dev", "wrong")
	if resp, err := p.HTTPClient(t, "dev").Do(req); err == nil {
		resp.Body.Close()
	}

	// The masters need a moment to follow the edge, snapshot and flush.
	var missing []string
	for deadline := time.Now().Add(60 * time.Second); ; {
		have := map[string]bool{}
		for _, s := range []*serverProc{edge, master, s3master} {
			for n := range scrape(t, hc, s.addrs["https"]) {
				have[n] = true
			}
		}
		missing = missing[:0]
		for n := range used {
			if !have[n] {
				missing = append(missing, n+" ("+used[n]+")")
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			if os.Getenv("IOTKV_TEST_DUMP_METRICS") != "" {
				var all []string
				for n := range have {
					all = append(all, n)
				}
				sort.Strings(all)
				t.Logf("served: %s", strings.Join(all, " "))
			}
			break
		}
		time.Sleep(500 * time.Millisecond) // polling the servers' /metrics
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("no live edge or master serves %s", m)
	}
}
