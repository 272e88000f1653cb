package edge_test

import (
	"encoding/base64"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/iotkv/iotkv/internal/testenv"
)

// TestBruteForce: repeated wrong passwords are throttled per user and
// address and per address, on MQTT and REST; the throttle does not stop
// the right user elsewhere; failures are counted in /metrics; no password
// reaches the log.
func TestBruteForce(t *testing.T) {
	const secret = "hunter2-NEVER-LOG-ME"
	env := secStart(t, nil)

	t.Run("MQTT: wrong passwords, then refused even with the right one; another address logs in", func(t *testing.T) {
		tc := env.pki.ClientTLS(t, "dev-1")
		for i := 1; i <= 6; i++ {
			c, code := env.mqttLoginFrom(t, "dev-1", secret, 5, tc.Clone(), "127.0.0.1")
			if code != 0x86 {
				t.Fatalf("wrong password %d: CONNACK 0x%02x, want 0x86", i, code)
			}
			c.conn.Close()
		}
		c, code := env.mqttLoginFrom(t, "dev-1", testenv.Password("dev-1"), 5, tc.Clone(), "127.0.0.1")
		if code != 0x86 {
			t.Fatalf("right password while throttled: CONNACK 0x%02x, want 0x86", code)
		}
		c.conn.Close()
		if !strings.Contains(env.log.String(), "mqtt login refused: too many failures") {
			t.Fatal("throttled MQTT login not logged")
		}
		c, code = env.mqttLoginFrom(t, "dev-1", testenv.Password("dev-1"), 5, tc.Clone(), "127.0.0.2")
		if code != 0 {
			t.Fatalf("right password from 127.0.0.2: CONNACK 0x%02x, want 0", code)
		}
		c.conn.Close()
	})

	t.Run("REST: 401 five times, then 429 with Retry-After, also for the right password; another address gets in", func(t *testing.T) {
		from1, from2 := env.httpClientFrom(t, "127.0.0.1"), env.httpClientFrom(t, "127.0.0.2")
		for i := 1; i <= 5; i++ {
			if a := env.do(t, from1, "GET", "/v1/devices", "reader", secret, ""); a.status != 401 {
				t.Fatalf("wrong password %d: %d, want 401", i, a.status)
			}
		}
		a := env.do(t, from1, "GET", "/v1/devices", "reader", secret, "")
		if a.status != 429 {
			t.Fatalf("wrong password 6: %d, want 429", a.status)
		}
		if s, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || s < 1 {
			t.Fatalf("Retry-After %q", a.header.Get("Retry-After"))
		}
		if a := env.do(t, from1, "GET", "/v1/devices", "reader", testenv.Password("reader"), ""); a.status != 429 {
			t.Fatalf("right password while throttled: %d, want 429", a.status)
		}
		if a := env.do(t, from2, "GET", "/v1/devices", "reader", testenv.Password("reader"), ""); a.status != 200 {
			t.Fatalf("right password from 127.0.0.2: %d, want 200", a.status)
		}
		if a := env.do(t, from1, "GET", "/v1/devices", "writer", testenv.Password("writer"), ""); a.status != 200 {
			t.Fatalf("another user from the throttled address: %d, want 200 (below the per-address limit)", a.status)
		}
	})

	t.Run("REST: one address guessing many names is throttled for every name", func(t *testing.T) {
		from5, from6 := env.httpClientFrom(t, "127.0.0.5"), env.httpClientFrom(t, "127.0.0.6")
		// Real names, each guessed at most 3 times: below the per-name limit.
		names := []string{"edge-1"}
		for _, r := range secRoles {
			names = append(names, r.name)
		}
		i := 1
		for ; i <= 30; i++ {
			a := env.do(t, from5, "GET", "/v1/devices", names[i%len(names)], secret, "")
			if a.status == 429 {
				break
			}
			if a.status != 401 {
				t.Fatalf("guess %d: %d", i, a.status)
			}
		}
		t.Logf("address throttled after %d failures spread over as many names", i)
		if i != 21 {
			t.Fatalf("address throttled after %d failures, want 21", i)
		}
		if a := env.do(t, from5, "GET", "/v1/devices", "admin", testenv.Password("admin"), ""); a.status != 429 {
			t.Fatalf("right password from the throttled address: %d, want 429", a.status)
		}
		if a := env.do(t, from6, "GET", "/v1/devices", "admin", testenv.Password("admin"), ""); a.status != 200 {
			t.Fatalf("right password from 127.0.0.6: %d, want 200", a.status)
		}
	})

	t.Run("failures are counted in /metrics", func(t *testing.T) {
		a := env.do(t, env.httpClientFrom(t, "127.0.0.6"), "GET", "/metrics", "admin", testenv.Password("admin"), "")
		if a.status != 200 {
			t.Fatalf("/metrics: %d", a.status)
		}
		for metric, atLeast := range map[string]float64{
			`iotkv_auth_failures_total{proto="mqtt",reason="bad_password"}`: 6,
			`iotkv_auth_failures_total{proto="mqtt",reason="throttled"}`:    1,
			`iotkv_rest_auth_failures_total{reason="bad_password"}`:         26,
			`iotkv_rest_auth_failures_total{reason="throttled"}`:            2,
		} {
			m := regexp.MustCompile(regexp.QuoteMeta(metric) + ` (\S+)`).FindSubmatch(a.body)
			if m == nil {
				t.Errorf("%s missing from /metrics", metric)
				continue
			}
			if v, _ := strconv.ParseFloat(string(m[1]), 64); v < atLeast {
				t.Errorf("%s = %v, want at least %v", metric, v, atLeast)
			}
		}
	})

	t.Run("no password reaches the log", func(t *testing.T) {
		log := env.log.String()
		if !strings.Contains(log, "rest login refused") || !strings.Contains(log, "mqtt login refused") {
			t.Fatal("the refusals were not logged at all")
		}
		for _, s := range []string{secret, testenv.Password("dev-1"), testenv.Password("reader"), testenv.Password("admin"),
			base64.StdEncoding.EncodeToString([]byte("reader:" + secret))} {
			if strings.Contains(log, s) {
				t.Errorf("the log contains %q", s)
			}
		}
	})
}
