// Package interop_test drives the edge with clients we did not write:
// MQTT.js (npm mqtt), Python paho (Debian python3-paho-mqtt), mosquitto_pub
// and mosquitto_sub (Debian mosquitto-clients) and curl. Each test skips with
// a message when its tool is missing, and fails instead under CI=true.
package interop_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

type env struct {
	pki  *testenv.PKI
	edge *edge.Edge
}

func start(t *testing.T, devices ...string) env {
	t.Helper()
	p := testenv.NewPKI(t)
	for _, d := range devices {
		p.Identity(t, d, iotkv.RoleDevice)
	}
	return env{pki: p, edge: testenv.StartEdge(t, p, "edge1", nil)}
}

// run runs a command and returns its standard output as JSON lines.
func run(t *testing.T, name string, args ...string) []map[string]any {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", name, err, out, stderr.String())
	}
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s printed a non-JSON line %q", name, sc.Text())
		}
		lines = append(lines, m)
	}
	t.Logf("%s said:\n%s", name, out)
	return lines
}

// curl runs curl against the edge as user:pass and returns status and body.
func (e env) curl(t *testing.T, userpass string, args ...string) (int, string) {
	t.Helper()
	base := []string{"-sS", "--max-time", "10", "--cacert", e.pki.Paths("edge1").CA, "-o", "-", "-w", "\n%{http_code}"}
	if userpass != "" {
		base = append(base, "-u", userpass)
	}
	out, err := exec.Command("curl", append(base, args...)...).Output()
	if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndex(s, "\n")
	var code int
	fmt.Sscan(s[i+1:], &code)
	return code, s[:max(i, 0)]
}

func (e env) url(path string) string { return "https://" + e.edge.HTTPAddr() + path }

func (e env) record(t *testing.T, device, key string) (int, iotkv.Record) {
	t.Helper()
	code, body := e.curl(t, device+":"+testenv.Password(device), e.url("/v1/kv/"+device+"/"+key))
	var r iotkv.Record
	if code == 200 {
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("GET %s/%s: %v: %s", device, key, err, body)
		}
	}
	return code, r
}

func reasons(lines []map[string]any) map[string][]float64 {
	out := map[string][]float64{}
	for _, l := range lines {
		if topic, ok := l["topic"].(string); ok {
			if r, ok := l["reason"].(float64); ok {
				out[topic] = append(out[topic], r)
			}
		}
	}
	return out
}

func TestMQTTjsPublishesBatchesWithReasonCodes(t *testing.T) {
	testenv.RequireTool(t, "node")
	testenv.RequireTool(t, "curl")
	dir, _ := filepath.Abs("node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "mqtt")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("MQTT.js is not installed: run 'npm ci --prefix interop/node' (.ci/run does)")
		}
		t.Skip("skipping: MQTT.js is not installed; run 'npm ci --prefix interop/node'")
	}
	e := start(t, "dev1", "dev2")
	p := e.pki.Paths("dev1")
	tooMany := iotkv.Batch{Seq: 9}
	for i := range 1001 {
		tooMany.Ops = append(tooMany.Ops, iotkv.Op{Op: "put", Key: fmt.Sprint("k", i), Value: json.RawMessage("1")})
	}
	tooManyJSON, _ := json.Marshal(tooMany)
	plan2 := mustJSON(t, []map[string]any{{"topic": iotkv.BatchTopic("dev1"), "payload": string(tooManyJSON)}})
	lines := run(t, "node", filepath.Join(dir, "publish.mjs"), "mqtts://"+e.edge.MQTTAddr(), p.CA, p.Cert, p.Key, "dev1", testenv.Password("dev1"), string(mustJSON(t, []map[string]any{
		{"topic": iotkv.BatchTopic("dev1"), "payload": `{"seq":1,"ops":[{"op":"put","key":"temp","value":21.5,"ts":1764000000123}]}`},
		{"topic": iotkv.BatchTopic("dev1"), "payload": `{"seq":2,"ops":[{"op":"put","key":"bad"`},
		{"topic": iotkv.KVTopic("dev1", "room/1"), "payload": `{"on":true}`},
		{"topic": iotkv.BatchTopic("dev2"), "payload": `{"seq":1,"ops":[{"op":"put","key":"x","value":1}]}`},
	})))
	got := reasons(lines)
	want := map[string][]float64{
		iotkv.BatchTopic("dev1"):        {0x00, 0x99},
		iotkv.KVTopic("dev1", "room/1"): {0x00},
		iotkv.BatchTopic("dev2"):        {0x87},
	}
	for topic, codes := range want {
		if fmt.Sprint(got[topic]) != fmt.Sprint(codes) {
			t.Errorf("PUBACK reason codes on %s = %v, want %v", topic, got[topic], codes)
		}
	}
	lines = run(t, "node", filepath.Join(dir, "publish.mjs"), "mqtts://"+e.edge.MQTTAddr(), p.CA, p.Cert, p.Key, "dev1", testenv.Password("dev1"), string(plan2))
	// 0x97 quota exceeded, not 0x95 (invalid in a PUBACK): see broker.reasonCode.
	if r := reasons(lines)[iotkv.BatchTopic("dev1")]; fmt.Sprint(r) != fmt.Sprint([]float64{0x97}) {
		t.Errorf("a batch over the op limit got reason codes %v, want [151] (0x97)", r)
	}
	if code, r := e.record(t, "dev1", "temp"); code != 200 || string(r.Value) != "21.5" || r.TS == nil || *r.TS != 1764000000123 || r.Seq != 1 {
		t.Errorf("dev1/temp after MQTT.js batch: %d %+v", code, r)
	}
	if code, _ := e.record(t, "dev1", "bad"); code != 404 {
		t.Errorf("the malformed batch applied something: GET dev1/bad = %d", code)
	}
	if code, r := e.record(t, "dev1", "room/1"); code != 200 || string(r.Value) != `{"on":true}` {
		t.Errorf("dev1/room/1 after MQTT.js kv put: %d %+v", code, r)
	}
	if code, _ := e.record(t, "dev1", "k0"); code != 404 {
		t.Errorf("the batch over the op limit applied something: GET dev1/k0 = %d", code)
	}
	if code, _ := e.record(t, "dev2", "x"); code != 404 {
		t.Errorf("dev1 wrote into dev2's namespace: GET dev2/x = %d", code)
	}
	// Wrong password: CONNACK refusal, reported as a connect error.
	lines = run(t, "node", filepath.Join(dir, "publish.mjs"), "mqtts://"+e.edge.MQTTAddr(), p.CA, p.Cert, p.Key, "dev1", "wrong", "[]")
	if len(lines) == 0 || lines[0]["connect_error"] == nil {
		t.Errorf("MQTT.js with a wrong password was not refused: %v", lines)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// python returns the Python that has paho-mqtt (Debian's python3-paho-mqtt
// installs it for /usr/bin/python3).
func python(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import paho.mqtt.client").Run() == nil {
			return py
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("python3 with paho-mqtt is required under CI=true (apt-get install python3-paho-mqtt)")
	}
	t.Skip("skipping: python3-paho-mqtt is not installed")
	return ""
}

