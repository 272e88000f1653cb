package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotkv/iotkv/certs"
)

// ErrSkip marks a baseline that cannot run on this machine.
var ErrSkip = errors.New("skipped")

var clientSeq atomic.Int64

// MQTTClient connects name to addr over mTLS with its password, MQTT 3.1.1.
func (r *Runner) MQTTClient(addr, name string, clean bool) (paho.Client, error) {
	return r.MQTTClientFrom(addr, name, clean, "")
}

// MQTTClientFrom is MQTTClient from the local address src (a device of a
// fleet has its own address; loopback has all of 127.0.0.0/8).
func (r *Runner) MQTTClientFrom(addr, name string, clean bool, src string) (paho.Client, error) {
	tc, err := r.clientTLS(name)
	if err != nil {
		return nil, err
	}
	o := paho.NewClientOptions()
	o.AddBroker("tls://" + addr)
	o.SetProtocolVersion(4)
	o.SetClientID(fmt.Sprintf("%s-b%d", name, clientSeq.Add(1)))
	o.SetUsername(name)
	o.SetPassword(Password(name))
	o.SetTLSConfig(tc)
	o.SetCleanSession(clean)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetOrderMatters(false)
	o.SetKeepAlive(60 * time.Second)
	o.SetConnectTimeout(60 * time.Second)
	o.SetWriteTimeout(30 * time.Second)
	if src != "" {
		o.SetDialer(&net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}})
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(90 * time.Second) {
		return nil, fmt.Errorf("connect %s to %s: timed out", name, addr)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect %s to %s: %w", name, addr, err)
	}
	return c, nil
}

var tlsCache sync.Map // name -> *tls.Config

func (r *Runner) clientTLS(name string) (*tls.Config, error) {
	if c, ok := tlsCache.Load(name); ok {
		return c.(*tls.Config).Clone(), nil
	}
	c, err := certs.ClientConfig(r.PKI.Paths(name))
	if err != nil {
		return nil, err
	}
	tlsCache.Store(name, c)
	return c.Clone(), nil
}

// ConnectAll connects every device, 8 at a time; a refused login is retried
// a few times (on a loaded machine a bcrypt check can outlast the edge's
// wait for an auth worker).
func (r *Runner) ConnectAll(ctx context.Context, addr string, devices []string) ([]paho.Client, error) {
	out := make([]paho.Client, len(devices))
	errs := make([]error, len(devices))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, d := range devices {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			for attempt := 0; attempt < 5 && ctx.Err() == nil; attempt++ {
				if out[i], errs[i] = r.MQTTClient(addr, d, true); errs[i] == nil {
					return
				}
				time.Sleep(time.Duration(500+rand.IntN(1000)) * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		DisconnectAll(out)
		return nil, err
	}
	return out, nil
}

// DisconnectAll disconnects the clients that are not nil.
func DisconnectAll(cs []paho.Client) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Add(1)
			go func() { defer wg.Done(); c.Disconnect(50) }()
		}
	}
	wg.Wait()
}

// Load is one publishing run: every client keeps InFlight QoS 1 messages
// outstanding (or paces to Rate) for Warmup+Duration; only acks in the
// Duration window count.
type Load struct {
	Clients  []paho.Client
	Devices  []string
	Topic    func(dev string, seq uint64) string
	Payload  func(dev string, seq uint64) []byte
	InFlight int
	Rate     float64 // total messages/s; 0: as fast as acks allow
	// Stagger spreads the clients' first publishes over one period of
	// Rate (otherwise every client starts at once and the load comes in
	// bursts, one per period).
	Stagger  bool
	Warmup   time.Duration
	Duration time.Duration
	// Seqs, when set (one per client), holds each client's last seq: a
	// run continues above it and leaves its last seq there, so that a
	// later round never replays a seq the server has already applied
	// (the edge acknowledges such a batch and writes nothing).
	Seqs []uint64
}

