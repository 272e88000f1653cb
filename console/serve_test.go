package console_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/iotkv/iotkv/console"
	"github.com/iotkv/iotkv/internal/testenv"
)

// The console's files come from the binary over HTTPS, without a login and
// with the security headers, on the edge and on the master; each shows its
// own page, and nothing but GET and HEAD is answered.
func TestConsoleIsServedWithSecurityHeaders(t *testing.T) {
	pki, e, m := startServers(t)
	c := pki.HTTPClient(t, "admin")
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, srv := range []struct{ name, base, app, other string }{
		{"edge", "https://" + e.HTTPAddr(), "edge.js", "master.js"},
		{"master", "https://" + m.HTTPAddr(), "master.js", "edge.js"},
	} {
		t.Run(srv.name, func(t *testing.T) {
			get := func(method, path string) (*http.Response, string) {
				t.Helper()
				req, _ := http.NewRequest(method, srv.base+path, nil)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				return resp, string(body)
			}
			resp, body := get("GET", "/ui/")
			if resp.StatusCode != 200 || !strings.Contains(body, `src="`+srv.app+`"`) || strings.Contains(body, srv.other) {
				t.Fatalf("GET /ui/: %d, want the %s page:\n%s", resp.StatusCode, srv.name, body)
			}
			if strings.Contains(body, "<script>") || strings.Contains(body, "style=") || strings.Contains(body, "http://") || strings.Contains(body, "https://") {
				t.Errorf("the page has inline script or style, or names another host:\n%s", body)
			}
			for path, ctype := range map[string]string{"/ui/": "text/html", "/ui/common.js": "text/javascript", "/ui/" + srv.app: "text/javascript", "/ui/app.css": "text/css", "/ui/favicon.svg": "image/svg+xml"} {
				resp, _ := get("GET", path)
				if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) {
					t.Errorf("GET %s: %d %s; want 200 %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), ctype)
				}
				for k, v := range map[string]string{
					"Content-Security-Policy": console.CSP, "X-Frame-Options": "DENY",
					"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
				} {
					if got := resp.Header.Get(k); got != v {
						t.Errorf("GET %s: %s = %q; want %q", path, k, got, v)
					}
				}
			}
			if resp, _ := get("GET", "/ui"); resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/ui/" {
				t.Errorf("GET /ui: %d to %q; want a redirect to /ui/", resp.StatusCode, resp.Header.Get("Location"))
			}
			for _, path := range []string{"/ui/" + srv.name + ".html", "/ui/" + strings.TrimSuffix(srv.other, ".js") + ".html", "/ui/nothing.js", "/ui/../v1/devices"} {
				if resp, _ := get("GET", path); resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMovedPermanently {
					t.Errorf("GET %s: %d; want 404", path, resp.StatusCode)
				}
			}
			if resp, _ := get("POST", "/ui/"); resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("POST /ui/: %d; want 405", resp.StatusCode)
			}
		})
	}
}

// GET /v1/whoami names the caller; GET /v1/stats is for reader, writer and
// admin accounts and counts what the edge did.
func TestWhoAmIAndStats(t *testing.T) {
	pki, e, m := startServers(t)
	call := func(base, user, path string, out any) int {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		if user != "" {
			req.SetBasicAuth(user, testenv.Password(user))
		}
		resp, err := pki.HTTPClient(t, "admin").Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil && resp.StatusCode == 200 {
			if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode
	}
	edgeURL, masterURL := "https://"+e.HTTPAddr(), "https://"+m.HTTPAddr()
	for _, c := range []struct{ base, user, role string }{
		{edgeURL, "admin", "admin"}, {edgeURL, "d1", "device"}, {masterURL, "rd", "reader"},
	} {
		var who struct{ Name, Role string }
		if code := call(c.base, c.user, "/v1/whoami", &who); code != 200 || who.Name != c.user || who.Role != c.role {
			t.Errorf("whoami as %s: %d %+v", c.user, code, who)
		}
	}
	if code := call(edgeURL, "", "/v1/whoami", nil); code != http.StatusUnauthorized {
		t.Errorf("whoami without credentials: %d; want 401", code)
	}
	if code := call(edgeURL, "d1", "/v1/stats", nil); code != http.StatusForbidden {
		t.Errorf("stats as a device: %d; want 403", code)
	}

	dev := pki.Connect(t, e.MQTTAddr(), "d1")
	defer dev.Disconnect(50)
	publish(t, dev, 1, "a", 1)
	publish(t, dev, 2, "b", 2)
	var st struct {
		OpsApplied float64 `json:"ops_applied_total"`
		Commits    uint64  `json:"commits_total"`
		Buckets    []struct {
			LE    float64
			Count uint64
		} `json:"commit_seconds_buckets"`
		ConnectedDevices int    `json:"connected_devices"`
		Devices          int    `json:"devices"`
		DiskBytes        uint64 `json:"disk_bytes"`
	}
	if code := call(edgeURL, "rd", "/v1/stats", &st); code != 200 {
		t.Fatalf("stats as a reader: %d", code)
	}
	if st.OpsApplied != 2 || st.Commits < 1 || len(st.Buckets) == 0 || st.Buckets[len(st.Buckets)-1].Count != st.Commits ||
		st.ConnectedDevices != 1 || st.Devices != 1 || st.DiskBytes == 0 {
		t.Errorf("stats after two single-op batches from one connected device: %+v", st)
	}
}
