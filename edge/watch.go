package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/rest"
)

// WatchOptions bound the live watchers (Server-Sent Events) of an edge.
type WatchOptions struct {
	MaxTotal      int // watchers at once on the edge; default 1000
	MaxPerAccount int // watchers at once per account; default 16
	// Buffer is the events a watcher may have queued and not yet sent; a
	// watcher that falls further behind gets a final overflow event and is
	// disconnected (it resumes with Last-Event-ID). Default 4096.
	Buffer int
	// Heartbeat is how often an idle stream gets a comment line; a client
	// that reads nothing for two heartbeats is disconnected. Default 15 s.
	Heartbeat time.Duration
}

func (o *WatchOptions) setDefaults() {
	if o.MaxTotal <= 0 {
		o.MaxTotal = 1000
	}
	if o.MaxPerAccount <= 0 {
		o.MaxPerAccount = 16
	}
	if o.Buffer <= 0 {
		o.Buffer = 4096
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = rest.HeartbeatInterval
	}
}

// hub hands each durable group of changes to the live watchers. The
// committer's sync goroutine calls publish after the fsync; publish never
// blocks: a watcher whose buffer is full is dropped (overflow). Watchers
// are goroutines of the REST server (one per stream); each reads its own
// channel. Lock order: hub.mu, then nothing.
type hub struct {
	opts  WatchOptions
	store *Store
	first func() uint64 // oldest change still in the log
	m     *watchMetrics

	mu        sync.Mutex
	last      uint64 // newest durable change seq published
	closed    bool
	byDevice  map[string]map[*watcher]struct{}
	fleet     map[*watcher]struct{}
	perAcct   map[string]int
	nWatchers int
}

type watcher struct {
	account, device, prefix string
	ch                      chan Change // closed by the hub on overflow or close
	overflow                bool        // set under hub.mu before ch is closed
}

func (w *watcher) matches(c *Change) bool {
	return (w.device == "" || w.device == c.Device) && strings.HasPrefix(c.Key, w.prefix)
}

func newHub(o WatchOptions, store *Store, last uint64, first func() uint64, reg prometheus.Registerer) (*hub, error) {
	o.setDefaults()
	m, err := newWatchMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &hub{opts: o, store: store, first: first, m: m, last: last,
		byDevice: map[string]map[*watcher]struct{}{}, fleet: map[*watcher]struct{}{}, perAcct: map[string]int{}}, nil
}

// publish runs in the committer's sync goroutine after a durable group.
func (h *hub) publish(changes []Change) {
	if len(changes) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last = changes[len(changes)-1].Seq
	if h.nWatchers == 0 {
		return
	}
	for i := range changes {
		c := &changes[i]
		h.offer(h.fleet, c)
		if ws := h.byDevice[c.Device]; ws != nil {
			h.offer(ws, c)
		}
	}
}

func (h *hub) offer(ws map[*watcher]struct{}, c *Change) {
	for w := range ws {
		if !w.matches(c) {
			continue
		}
		select {
		case w.ch <- *c:
		default:
			w.overflow = true
			h.m.overflows.Inc()
			h.removeLocked(w)
		}
	}
}

func (h *hub) removeLocked(w *watcher) {
	set := h.fleet
	if w.device != "" {
		set = h.byDevice[w.device]
	}
	if _, ok := set[w]; !ok {
		return
	}
	delete(set, w)
	if w.device != "" && len(set) == 0 {
		delete(h.byDevice, w.device)
	}
	close(w.ch)
}

// register adds w once the stream has caught up to after: it succeeds
// only when no change after `after` is durable yet, so the live channel
// continues the log with no gap and no repeat. It returns the current
// newest durable seq.
func (h *hub) register(w *watcher, after uint64) (bool, uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false, h.last, ErrClosed
	}
	if after < h.last {
		return false, h.last, nil
	}
	w.ch = make(chan Change, h.opts.Buffer)
	if w.device == "" {
		h.fleet[w] = struct{}{}
	} else {
		if h.byDevice[w.device] == nil {
			h.byDevice[w.device] = map[*watcher]struct{}{}
		}
		h.byDevice[w.device][w] = struct{}{}
	}
	return true, h.last, nil
}

// admit counts a new stream against the limits.
func (h *hub) admit(account string) (uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closed:
		return 0, iotkv.Errorf(iotkv.CodeUnavailable, "the edge is shutting down")
	case h.nWatchers >= h.opts.MaxTotal:
		h.m.refused.WithLabelValues("total").Inc()
		return 0, iotkv.Errorf(iotkv.CodeRateLimited, "too many watchers on this edge (%d)", h.opts.MaxTotal)
	case h.perAcct[account] >= h.opts.MaxPerAccount:
		h.m.refused.WithLabelValues("account").Inc()
		return 0, iotkv.Errorf(iotkv.CodeRateLimited, "account %s has %d watchers already", account, h.opts.MaxPerAccount)
	}
	h.nWatchers++
	h.perAcct[account]++
	h.m.watchers.Set(float64(h.nWatchers))
	return h.last, nil
}

func (h *hub) release(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.ch != nil {
		h.removeLocked(w)
	}
	h.nWatchers--
	if h.perAcct[w.account]--; h.perAcct[w.account] <= 0 {
		delete(h.perAcct, w.account)
	}
	h.m.watchers.Set(float64(h.nWatchers))
}

// close ends every stream (they see the channel closed without overflow)
// and refuses new ones. Safe to call twice.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for w := range h.fleet {
		h.removeLocked(w)
	}
	for _, ws := range h.byDevice {
		for w := range ws {
			h.removeLocked(w)
		}
	}
}

