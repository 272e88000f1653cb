package interop_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

func TestCurlEveryRoute(t *testing.T) {
	testenv.RequireTool(t, "curl")
	e := start(t, "dev1")
	e.pki.AddAccount(t, "admin", iotkv.RoleAdmin, "admin-pw")
	e.pki.AddAccount(t, "reader", iotkv.RoleReader, "reader-pw")
	dev := "dev1:" + testenv.Password("dev1")

	steps := []struct {
		name, user string
		args       []string
		code       int
		body       string // a substring the body must hold
	}{
		{"health needs no login", "", []string{e.url("/healthz")}, 200, "ok"},
		{"readiness needs no login", "", []string{e.url("/readyz")}, 200, "ready"},
		{"the OpenAPI document", "", []string{e.url("/v1/openapi.json")}, 200, `"openapi"`},
		{"a put of a JSON object", dev, []string{"-X", "PUT", "--data-binary", `{"a":1}`, e.url("/v1/kv/dev1/cfg/x")}, 200, `"value":{"a":1}`},
		{"a put of a number", dev, []string{"-X", "PUT", "--data-binary", `7`, e.url("/v1/kv/dev1/cfg/y")}, 200, `"value":7`},
		{"a get", dev, []string{e.url("/v1/kv/dev1/cfg/x")}, 200, `"key":"cfg/x"`},
		{"a list by prefix", dev, []string{e.url("/v1/kv/dev1?prefix=cfg/&limit=1")}, 200, `"next":"cfg/x"`},
		{"the next page", dev, []string{e.url("/v1/kv/dev1?prefix=cfg/&limit=1&after=cfg/x")}, 200, `"key":"cfg/y"`},
		{"the device list", "reader:reader-pw", []string{e.url("/v1/devices")}, 200, `"device":"dev1"`},
		{"a delete", dev, []string{"-X", "DELETE", e.url("/v1/kv/dev1/cfg/x")}, 204, ""},
		{"a get of the deleted key", dev, []string{e.url("/v1/kv/dev1/cfg/x")}, 404, `"code":"not_found"`},
		{"a put that is not JSON", dev, []string{"-X", "PUT", "--data-binary", `nope`, e.url("/v1/kv/dev1/k")}, 400, `"error"`},
		{"a reader may not write", "reader:reader-pw", []string{"-X", "PUT", "--data-binary", `1`, e.url("/v1/kv/dev1/k")}, 403, `"not_authorized"`},
		{"no credentials", "", []string{e.url("/v1/kv/dev1/cfg/y")}, 401, `"unauthenticated"`},
		{"metrics for admin", "admin:admin-pw", []string{e.url("/metrics")}, 200, "iotkv_ops_applied_total"},
		{"metrics are not for devices", dev, []string{e.url("/metrics")}, 403, ""},
	}
	for _, s := range steps {
		code, body := e.curl(t, s.user, s.args...)
		if code != s.code || !strings.Contains(body, s.body) {
			t.Errorf("%s: %d %q, want %d with %q", s.name, code, trim(body), s.code, s.body)
		}
	}
}

// The seed's own test workload: 100 writes, 100 reads, 100 deletes through
// the seed API, each its own curl.
func TestCurlSeedWorkload(t *testing.T) {
	testenv.RequireTool(t, "curl")
	e := start(t, "dev1")
	dev := "dev1:" + testenv.Password("dev1")
	for i := range 100 {
		if code, body := e.curl(t, dev, e.url(fmt.Sprintf("/put?key=key%d&value=value%d", i, i))); code != 200 || body != "success" {
			t.Fatalf("/put key%d: %d %q", i, code, body)
		}
	}
	for i := range 100 {
		if code, body := e.curl(t, dev, e.url(fmt.Sprintf("/get?key=key%d", i))); code != 200 || body != fmt.Sprintf("value%d", i) {
			t.Fatalf("/get key%d: %d %q", i, code, body)
		}
	}
	// The seed API stores JSON strings: REST sees them as such.
	if code, r := e.record(t, "dev1", "key7"); code != 200 || string(r.Value) != `"value7"` {
		t.Errorf("GET /v1/kv/dev1/key7: %d %s", code, mustString(r))
	}
	for i := range 100 {
		if code, body := e.curl(t, dev, e.url(fmt.Sprintf("/delete?key=key%d", i))); code != 200 || body != "success" {
			t.Fatalf("/delete key%d: %d %q", i, code, body)
		}
	}
	if code, body := e.curl(t, dev, e.url("/get?key=key5")); code != 404 || body != "failure" {
		t.Errorf("/get of a deleted key: %d %q, want 404 failure", code, body)
	}
}

func trim(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

func mustString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
