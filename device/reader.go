package device

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/iotkv/iotkv"
)

const (
	restTimeout   = 30 * time.Second // one request: dial, TLS handshake, answer
	restMaxIdle   = 4                // connections kept for reuse
	restMaxAnswer = 64 << 20         // bytes of one answer
)

// Reader reads a device's namespace from an edge over REST (HTTPS, Basic
// auth with the device's own account). It needs no queue, so `device get`
// works while another process holds the queue. It is safe for concurrent
// use.
//
// It speaks HTTP/1.1 GET on kept-alive connections itself instead of using
// net/http: the Transport (connection pool, HTTP/2, proxies, two goroutines
// per connection) was about 0.6 MB of the slim binary and the rest of
// net/http another 0.4 MB, and on this machine's kernel the whole binary
// is resident, so it cost that much RSS in every device process. One GET
// and its answer (sized or chunked, Connection: close) is all it needs.
type Reader struct {
	name     string
	addr     string // host:port to dial
	host     string // the Host header
	prefix   string // path of the REST URL, without the trailing '/'
	tls      *tls.Config
	auth     string // the Authorization header's value
	urlErr   error  // the REST URL is unusable
	mu       sync.Mutex
	idle     []*restConn
	closeGen uint64 // bumped by CloseIdleConnections
}

// restConn is one kept-alive connection to the edge's REST port.
type restConn struct {
	c   net.Conn
	br  *bufio.Reader
	gen uint64 // Reader.closeGen when it was dialed
}

