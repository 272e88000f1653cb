// Package rest is iotkv's HTTPS API: chi routes, Basic auth against the
// accounts with throttling, JSON errors, metrics per route, and the server
// with its timeouts. It serves what it is given through small interfaces
// (KV, Readiness) and never imports the edge or the master.
package rest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

// Server is an HTTPS server with timeouts and a header size limit.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	log  *slog.Logger
	wg   sync.WaitGroup
	once sync.Once
	err  error
}

// Listen binds addr with TLS; Serve starts answering.
func Listen(addr string, tlsConf *tls.Config, h http.Handler, log *slog.Logger) (*Server, error) {
	if tlsConf == nil {
		return nil, errors.New("rest: TLS config is required (there is no plaintext listener)")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen https %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      5 * time.Minute, // full backups stream for a while
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return &Server{srv: srv, ln: tls.NewListener(ln, tlsConf), log: log}, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve answers requests in a goroutine the Server owns until Close.
func (s *Server) Serve() {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("https server stopped", "err", err)
		}
	}()
}

// Close stops accepting, lets requests in flight finish until ctx ends, and
// waits for the serve goroutine. Safe to call twice.
func (s *Server) Close(ctx context.Context) error {
	s.once.Do(func() {
		s.err = s.srv.Shutdown(ctx)
		if s.err != nil {
			_ = s.srv.Close()
		}
		s.wg.Wait()
	})
	return s.err
}

// Metrics measures requests by route pattern and status code.
type Metrics struct {
	latency *prometheus.HistogramVec
}

// NewMetrics registers the request histogram on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "iotkv_http_request_seconds", Help: "HTTP request latency by route and status code.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
	}, []string{"route", "code"})
	if err := reg.Register(h); err != nil {
		return nil, fmt.Errorf("register http metrics: %w", err)
	}
	return &Metrics{latency: h}, nil
}

// Middleware observes each request after it is routed.
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		m.latency.WithLabelValues(route, strconv.Itoa(ww.Status())).Observe(time.Since(start).Seconds())
	})
}

type logKey struct{}

func logFrom(r *http.Request) *slog.Logger {
	if l, ok := r.Context().Value(logKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// WithLogger makes log available to handlers.
func WithLogger(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), logKey{}, log)))
		})
	}
}
