package rest

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/iotkv/iotkv"
)

// The seed API of the system iotkv replaces, kept for its clients:
// GET /put?key=K&value=V, /get?key=K, /delete?key=K in the caller's own
// namespace, values stored as JSON strings, text/plain answers.

func text(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

func (h *edgeHandler) seedKey(w http.ResponseWriter, r *http.Request, write bool) (device, key string, ok bool) {
	p, _ := PrincipalFrom(r.Context())
	key = r.URL.Query().Get("key")
	if err := h.o.Limits.ValidateKey(key); err != nil {
		text(w, http.StatusBadRequest, "failure")
		return "", "", false
	}
	allowed := p.Role.CanRead(p.Name, p.Name)
	if write {
		allowed = p.Role.CanWrite(p.Name, p.Name)
	}
	if !allowed {
		text(w, http.StatusForbidden, "failure")
		return "", "", false
	}
	return p.Name, key, true
}

func (h *edgeHandler) seedGet(w http.ResponseWriter, r *http.Request) {
	device, key, ok := h.seedKey(w, r, false)
	if !ok {
		return
	}
	rec, err := h.o.KV.Get(r.Context(), device, key)
	if errors.Is(err, iotkv.ErrNotFound) {
		text(w, http.StatusNotFound, "failure")
		return
	}
	if err != nil {
		text(w, http.StatusInternalServerError, "failure")
		return
	}
	var s string
	if json.Unmarshal(rec.Value, &s) == nil {
		text(w, http.StatusOK, s)
		return
	}
	text(w, http.StatusOK, string(rec.Value))
}

func (h *edgeHandler) seedPut(w http.ResponseWriter, r *http.Request) {
	device, key, ok := h.seedKey(w, r, true)
	if !ok {
		return
	}
	v, _ := json.Marshal(r.URL.Query().Get("value"))
	if err := h.o.Limits.ValidateValue(v); err != nil {
		text(w, http.StatusRequestEntityTooLarge, "failure")
		return
	}
	if _, err := h.o.KV.Put(r.Context(), device, key, v, 0); err != nil {
		seedFailure(w, err)
		return
	}
	text(w, http.StatusOK, "success")
}

// seedFailure answers a refused write "failure" with the status the JSON
// API would give it (403 quota_exceeded, 429 rate_limited, ...).
func seedFailure(w http.ResponseWriter, err error) {
	var ie *iotkv.Error
	if errors.As(err, &ie) {
		text(w, statusOf(ie.Code), "failure")
		return
	}
	text(w, http.StatusInternalServerError, "failure")
}

func (h *edgeHandler) seedDelete(w http.ResponseWriter, r *http.Request) {
	device, key, ok := h.seedKey(w, r, true)
	if !ok {
		return
	}
	if err := h.o.KV.Delete(r.Context(), device, key); err != nil {
		seedFailure(w, err)
		return
	}
	text(w, http.StatusOK, "success")
}
