package device

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/iotkv/iotkv"
)

// Reader reads a device's namespace from an edge over REST (HTTPS, Basic
// auth with the device's own account). It needs no queue, so `device get`
// works while another process holds the queue.
type Reader struct {
	rest, name, password string
	http                 *http.Client
}

// NewReader returns a Reader of name's namespace at rest (https://host:port)
// using tc (a CA-only root pool; the client certificate is optional there).
func NewReader(rest, name, password string, tc *tls.Config) *Reader {
	return &Reader{
		rest: strings.TrimRight(rest, "/"), name: name, password: password,
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc.Clone(), MaxIdleConnsPerHost: 4}},
	}
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

// CloseIdleConnections closes the HTTP connections kept for reuse.
func (r *Reader) CloseIdleConnections() { r.http.CloseIdleConnections() }

func (r *Reader) do(ctx context.Context, path string, out any) error {
	if r.rest == "" {
		return fmt.Errorf("no REST address configured")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.rest+path, nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth(r.name, r.password)
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
		return nil
	case http.StatusNotFound:
		return iotkv.ErrNotFound
	}
	var e struct {
		Error iotkv.Error `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil && e.Error.Code != "" {
		return fmt.Errorf("%s: %w", resp.Status, &e.Error)
	}
	return fmt.Errorf("%s", resp.Status+": "+strconv.Quote(string(body[:min(len(body), 200)])))
}

// escapeKey escapes each '/'-separated part of a key for a URL path.
func escapeKey(key string) string {
	parts := strings.Split(key, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// HistoryItem is one op of a key's history on the edge.
type HistoryItem struct {
	Op    string          `json:"op"`
	Value json.RawMessage `json:"value"`
	TS    *int64          `json:"ts"`
	Seq   uint64          `json:"seq"` // the edge's change seq
	At    int64           `json:"at"`  // the edge's clock when committed, ms
}

// History returns the ops of key committed at or after since (ms since
// the epoch; 0 for all the edge keeps), oldest first, following pages.
func (r *Reader) History(ctx context.Context, key string, since int64) ([]HistoryItem, error) {
	var all []HistoryItem
	var after uint64
	for {
		q := url.Values{"limit": {"1000"}}
		if since > 0 {
			q.Set("since", strconv.FormatInt(since, 10))
		}
		if after > 0 {
			q.Set("after", strconv.FormatUint(after, 10))
		}
		var page struct {
			Items []HistoryItem `json:"items"`
			Next  uint64        `json:"next"`
		}
		if err := r.do(ctx, "/v1/history/"+url.PathEscape(r.name)+"/"+escapeKey(key)+"?"+q.Encode(), &page); err != nil {
			return nil, fmt.Errorf("device %s: history %q: %w", r.name, key, err)
		}
		all = append(all, page.Items...)
		if page.Next == 0 || len(page.Items) == 0 {
			return all, nil
		}
		after = page.Next
	}
}