// NewReader returns a Reader of name's namespace at rest (https://host:port)
// using tc (a CA-only root pool; the client certificate is optional there).
func NewReader(rest, name, password string, tc *tls.Config) *Reader {
	r := &Reader{name: name, auth: "Basic " + base64.StdEncoding.EncodeToString([]byte(name+":"+password))}
	if rest == "" {
		r.urlErr = errors.New("no REST address configured")
		return r
	}
	u, err := url.Parse(strings.TrimRight(rest, "/"))
	switch {
	case err != nil:
		r.urlErr = fmt.Errorf("REST address %q: %w", rest, err)
		return r
	case u.Scheme != "https" && u.Scheme != "http":
		r.urlErr = fmt.Errorf("REST address %q: want https://host:port", rest)
		return r
	case u.Host == "" || u.RawQuery != "" || u.Fragment != "":
		r.urlErr = fmt.Errorf("REST address %q: want https://host:port[/path]", rest)
		return r
	}
	r.host, r.prefix, r.addr = u.Host, u.EscapedPath(), u.Host
	if u.Port() == "" {
		port := "443"
		if u.Scheme == "http" {
			port = "80"
		}
		r.addr = net.JoinHostPort(u.Hostname(), port)
	}
	if u.Scheme == "https" {
		if tc == nil {
			tc = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		r.tls = tc.Clone()
		if r.tls.ServerName == "" {
			r.tls.ServerName = u.Hostname()
		}
	}
	return r
}

// Get reads key. A missing key is an error wrapping iotkv.ErrNotFound.
func (r *Reader) Get(ctx context.Context, key string) (iotkv.Record, error) {
	var rec iotkv.Record
	err := r.do(ctx, "/v1/kv/"+url.PathEscape(r.name)+"/"+escapeKey(key), &rec)
	if err != nil {
		return rec, fmt.Errorf("device %s: get %q: %w", r.name, key, err)
	}
	return rec, nil
}

// List returns every record whose key starts with prefix, following the
// pages of the list endpoint.
func (r *Reader) List(ctx context.Context, prefix string) ([]iotkv.Record, error) {
	var all []iotkv.Record
	after := ""
	for {
		q := url.Values{"prefix": {prefix}, "limit": {"1000"}}
		if after != "" {
			q.Set("after", after)
		}
		var page struct {
			Items []iotkv.Record `json:"items"`
			Next  string         `json:"next"`
		}
		if err := r.do(ctx, "/v1/kv/"+url.PathEscape(r.name)+"?"+q.Encode(), &page); err != nil {
			return nil, fmt.Errorf("device %s: list %q: %w", r.name, prefix, err)
		}
		all = append(all, page.Items...)
		if page.Next == "" || len(page.Items) == 0 {
			return all, nil
		}
		after = page.Next
	}
}

// CloseIdleConnections closes the connections kept for reuse; one in use
// is closed when its request ends.
func (r *Reader) CloseIdleConnections() {
	r.mu.Lock()
	idle := r.idle
	r.idle = nil
	r.closeGen++
	r.mu.Unlock()
	for _, c := range idle {
		_ = c.c.Close()
	}
}

func (r *Reader) do(ctx context.Context, path string, out any) error {
	if r.urlErr != nil {
		return r.urlErr
	}
	target := r.prefix + path
	if strings.ContainsAny(target, " \r\n") {
		return fmt.Errorf("bad request path %q", target)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("GET %s: %w", target, err)
	}
	// A deadline on the connection, not a derived context: no timer and
	// no context per request.
	deadline := time.Now().Add(restTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	req := make([]byte, 0, 128+len(target)+len(r.host)+len(r.auth))
	req = append(append(append(req, "GET "...), target...), " HTTP/1.1\r\nHost: "...)
	req = append(append(append(req, r.host...), "\r\nAuthorization: "...), r.auth...)
	req = append(req, "\r\nUser-Agent: iotkv-device\r\nAccept: application/json\r\n\r\n"...)
	for retried := false; ; retried = true {
		c, reused, err := r.conn(ctx, deadline)
		if err != nil {
			return fmt.Errorf("GET %s: %w", target, err)
		}
		code, status, body, answered, err := r.roundTrip(ctx, c, req, deadline)
		if err != nil {
			if cerr := ctxErr(ctx); cerr != nil {
				return fmt.Errorf("GET %s: %w", target, cerr)
			}
			// The edge may have closed a kept connection while it sat
			// idle: a GET that got no answer on one is sent again once on
			// a new connection, as net/http does.
			if reused && !answered && !retried {
				continue
			}
			return fmt.Errorf("GET %s: %w", target, err)
		}
		return decodeAnswer(code, status, body, out)
	}
}

// ctxErr is ctx.Err(), or context.DeadlineExceeded once ctx's deadline
// has passed: the connection's deadline (the same instant) can fire before
// the context's timer does.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// conn returns an idle connection or dials a new one.
func (r *Reader) conn(ctx context.Context, deadline time.Time) (c *restConn, reused bool, err error) {
	r.mu.Lock()
	if n := len(r.idle); n > 0 {
		c = r.idle[n-1]
		r.idle = r.idle[:n-1]
	}
	gen := r.closeGen
	r.mu.Unlock()
	if c != nil {
		return c, true, nil
	}
	d := &net.Dialer{Deadline: deadline}
	var nc net.Conn
	if r.tls != nil {
		nc, err = (&tls.Dialer{NetDialer: d, Config: r.tls}).DialContext(ctx, "tcp", r.addr)
	} else {
		nc, err = d.DialContext(ctx, "tcp", r.addr)
	}
	if err != nil {
		return nil, false, fmt.Errorf("connect to %s: %w", r.addr, err)
	}
	return &restConn{c: nc, br: bufio.NewReader(nc), gen: gen}, false, nil
}

// roundTrip sends req on c and reads the answer. c goes back to the idle
// list when it can carry another request, else it is closed. answered
// reports whether any byte of an answer arrived.
func (r *Reader) roundTrip(ctx context.Context, c *restConn, req []byte, deadline time.Time) (code int, status string, body []byte, answered bool, err error) {
	keep := false
	defer func() {
		if keep {
			r.putIdle(c)
		} else {
			_ = c.c.Close()
		}
	}()
	if err := c.c.SetDeadline(deadline); err != nil {
		return 0, "", nil, false, err
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
		defer func() {
			if !stop() {
				keep = false // the deadline may be in the past now
			}
		}()
	}
	if _, err := c.c.Write(req); err != nil {
		return 0, "", nil, false, err
	}
	if _, err := c.br.Peek(1); err != nil {
		return 0, "", nil, false, err
	}
	a, err := readHTTPAnswer(c.br, restMaxAnswer)
	if err != nil {
		return 0, "", nil, true, fmt.Errorf("read answer: %w", err)
	}
	keep = a.keep
	if keep {
		if err := c.c.SetDeadline(time.Time{}); err != nil {
			keep = false
		}
	}
	return a.code, a.status, a.body, true, nil
}

func (r *Reader) putIdle(c *restConn) {
	r.mu.Lock()
	if c.gen == r.closeGen && len(r.idle) < restMaxIdle {
		r.idle = append(r.idle, c)
		c = nil
	}
	r.mu.Unlock()
	if c != nil {
		_ = c.c.Close()
	}
}

// decodeAnswer turns an answer into out or an error.
func decodeAnswer(code int, status string, body []byte, out any) error {
	switch code {
	case 200:
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
		return nil
	case 404:
		return iotkv.ErrNotFound
	}
	var e struct {
		Error iotkv.Error `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error.Code != "" {
		return fmt.Errorf("%s: %w", status, &e.Error)
	}
	return fmt.Errorf("%s: %s", status, strconv.Quote(string(body[:min(len(body), 200)])))
}

// escapeKey escapes each '/'-separated part of a key for a URL path.
func escapeKey(key string) string {
	parts := strings.Split(key, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}