func TestPythonPahoV311AndV5(t *testing.T) {
	py := python(t)
	testenv.RequireTool(t, "curl")
	e := start(t, "dev1")
	p := e.pki.Paths("dev1")
	host, port, _ := net.SplitHostPort(e.edge.MQTTAddr())
	script, _ := filepath.Abs("python/publish.py")
	pyRun := func(version, password string, plan any) []map[string]any {
		return run(t, py, script, host, port, p.CA, p.Cert, p.Key, "dev1", password, version, string(mustJSON(t, plan)))
	}

	lines := pyRun("311", testenv.Password("dev1"), map[string]any{"expect_ack": 1, "expect_error": true, "messages": []map[string]string{
		{"topic": iotkv.BatchTopic("dev1"), "payload": `{"seq":1,"ops":[{"op":"put","key":"a","value":"x"},{"op":"put","key":"b","value":2}]}`},
		{"topic": iotkv.BatchTopic("dev1"), "payload": `{"seq":2,"ops":[{"op":"put","key":"/lead","value":1}]}`},
	}})
	var sawError, sawAck bool
	for _, l := range lines {
		if l["connect_rc"] != nil && l["connect_rc"] != 0.0 {
			t.Fatalf("python v3.1.1 connect refused: %v", l)
		}
		if l["published"] != nil && l["acked"] != true {
			t.Errorf("python v3.1.1 publish not acknowledged: %v", l)
		}
		if l["topic"] == iotkv.ErrorTopic("dev1") {
			var em iotkv.ErrorMessage
			_ = json.Unmarshal([]byte(l["payload"].(string)), &em)
			sawError = em.Seq == 2 && em.Code == iotkv.CodeInvalidKey
		}
		if l["ack_reached"] == true {
			sawAck = true
		}
	}
	if !sawError {
		t.Error("python v3.1.1 did not get a status/error for the batch with a '/'-leading key")
	}
	if !sawAck {
		t.Error("python v3.1.1 did not see status/ack reach seq 1")
	}

	lines = pyRun("5", testenv.Password("dev1"), map[string]any{"expect_ack": 3, "messages": []map[string]string{
		{"topic": iotkv.BatchTopic("dev1"), "payload": `{"seq":3,"ops":[{"op":"del","key":"a"}]}`},
	}})
	if lines[len(lines)-1]["ack_reached"] != true {
		t.Errorf("python v5 did not see status/ack reach seq 3: %v", lines)
	}
	if code, _ := e.record(t, "dev1", "a"); code != 404 {
		t.Errorf("dev1/a after the v5 delete: %d, want 404", code)
	}
	if code, r := e.record(t, "dev1", "b"); code != 200 || string(r.Value) != "2" {
		t.Errorf("dev1/b: %d %+v", code, r)
	}
	if code, _ := e.record(t, "dev1", "/lead"); code == 200 {
		t.Error("the refused batch was applied")
	}

	lines = pyRun("311", "wrong", map[string]any{"messages": []any{}})
	if len(lines) == 0 || lines[0]["connect_rc"] == 0.0 {
		t.Errorf("python with a wrong password was not refused: %v", lines)
	}
}
