package interop_test

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

// /metrics must be Prometheus text that a real parser accepts (promtool
// when installed, and always the Go expfmt parser Prometheus itself uses),
// holding the series the issue names.
func TestMetricsParseAsPrometheusText(t *testing.T) {
	testenv.RequireTool(t, "curl")
	e := start(t, "dev1")
	e.pki.AddAccount(t, "admin", iotkv.RoleAdmin, "admin-pw")
	// Make every family have samples: a write, a refusal, a failed login.
	c := e.pki.Connect(t, e.edge.MQTTAddr(), "dev1")
	for _, payload := range []string{`{"seq":1,"ops":[{"op":"put","key":"a","value":1}]}`, `{"seq":2}`} {
		if tok := c.Publish(iotkv.BatchTopic("dev1"), 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	e.curl(t, "dev1:wrong", e.url("/v1/kv/dev1/a"))
	code, body := e.curl(t, "admin:admin-pw", e.url("/metrics"))
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, trim(body))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse as Prometheus text: %v", err)
	}
	for _, name := range []string{
		"iotkv_mqtt_messages_total", "iotkv_mqtt_rejects_total", "iotkv_ops_applied_total",
		"iotkv_commit_seconds", "iotkv_commit_group_writes", "iotkv_http_request_seconds",
		"iotkv_rest_auth_failures_total", "iotkv_mqtt_connected_clients", "go_goroutines",
	} {
		if fams[name] == nil {
			t.Errorf("/metrics has no %s", name)
		}
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil && strings.Contains(string(out), "error") {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	}
}
