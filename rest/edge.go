package rest

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/console"
)

// KV is what the edge serves over REST.
type KV interface {
	Get(ctx context.Context, device, key string) (iotkv.Record, error)
	// List returns records of device with keys starting with prefix and
	// after `after`, at most limit, and the key to continue after.
	List(ctx context.Context, device, prefix, after string, limit int) ([]iotkv.Record, string, error)
	// Put and Delete return once the write is durable. ttl, when not 0,
	// makes the key expire that many seconds after the write.
	Put(ctx context.Context, device, key string, value json.RawMessage, ttl int64) (iotkv.Record, error)
	Delete(ctx context.Context, device, key string) error
	// Devices lists the devices seen, as JSON-encodable values.
	Devices(ctx context.Context) ([]DeviceInfo, error)
}

// DeviceInfo is one entry of GET /v1/devices.
type DeviceInfo struct {
	Device    string `json:"device"`
	LastSeq   uint64 `json:"last_seq"`
	LastWrite int64  `json:"last_write"`
	Connected bool   `json:"connected"`
	Keys      int64  `json:"keys"`  // live keys
	Bytes     int64  `json:"bytes"` // stored bytes the device's quota counts
}

// EdgeOptions configure the edge's handler.
type EdgeOptions struct {
	KV       KV
	History  History // nil: the history routes answer 404
	Watcher  Watcher // nil: the watch routes answer 404
	Auth     *Authenticator
	Metrics  *Metrics
	Gatherer prometheus.Gatherer // what /metrics shows
	Ready    func() error        // nil error: ready
	// DiskUsage, when set, is the store's size on disk in bytes (the
	// console's health page shows it).
	DiskUsage func() uint64
	Limits    iotkv.Limits
	Logger    *slog.Logger
	// WatchHeartbeat is how often an idle watch stream gets a comment
	// line; a client that reads nothing for two heartbeats is cut.
	// Default HeartbeatInterval.
	WatchHeartbeat time.Duration
}

//go:embed openapi.json
var openAPI []byte

// NewEdgeHandler routes every edge REST path of docs/protocol.md.
func NewEdgeHandler(o EdgeOptions) http.Handler {
	o.Limits = o.Limits.WithDefaults()
	if o.WatchHeartbeat <= 0 {
		o.WatchHeartbeat = HeartbeatInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	h := &edgeHandler{o: o}
	r := chi.NewRouter()
	r.Use(o.Metrics.Middleware, WithLogger(o.Logger))
	Common(r, o.Ready)
	r.Get("/v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPI)
	})
	MountConsole(r, console.Edge)
	r.Group(func(r chi.Router) {
		r.Use(o.Auth.Middleware)
		r.With(RequireRole(iotkv.RoleAdmin)).Get("/metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}).ServeHTTP)
		r.Get("/v1/whoami", WhoAmI)
		r.With(RequireRole(iotkv.RoleAdmin, iotkv.RoleReader, iotkv.RoleWriter)).Get("/v1/stats", h.stats)
		r.Get("/v1/devices", h.devices)
		r.Get("/v1/kv/{device}", h.list)
		r.Get("/v1/kv/{device}/*", h.get)
		r.Put("/v1/kv/{device}/*", h.put)
		r.Delete("/v1/kv/{device}/*", h.del)
		if o.History != nil {
			r.Get("/v1/history/{device}/*", h.history)
		}
		if o.Watcher != nil {
			r.Get("/v1/watch/{device}", h.watchDevice)
			r.With(RequireRole(iotkv.RoleReader, iotkv.RoleWriter, iotkv.RoleAdmin)).Get("/v1/watch", h.watchFleet)
		}
		r.Get("/get", h.seedGet)
		r.Get("/put", h.seedPut)
		r.Get("/delete", h.seedDelete)
	})
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, iotkv.CodeNotFound, "no route for "+r.URL.Path)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusMethodNotAllowed, iotkv.CodeBadRequest, r.Method+" is not allowed on "+r.URL.Path)
	})
	return r
}

// Common adds /healthz and /readyz (no auth).
func Common(r chi.Router, ready func() error) {
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil {
			if err := ready(); err != nil {
				WriteError(w, http.StatusServiceUnavailable, iotkv.CodeUnavailable, err.Error())
				return
			}
		}
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
}

