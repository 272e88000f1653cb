package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/iotkv/iotkv/certs"
)

// HTTPClient is an HTTPS client trusting the bench CA, with conns
// keep-alive connections.
func (r *Runner) HTTPClient(conns int) (*http.Client, error) {
	pool, err := certs.CAPool(r.PKI.Paths(EdgeID).CA)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig.RootCAs = pool
	tr.MaxIdleConnsPerHost = conns
	tr.MaxConnsPerHost = conns
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}, nil
}

// GetJSON GETs url as name and decodes the JSON answer into v.
func GetJSON(ctx context.Context, c *http.Client, url, name string, v any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", url, err)
	}
	req.SetBasicAuth(name, Password(name))
	resp, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, fmt.Errorf("get %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK || v == nil {
		return resp.StatusCode, nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return resp.StatusCode, fmt.Errorf("get %s: %w", url, err)
	}
	return resp.StatusCode, nil
}

// Put PUTs a JSON value as name.
func Put(ctx context.Context, c *http.Client, url, name, body string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, strings.NewReader(body))
	if err != nil {
		return fmt.Errorf("put %s: %w", url, err)
	}
	req.SetBasicAuth(name, Password(name))
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("put %s: %w", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("put %s: status %d", url, resp.StatusCode)
	}
	return nil
}

// WrkResult is what wrk reported.
type WrkResult struct {
	ReqPerS float64 `json:"req_per_s"`
	Non2xx  int64   `json:"non_2xx"`
	Errors  string  `json:"errors,omitempty"`
	P99ms   float64 `json:"p99_ms"`
	CPUus   float64 `json:"server_cpu_us_per_req,omitempty"`
	Output  string  `json:"-"`
}

var (
	reqRe    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	non2xxRe = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	errRe    = regexp.MustCompile(`Socket errors:.*`)
	p99Re    = regexp.MustCompile(`\s99%\s+([0-9.]+)(us|ms|s)`)
)

// Wrk runs wrk with conns connections against url as name for d.
func Wrk(ctx context.Context, url, name string, conns int, d time.Duration) (WrkResult, error) {
	if _, err := exec.LookPath("wrk"); err != nil {
		return WrkResult{}, fmt.Errorf("%w: wrk is not installed (apt-get install -y wrk)", ErrSkip)
	}
	auth := "Authorization: Basic " + basic(name)
	args := []string{"-t2", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(d.Seconds())), "--timeout", "30s", "--latency", "-H", auth, url}
	out, err := exec.CommandContext(ctx, "wrk", args...).CombinedOutput()
	if err != nil {
		return WrkResult{}, fmt.Errorf("wrk: %v: %s", err, out)
	}
	res := WrkResult{Output: string(out)}
	m := reqRe.FindSubmatch(out)
	if m == nil {
		return res, fmt.Errorf("wrk: no Requests/sec in %q", out)
	}
	res.ReqPerS, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := non2xxRe.FindSubmatch(out); m != nil {
		res.Non2xx, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if m := errRe.Find(out); m != nil {
		res.Errors = string(m)
	}
	if m := p99Re.FindSubmatch(out); m != nil {
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		switch string(m[2]) {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		res.P99ms = v
	}
	return res, nil
}
