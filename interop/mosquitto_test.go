package interop_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/testenv"
)

// mosq runs mosquitto_pub or mosquitto_sub as user with the given files and
// returns its combined output and whether it exited 0.
func (e env) mosq(t *testing.T, tool string, p certs.Paths, user, password string, args ...string) (string, bool) {
	t.Helper()
	host, port, _ := net.SplitHostPort(e.edge.MQTTAddr())
	base := []string{"-h", host, "-p", port, "--cafile", p.CA, "--cert", p.Cert, "--key", p.Key, "-u", user, "-P", password}
	out, err := exec.Command(tool, append(base, args...)...).CombinedOutput()
	return string(out), err == nil
}

func TestMosquittoClientsWriteAndAreRefused(t *testing.T) {
	testenv.RequireTool(t, "mosquitto_pub")
	testenv.RequireTool(t, "mosquitto_sub")
	testenv.RequireTool(t, "curl")
	e := start(t, "dev1", "dev2")
	dev1, dev2 := e.pki.Paths("dev1"), e.pki.Paths("dev2")
	pw := testenv.Password("dev1")

	for _, v := range []string{"mqttv311", "mqttv5"} {
		seq := map[string]int{"mqttv311": 1, "mqttv5": 2}[v]
		batch := fmt.Sprintf(`{"seq":%d,"ops":[{"op":"put","key":"%s","value":%d}]}`, seq, v, seq)
		if out, ok := e.mosq(t, "mosquitto_pub", dev1, "dev1", pw, "-V", v, "-q", "1", "-t", iotkv.BatchTopic("dev1"), "-m", batch); !ok {
			t.Fatalf("mosquitto_pub %s batch failed: %s", v, out)
		}
		if code, r := e.record(t, "dev1", v); code != 200 || string(r.Value) != fmt.Sprint(seq) {
			t.Errorf("after mosquitto_pub %s: GET dev1/%s = %d %+v", v, v, code, r)
		}
		if out, ok := e.mosq(t, "mosquitto_pub", dev1, "dev1", pw, "-V", v, "-q", "1", "-t", iotkv.KVTopic("dev1", "kv-"+v), "-m", `"on"`); !ok {
			t.Fatalf("mosquitto_pub %s kv put failed: %s", v, out)
		}
		if code, _ := e.record(t, "dev1", "kv-"+v); code != 200 {
			t.Errorf("kv put with %s did not apply: %d", v, code)
		}
		if out, ok := e.mosq(t, "mosquitto_pub", dev1, "dev1", pw, "-V", v, "-q", "1", "-t", iotkv.KVTopic("dev1", "kv-"+v), "-n"); !ok {
			t.Fatalf("mosquitto_pub %s kv delete failed: %s", v, out)
		}
		if code, _ := e.record(t, "dev1", "kv-"+v); code != 404 {
			t.Errorf("kv delete (empty payload) with %s did not apply: %d", v, code)
		}
	}
	out, ok := e.mosq(t, "mosquitto_sub", dev1, "dev1", pw, "-t", iotkv.AckTopic("dev1"), "-C", "1", "-W", "5")
	var ack iotkv.AckMessage
	if !ok || json.Unmarshal([]byte(strings.TrimSpace(out)), &ack) != nil || ack.Seq != 2 {
		t.Errorf("retained status/ack: %q (ok=%v), want seq 2", out, ok)
	}

	refusals := []struct {
		name  string
		files certs.Paths
		user  string
		pass  string
		args  []string
	}{
		{"a certificate whose CN is not the username", dev2, "dev1", pw, []string{"-t", iotkv.BatchTopic("dev1")}},
		{"a wrong password", dev1, "dev1", "wrong", []string{"-t", iotkv.BatchTopic("dev1")}},
	}
	for _, r := range refusals {
		for _, v := range []string{"mqttv311", "mqttv5"} {
			args := append([]string{"-V", v, "-q", "1", "-m", `{"seq":99,"ops":[{"op":"put","key":"evil","value":1}]}`}, r.args...)
			if out, ok := e.mosq(t, "mosquitto_pub", r.files, r.user, r.pass, args...); ok {
				t.Errorf("%s with %s was not refused: %s", r.name, v, out)
			}
		}
	}
	// A foreign topic: v5 gets PUBACK 0x87 (mosquitto_pub reports it), v3.1.1
	// is disconnected; either way nothing lands in dev2's namespace.
	for _, v := range []string{"mqttv311", "mqttv5"} {
		out, ok := e.mosq(t, "mosquitto_pub", dev1, "dev1", pw, "-V", v, "-q", "1", "-t", iotkv.BatchTopic("dev2"), "-m", `{"seq":1,"ops":[{"op":"put","key":"evil","value":1}]}`)
		if ok && !strings.Contains(strings.ToLower(out), "not authorized") {
			t.Errorf("publishing on dev2's topic with %s was not refused: %q", v, out)
		}
	}
	if code, _ := e.record(t, "dev2", "evil"); code != 404 {
		t.Errorf("dev1 wrote into dev2's namespace: %d", code)
	}
	if code, _ := e.record(t, "dev1", "evil"); code != 404 {
		t.Errorf("a refused login wrote: %d", code)
	}
}