// LoadResult is what a Load measured.
type LoadResult struct {
	Acked    int64   `json:"acked"`
	Seconds  float64 `json:"seconds"`
	MsgsPerS float64 `json:"msgs_per_s"`
	Errors   int64   `json:"errors"`
	Sent     int64   `json:"sent"` // every seq published, warmup included
	// AckedAll counts every ack of the run, warm-up and the tail after
	// the window included: what the server must have applied.
	AckedAll int64 `json:"acked_all"`
	// Applied is what the server's own counters say it applied during
	// the run (-1: not checked); see compareMQTT.
	Applied int64   `json:"applied"`
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
	// ServerCPUus is the server's CPU time per message sent (warm-up
	// included): a figure that other tenants' noise moves much less.
	ServerCPUus float64 `json:"server_cpu_us_per_msg,omitempty"`
	// Rounds are the msgs/s of every round; the result is the median one.
	Rounds []float64 `json:"rounds_msgs_per_s,omitempty"`
	// RoundsP99 are the PUBACK p99 (ms) of every round, in round order.
	RoundsP99 []float64 `json:"rounds_p99_ms,omitempty"`
	// Checks are every round's applied-count check, in round order.
	Checks []AppliedCheck `json:"applied_checks,omitempty"`
}

// AppliedCheck is one round's comparison of the acks the load generator
// counted with what the server's own counters say it applied.
type AppliedCheck struct {
	Acked   int64 `json:"acked"`
	Applied int64 `json:"applied"`
	Errors  int64 `json:"errors"`
}

// Run runs the load and returns its result.
func (l Load) Run(ctx context.Context) LoadResult {
	var acked, ackedAll, errs, sent atomic.Int64
	var counting atomic.Bool
	lat := NewHist()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var perWorker time.Duration
	if l.Rate > 0 {
		perWorker = time.Duration(float64(time.Second) * float64(len(l.Clients)*l.InFlight) / l.Rate)
	}
	seqs := make([]uint64, len(l.Clients))
	if l.Seqs != nil {
		copy(seqs, l.Seqs)
	}
	for i, c := range l.Clients {
		dev := l.Devices[i]
		var mu sync.Mutex // publishes of one client leave in seq order
		seq := &seqs[i]
		for w := 0; w < l.InFlight; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				slot, slots := w, max(l.InFlight, 1)
				if l.Stagger {
					slot, slots = i*slots+w, len(l.Clients)*slots
				}
				next := time.Now().Add(time.Duration(slot) * perWorker / time.Duration(slots))
				for ctx.Err() == nil {
					if perWorker > 0 {
						if d := time.Until(next); d > 0 {
							select {
							case <-ctx.Done():
								return
							case <-time.After(d):
							}
						}
						next = next.Add(perWorker)
					}
					mu.Lock()
					*seq++
					s := *seq
					start := time.Now()
					tok := c.Publish(l.Topic(dev, s), 1, false, l.Payload(dev, s))
					mu.Unlock()
					sent.Add(1)
					ok := tok.WaitTimeout(30 * time.Second)
					if !ok || tok.Error() != nil {
						errs.Add(1)
						if !c.IsConnected() {
							return
						}
						continue
					}
					ackedAll.Add(1)
					if counting.Load() {
						acked.Add(1)
						lat.Add(time.Since(start))
					}
				}
			}()
		}
	}
	select {
	case <-ctx.Done():
	case <-time.After(l.Warmup):
	}
	counting.Store(true)
	t0 := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(l.Duration):
	}
	counting.Store(false)
	secs := time.Since(t0).Seconds()
	n := acked.Load()
	cancel()
	wg.Wait()
	if l.Seqs != nil {
		copy(l.Seqs, seqs)
	}
	return LoadResult{Acked: n, Seconds: secs, MsgsPerS: float64(n) / secs, Errors: errs.Load(), Sent: sent.Load(),
		AckedAll: ackedAll.Load(), Applied: -1, P50ms: lat.Quantile(0.5), P99ms: lat.Quantile(0.99)}
}

// Hist collects durations.
type Hist struct {
	mu sync.Mutex
	v  []float64 // milliseconds
}

// NewHist returns an empty Hist.
func NewHist() *Hist { return &Hist{} }

// Add records d.
func (h *Hist) Add(d time.Duration) {
	h.mu.Lock()
	h.v = append(h.v, float64(d)/float64(time.Millisecond))
	h.mu.Unlock()
}

// Len is the number of samples.
func (h *Hist) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.v)
}

// Quantile returns the q-quantile in milliseconds (0 when empty).
func (h *Hist) Quantile(q float64) float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.v) == 0 {
		return 0
	}
	sort.Float64s(h.v)
	i := int(math.Ceil(q*float64(len(h.v)))) - 1
	return h.v[min(max(i, 0), len(h.v)-1)]
}

// Sorted returns a sorted copy of the samples (ms).
func (h *Hist) Sorted() []float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	sort.Float64s(h.v)
	return append([]float64(nil), h.v...)
}
