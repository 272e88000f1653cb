package device

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
)

// restServer is a TLS REST stub for the Reader: it counts connections and
// serves records of device d1.
type restServer struct {
	*httptest.Server
	conns atomic.Int64
}

func newRESTServer(t *testing.T, h http.HandlerFunc) (*restServer, *Reader) {
	t.Helper()
	s := &restServer{}
	s.Server = httptest.NewUnstartedServer(h)
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.StartTLS()
	t.Cleanup(s.Close)
	tc := &tls.Config{RootCAs: s.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, MinVersion: tls.VersionTLS12}
	r := NewReader(s.URL, "d1", "pw", tc)
	t.Cleanup(r.CloseIdleConnections)
	return s, r
}

func recordHandler(t *testing.T) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if u, p, ok := req.BasicAuth(); !ok || u != "d1" || p != "pw" {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":{"code":"unauthorized","message":"bad credentials"}}`)
			return
		}
		key := strings.TrimPrefix(req.URL.Path, "/v1/kv/d1/")
		switch {
		case key == "missing":
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"error":{"code":"not_found","message":"no such key"}}`)
		case key == "teapot":
			w.WriteHeader(http.StatusTeapot)
			fmt.Fprint(w, "short and stout")
		case req.URL.Path == "/v1/kv/d1":
			// A page big enough to be sent chunked.
			var page struct {
				Items []iotkv.Record `json:"items"`
				Next  string         `json:"next"`
			}
			for i := range 500 {
				page.Items = append(page.Items, iotkv.Record{Device: "d1", Key: fmt.Sprintf("%s%04d", req.URL.Query().Get("prefix"), i), Value: json.RawMessage(`"v"`)})
			}
			_ = json.NewEncoder(w).Encode(page)
		default:
			_ = json.NewEncoder(w).Encode(iotkv.Record{Device: "d1", Key: key, Value: json.RawMessage(`{"k":"` + key + `"}`)})
		}
	}
}

func TestReaderKeepsOneConnection(t *testing.T) {
	s, r := newRESTServer(t, recordHandler(t))
	for i := range 20 {
		key := fmt.Sprintf("a/b c/%d", i)
		rec, err := r.Get(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Key != key || string(rec.Value) != `{"k":"`+key+`"}` {
			t.Fatalf("got %+v for %q", rec, key)
		}
	}
	if n := s.conns.Load(); n != 1 {
		t.Fatalf("%d connections for 20 sequential gets, want 1", n)
	}
	recs, err := r.List(context.Background(), "p")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 500 || recs[499].Key != "p0499" {
		t.Fatalf("list: %d records", len(recs))
	}
}

func TestReaderAnswers(t *testing.T) {
	_, r := newRESTServer(t, recordHandler(t))
	if _, err := r.Get(context.Background(), "missing"); !errors.Is(err, iotkv.ErrNotFound) {
		t.Fatalf("missing key: %v, want ErrNotFound", err)
	}
	_, err := r.Get(context.Background(), "teapot")
	if err == nil || !strings.Contains(err.Error(), "418") || !strings.Contains(err.Error(), "short and stout") {
		t.Fatalf("teapot: %v", err)
	}
	bad := NewReader(r.scheme()+"://"+r.host, "d1", "wrong", r.tls)
	defer bad.CloseIdleConnections()
	var e *iotkv.Error
	if _, err := bad.Get(context.Background(), "k"); !errors.As(err, &e) || e.Code != "unauthorized" {
		t.Fatalf("bad password: %v, want the edge's error", err)
	}
	if _, err := NewReader("", "d1", "pw", nil).Get(context.Background(), "k"); err == nil {
		t.Fatal("no REST address: no error")
	}
	if _, err := NewReader("ftp://x", "d1", "pw", nil).Get(context.Background(), "k"); err == nil {
		t.Fatal("ftp: no error")
	}
}

// The edge may close a kept connection while it is idle: the next get
// must not fail because of it.
func TestReaderRetriesOnAClosedIdleConnection(t *testing.T) {
	s, r := newRESTServer(t, recordHandler(t))
	for i := range 5 {
		if _, err := r.Get(context.Background(), "k"); err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
		s.CloseClientConnections()
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.conns.Load(); n != 5 {
		t.Fatalf("%d connections, want 5", n)
	}
}

func TestReaderHonoursTheContext(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	_, r := newRESTServer(t, func(w http.ResponseWriter, req *http.Request) { <-release })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := r.Get(ctx, "k")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	once.Do(func() { close(release) })
}

func (r *Reader) scheme() string {
	if r.tls != nil {
		return "https"
	}
	return "http"
}