// Watch opens a stream of the durable changes of req.Device (every device
// when empty) whose keys start with req.Prefix. With req.Resume it starts
// after req.After from the change log, or with a reset event when the log
// no longer holds req.After+1.
func (h *hub) Watch(_ context.Context, req rest.WatchRequest) (rest.WatchStream, error) {
	last, err := h.admit(req.Account)
	if err != nil {
		return nil, err
	}
	s := &stream{h: h, w: &watcher{account: req.Account, device: req.Device, prefix: req.Prefix}, next: last + 1}
	if req.Resume {
		if req.After > last || req.After+1 < h.first() {
			s.reset = true
		} else {
			s.next = req.After + 1
		}
	}
	return s, nil
}

// stream is one watcher's side: it reads the change log until it has
// caught up, then registers with the hub and reads its live channel. It
// belongs to one REST handler goroutine.
type stream struct {
	h       *hub
	w       *watcher
	next    uint64 // next change seq to send
	reset   bool   // send a reset event first
	live    bool
	pending []Change // read from the log, not yet returned
	closed  bool
}

// Next returns the next event, waiting until one is ready or ctx ends.
func (s *stream) Next(ctx context.Context) (rest.WatchEvent, error) {
	if s.closed {
		return rest.WatchEvent{}, ErrClosed
	}
	if s.reset {
		s.reset = false
		return rest.WatchEvent{Kind: "reset", ID: s.next - 1, Data: fmt.Appendf(nil, `{"seq":%d}`, s.next-1)}, nil
	}
	for !s.live && len(s.pending) == 0 {
		ok, last, err := s.h.register(s.w, s.next-1)
		if err != nil {
			return rest.WatchEvent{}, err
		}
		if ok {
			s.live = true
			break
		}
		if err := s.readLog(last); err != nil {
			return rest.WatchEvent{}, err
		}
	}
	if len(s.pending) > 0 {
		c := s.pending[0]
		s.pending = s.pending[1:]
		return s.event(&c, len(s.pending) > 0), nil
	}
	select {
	case c, ok := <-s.w.ch:
		if !ok {
			s.closed = true
			s.h.mu.Lock()
			overflow := s.w.overflow
			s.h.mu.Unlock()
			if overflow {
				return rest.WatchEvent{Kind: "overflow", Data: fmt.Appendf(nil, `{"seq":%d}`, s.next-1)}, nil
			}
			return rest.WatchEvent{}, ErrClosed
		}
		return s.event(&c, len(s.w.ch) > 0), nil
	case <-ctx.Done():
		return rest.WatchEvent{}, ctx.Err()
	}
}

func (s *stream) event(c *Change, more bool) rest.WatchEvent {
	s.next = c.Seq + 1
	s.h.m.events.Inc()
	data, _ := json.Marshal(watchData{Device: c.Device, Key: c.Key, Value: c.Value, TS: c.TS, Seq: c.Seq})
	return rest.WatchEvent{Kind: c.Op, ID: c.Seq, Data: data, More: more}
}

type watchData struct {
	Device string          `json:"device"`
	Key    string          `json:"key"`
	Value  json.RawMessage `json:"value"`
	TS     *int64          `json:"ts"`
	Seq    uint64          `json:"seq"`
}

// readLog reads the next page of matching changes from the log, up to
// last (durable). A change the log no longer holds (trimmed under a slow
// reader) turns into a reset.
func (s *stream) readLog(last uint64) error {
	const page = 256
	it, err := s.h.store.db.NewIter(&pebble.IterOptions{LowerBound: changeKey(s.next), UpperBound: changeKey(last + 1)})
	if err != nil {
		return fmt.Errorf("watch: read change log: %w", err)
	}
	defer it.Close()
	ok := it.First()
	for n := 0; ok && n < 16*page && len(s.pending) < page; ok, n = it.Next(), n+1 {
		seq := decodeChangeKey(it.Key())
		if seq != s.next {
			s.reset, s.next = true, last+1
			s.pending = s.pending[:0]
			return nil
		}
		var c Change
		if err := json.Unmarshal(it.Value(), &c); err != nil {
			return fmt.Errorf("watch: decode change %d: %w", seq, err)
		}
		s.next = seq + 1
		if s.w.matches(&c) {
			s.pending = append(s.pending, c)
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("watch: read change log: %w", err)
	}
	if !ok && s.next <= last {
		// The log ended before last: trimmed under us.
		s.reset, s.next = true, last+1
		s.pending = s.pending[:0]
	}
	return nil
}

// Close ends the stream and frees its place. Safe to call twice.
func (s *stream) Close() error {
	if s.w == nil {
		return nil
	}
	s.h.release(s.w)
	s.w = nil
	s.closed = true
	return nil
}

var _ rest.Watcher = (*hub)(nil)

type watchMetrics struct {
	watchers  prometheus.Gauge
	events    prometheus.Counter
	overflows prometheus.Counter
	refused   *prometheus.CounterVec
}

func newWatchMetrics(reg prometheus.Registerer) (*watchMetrics, error) {
	m := &watchMetrics{
		watchers:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "iotkv_watchers", Help: "Open watch streams (Server-Sent Events)."}),
		events:    prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_watch_events_total", Help: "Change events sent to watchers."}),
		overflows: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_watch_overflows_total", Help: "Watchers disconnected because they fell too far behind."}),
		refused:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotkv_watch_refused_total", Help: "Watch streams refused by the limits, by limit (account, total)."}, []string{"limit"}),
	}
	for _, c := range []prometheus.Collector{m.watchers, m.events, m.overflows, m.refused} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register watch metrics: %w", err)
		}
	}
	return m, nil
}
