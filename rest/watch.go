package rest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/iotkv/iotkv"
)

// HistoryItem is one op of a key's history.
type HistoryItem struct {
	Op    string          `json:"op"`
	Value json.RawMessage `json:"value"`
	TS    *int64          `json:"ts"`
	Seq   uint64          `json:"seq"` // the edge's change seq
	At    int64           `json:"at"`  // the edge's clock when committed, ms
}

// HistoryQuery selects part of a key's history; zero fields do not
// restrict.
type HistoryQuery struct {
	Since, Until int64  // ms, inclusive, on At
	After        uint64 // change seq to continue after
	Limit        int
}

// History is what the edge serves of the past of its keys.
type History interface {
	// History returns the key's durable ops oldest first and the change
	// seq to continue after (0 at the end).
	History(ctx context.Context, device, key string, q HistoryQuery) ([]HistoryItem, uint64, error)
}

// WatchRequest asks for a stream of changes.
type WatchRequest struct {
	Account string // counted against the per-account limit
	Device  string // "" for every device
	Prefix  string // of the key
	// Resume: start after After (the Last-Event-ID) instead of now.
	Resume bool
	After  uint64
}

// WatchEvent is one Server-Sent Event.
type WatchEvent struct {
	Kind string // put, del, reset or overflow
	ID   uint64 // the change seq; 0: no id line
	Data []byte // one line of JSON
	More bool   // another event is ready: do not flush yet
}

// WatchStream is one open watch. Next blocks until an event is ready or
// ctx ends; an overflow event is the last one.
type WatchStream interface {
	Next(ctx context.Context) (WatchEvent, error)
	Close() error
}

// Watcher opens watch streams; it refuses with an *iotkv.Error (for
// example rate_limited when the watcher limits are reached).
type Watcher interface {
	Watch(ctx context.Context, req WatchRequest) (WatchStream, error)
}

// HeartbeatInterval is how often an idle stream gets a comment line by
// default, so proxies and clients can tell it is alive.
const HeartbeatInterval = 15 * time.Second

// parseMs reads an optional time in ms since the epoch.
func parseMs(q string) (int64, bool) {
	if q == "" {
		return 0, true
	}
	n, err := strconv.ParseInt(q, 10, 64)
	return n, err == nil && n >= 0
}

func (h *edgeHandler) history(w http.ResponseWriter, r *http.Request) {
	device := chi.URLParam(r, "device")
	if err := iotkv.ValidateName(device); err != nil {
		WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "device: "+err.Error())
		return
	}
	key := strings.TrimPrefix(r.URL.Path, "/v1/history/"+device+"/")
	if err := h.o.Limits.ValidateKey(key); err != nil {
		WriteErr(w, err)
		return
	}
	if !h.allowed(w, r, device, false) {
		return
	}
	qv := r.URL.Query()
	var q HistoryQuery
	var ok bool
	if q.Since, ok = parseMs(qv.Get("since")); !ok {
		WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "since must be a time in ms since the epoch")
		return
	}
	if q.Until, ok = parseMs(qv.Get("until")); !ok {
		WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "until must be a time in ms since the epoch")
		return
	}
	if s := qv.Get("after"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "after must be a change seq (a non-negative integer)")
			return
		}
		q.After = n
	}
	q.Limit = 100
	if s := qv.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "limit must be an integer from 1 to 1000")
			return
		}
		q.Limit = n
	}
	items, next, err := h.o.History.History(r.Context(), device, key, q)
	if err != nil {
		WriteErr(w, err)
		return
	}
	if items == nil {
		items = []HistoryItem{}
	}
	WriteJSON(w, http.StatusOK, map[string]any{"items": items, "next": next})
}

func (h *edgeHandler) watchDevice(w http.ResponseWriter, r *http.Request) {
	device := chi.URLParam(r, "device")
	if err := iotkv.ValidateName(device); err != nil {
		WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "device: "+err.Error())
		return
	}
	if !h.allowed(w, r, device, false) {
		return
	}
	h.watch(w, r, device)
}

func (h *edgeHandler) watchFleet(w http.ResponseWriter, r *http.Request) {
	h.watch(w, r, "")
}

// watch serves one Server-Sent Events stream. Each write extends the
// connection's write deadline (the server's WriteTimeout would end the
// stream otherwise); a client that does not read for writeStall is cut.
func (h *edgeHandler) watch(w http.ResponseWriter, r *http.Request, device string) {
	p, _ := PrincipalFrom(r.Context())
	req := WatchRequest{Account: p.Name, Device: device, Prefix: r.URL.Query().Get("prefix")}
	if req.Prefix != "" {
		if err := h.o.Limits.ValidateKey(req.Prefix); err != nil {
			WriteErr(w, err)
			return
		}
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		n, err := strconv.ParseUint(strings.TrimSpace(id), 10, 64)
		if err != nil {
			WriteError(w, http.StatusBadRequest, iotkv.CodeBadRequest, "Last-Event-ID must be a change seq (a non-negative integer)")
			return
		}
		req.Resume, req.After = true, n
	}
	s, err := h.o.Watcher.Watch(r.Context(), req)
	if err != nil {
		WriteErr(w, err)
		return
	}
	defer s.Close()
	rc := http.NewResponseController(w)
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	heartbeat := h.o.WatchHeartbeat
	writeStall := 2 * heartbeat
	send := func(b []byte, flush bool) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(writeStall))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return !flush || rc.Flush() == nil
	}
	if !send([]byte(": iotkv watch\nretry: 2000\n\n"), true) {
		return
	}
	ctx := r.Context()
	var buf []byte
	for {
		wctx, cancel := context.WithTimeout(ctx, heartbeat)
		ev, err := s.Next(wctx)
		cancel()
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return // the client went away
		case errors.Is(err, context.DeadlineExceeded):
			if !send([]byte(": heartbeat\n\n"), true) {
				return
			}
			continue
		default:
			logFrom(r).Debug("watch stream ended", "err", err)
			return
		}
		buf = buf[:0]
		if ev.ID > 0 {
			buf = append(strconv.AppendUint(append(buf, "id: "...), ev.ID, 10), '\n')
		}
		buf = append(append(append(buf, "event: "...), ev.Kind...), '\n')
		buf = append(append(append(buf, "data: "...), ev.Data...), "\n\n"...)
		if !send(buf, !ev.More) || ev.Kind == "overflow" {
			if ev.Kind == "overflow" {
				_ = rc.Flush()
			}
			return
		}
	}
}