type edgeHandler struct{ o EdgeOptions }

// target returns the device and key of a /v1/kv/{device}/{key...} path and
// checks the caller may touch it.
func (h *edgeHandler) target(w http.ResponseWriter, r *http.Request, write bool) (device, key string, ok bool) {
	device = chi.URLParam(r, "device")
	if err := iotkv.ValidateName(device); err != nil {
		WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "device: "+err.Error())
		return "", "", false
	}
	key = strings.TrimPrefix(r.URL.Path, "/v1/kv/"+device+"/")
	if err := h.o.Limits.ValidateKey(key); err != nil {
		WriteErr(w, err)
		return "", "", false
	}
	return device, key, h.allowed(w, r, device, write)
}

func (h *edgeHandler) allowed(w http.ResponseWriter, r *http.Request, device string, write bool) bool {
	p, _ := PrincipalFrom(r.Context())
	ok := p.Role.CanRead(p.Name, device)
	if write {
		ok = p.Role.CanWrite(p.Name, device)
	}
	if !ok {
		WriteError(w, http.StatusForbidden, iotkv.CodeNotAuthorized, "account "+p.Name+" may not "+map[bool]string{false: "read", true: "write"}[write]+" device "+device)
	}
	return ok
}

func (h *edgeHandler) get(w http.ResponseWriter, r *http.Request) {
	device, key, ok := h.target(w, r, false)
	if !ok {
		return
	}
	rec, err := h.o.KV.Get(r.Context(), device, key)
	if err != nil {
		WriteErr(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, rec)
}

func (h *edgeHandler) list(w http.ResponseWriter, r *http.Request) {
	device := chi.URLParam(r, "device")
	if err := iotkv.ValidateName(device); err != nil {
		WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "device: "+err.Error())
		return
	}
	if !h.allowed(w, r, device, false) {
		return
	}
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "limit must be an integer from 1 to 1000")
			return
		}
		limit = n
	}
	recs, next, err := h.o.KV.List(r.Context(), device, q.Get("prefix"), q.Get("after"), limit)
	if err != nil {
		WriteErr(w, err)
		return
	}
	if recs == nil {
		recs = []iotkv.Record{}
	}
	WriteJSON(w, http.StatusOK, map[string]any{"items": recs, "next": next})
}

func (h *edgeHandler) readValue(w http.ResponseWriter, r *http.Request) (json.RawMessage, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(h.o.Limits.MaxValueBytes)))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		WriteError(w, http.StatusRequestEntityTooLarge, iotkv.CodeTooLarge, "value is larger than "+strconv.Itoa(h.o.Limits.MaxValueBytes)+" bytes")
		return nil, false
	}
	if err != nil {
		WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "read body: "+err.Error())
		return nil, false
	}
	if err := h.o.Limits.ValidateValue(body); err != nil {
		WriteErr(w, err)
		return nil, false
	}
	return body, true
}

func (h *edgeHandler) put(w http.ResponseWriter, r *http.Request) {
	device, key, ok := h.target(w, r, true)
	if !ok {
		return
	}
	var ttl int64
	if s := r.URL.Query().Get("ttl"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err == nil {
			err = iotkv.ValidateTTL(n)
		}
		if err != nil {
			WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, fmt.Sprintf("ttl must be an integer from %d to %d seconds", iotkv.MinTTL, iotkv.MaxTTL))
			return
		}
		ttl = n
	}
	v, ok := h.readValue(w, r)
	if !ok {
		return
	}
	rec, err := h.o.KV.Put(r.Context(), device, key, v, ttl)
	if err != nil {
		WriteErr(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, rec)
}

func (h *edgeHandler) del(w http.ResponseWriter, r *http.Request) {
	device, key, ok := h.target(w, r, true)
	if !ok {
		return
	}
	if err := h.o.KV.Delete(r.Context(), device, key); err != nil {
		WriteErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *edgeHandler) devices(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	devs, err := h.o.KV.Devices(r.Context())
	if err != nil {
		WriteErr(w, err)
		return
	}
	out := make([]DeviceInfo, 0, len(devs))
	for _, d := range devs {
		if p.Role.CanRead(p.Name, d.Device) {
			out = append(out, d)
		}
	}
	WriteJSON(w, http.StatusOK, map[string]any{"devices": out})
}
