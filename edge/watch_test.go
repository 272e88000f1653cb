package edge_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// sseEvent is one Server-Sent Event as a client parses it.
type sseEvent struct {
	ID    string
	Event string
	Data  string
}

// watchData is the data of a put or del event.
type watchData struct {
	Device string          `json:"device"`
	Key    string          `json:"key"`
	Value  json.RawMessage `json:"value"`
	TS     *int64          `json:"ts"`
	Seq    uint64          `json:"seq"`
}

// sseStream reads a text/event-stream response in its own goroutine,
// which ends with the response (closed by the test's cleanup).
type sseStream struct {
	events   chan sseEvent
	comments chan string
	done     chan struct{}
	cancel   context.CancelFunc
}

// openWatch GETs path as user with Last-Event-ID lastID ("" for none) and
// returns the status code and, on 200, the stream.
func openWatch(t *testing.T, client *http.Client, addr, user, password, path, lastID string) (int, *sseStream) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, password)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	c := *client
	c.Timeout = 0 // a stream
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return resp.StatusCode, nil
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("GET %s: Content-Type %q, want text/event-stream", path, ct)
	}
	s := &sseStream{events: make(chan sseEvent, 10000), comments: make(chan string, 100), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(s.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.Event != "" || ev.Data != "" {
					s.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				select {
				case s.comments <- line:
				default:
				}
			case strings.HasPrefix(line, "id: "):
				ev.ID = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.Event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.Data = line[6:]
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	return resp.StatusCode, s
}

// next waits for the next event.
func (s *sseStream) next(t *testing.T) sseEvent {
	t.Helper()
	select {
	case ev := <-s.events:
		return ev
	case <-s.done:
		select {
		case ev := <-s.events:
			return ev
		default:
		}
		t.Fatal("the stream ended while an event was expected")
	case <-time.After(15 * time.Second):
		t.Fatal("no event within 15s")
	}
	return sseEvent{}
}

// ended waits for the server to end the stream.
func (s *sseStream) ended(t *testing.T) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		t.Fatal("the stream did not end within 15s")
	}
}

func (ev sseEvent) data(t *testing.T) watchData {
	t.Helper()
	var d watchData
	if err := json.Unmarshal([]byte(ev.Data), &d); err != nil {
		t.Fatalf("event data %q: %v", ev.Data, err)
	}
	return d
}

// A watcher of one device gets every durable put and del of its keys that
// match the prefix, in order, with the change seq as id and in the data;
// another device's writes and keys outside the prefix do not show up.
func TestWatchStreamsDurableChangesOfADevice(t *testing.T) {
	r := shared
	_, s := openWatch(t, r.client, r.edge.HTTPAddr(), "admin", rigAdminPassword, "/v1/watch/watch-a?prefix=room/", "")
	put := func(device, key, value string) {
		t.Helper()
		if resp, body := r.do(t, "admin", rigAdminPassword, http.MethodPut, "/v1/kv/"+device+"/"+key, value); resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT %s/%s: %d %s", device, key, resp.StatusCode, body)
		}
	}
	put("watch-a", "room/1", `21.5`)
	put("watch-b", "room/1", `1`) // another device
	put("watch-a", "hall", `2`)   // outside the prefix
	put("watch-a", "room/2", `{"on":true}`)
	if resp, body := r.do(t, "admin", rigAdminPassword, http.MethodDelete, "/v1/kv/watch-a/room/1", ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", resp.StatusCode, body)
	}
	want := []struct{ event, key, value string }{{"put", "room/1", "21.5"}, {"put", "room/2", `{"on":true}`}, {"del", "room/1", "null"}}
	var last uint64
	for i, w := range want {
		ev := s.next(t)
		d := ev.data(t)
		if ev.Event != w.event || d.Device != "watch-a" || d.Key != w.key || string(d.Value) != w.value {
			t.Fatalf("event %d = %+v, want %s of %s = %s", i, ev, w.event, w.key, w.value)
		}
		if ev.ID != strconv.FormatUint(d.Seq, 10) || d.Seq <= last {
			t.Fatalf("event %d: id %q, data seq %d after %d: want the same increasing change seq", i, ev.ID, d.Seq, last)
		}
		last = d.Seq
	}
	_, rec := r.get(t, "admin", "watch-a", "room/2")
	if rec.ChangeSeq == 0 || rec.ChangeSeq > last {
		t.Fatalf("record change_seq %d, last event %d", rec.ChangeSeq, last)
	}
}

// A client that reconnects with Last-Event-ID gets exactly the changes
// after it; one whose id is not in the log any more (or from the future)
// gets a reset event first, then the live stream.
func TestWatchResumesWithLastEventID(t *testing.T) {
	r := shared
	for i := range 5 {
		if resp, body := r.do(t, "admin", rigAdminPassword, http.MethodPut, fmt.Sprintf("/v1/kv/watch-r/k%d", i), strconv.Itoa(i)); resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT: %d %s", resp.StatusCode, body)
		}
	}
	// The history gives the change seqs of the five writes.
	var seqs []uint64
	for i := range 5 {
		code, rec := r.get(t, "admin", "watch-r", fmt.Sprintf("k%d", i))
		if code != http.StatusOK {
			t.Fatal(code)
		}
		seqs = append(seqs, rec.ChangeSeq)
	}
	_, s := openWatch(t, r.client, r.edge.HTTPAddr(), "admin", rigAdminPassword, "/v1/watch/watch-r", strconv.FormatUint(seqs[1], 10))
	for i := 2; i < 5; i++ {
		ev := s.next(t)
		if d := ev.data(t); ev.Event != "put" || d.Key != fmt.Sprintf("k%d", i) || d.Seq != seqs[i] {
			t.Fatalf("resumed event = %+v, want k%d at %d", ev, i, seqs[i])
		}
	}
	// Live after the replay, with no gap.
	if resp, _ := r.do(t, "admin", rigAdminPassword, http.MethodPut, "/v1/kv/watch-r/live", `true`); resp.StatusCode != http.StatusOK {
		t.Fatal(resp.StatusCode)
	}
	if ev := s.next(t); ev.data(t).Key != "live" {
		t.Fatalf("live event after the replay = %+v", ev)
	}

	_, s2 := openWatch(t, r.client, r.edge.HTTPAddr(), "admin", rigAdminPassword, "/v1/watch/watch-r", "999999999")
	if ev := s2.next(t); ev.Event != "reset" || ev.ID == "" {
		t.Fatalf("resume from an id beyond the log = %+v, want a reset with an id", ev)
	}
	if code, _ := openWatch(t, r.client, r.edge.HTTPAddr(), "admin", rigAdminPassword, "/v1/watch/watch-r", "abc"); code != http.StatusBadRequest {
		t.Fatalf("Last-Event-ID abc: %d, want 400", code)
	}
}

// Roles: a device watches only itself; the fleet-wide watch is for reader,
// writer and admin.
func TestWatchRoles(t *testing.T) {
	r := shared
	tests := []struct {
		name, user, path string
		want             int
	}{
		{"a device watches itself", "logs", "/v1/watch/logs", 200},
		{"a device may not watch another device", "logs", "/v1/watch/e2e", 403},
		{"a device may not watch the fleet", "logs", "/v1/watch", 403},
		{"an admin watches the fleet", "admin", "/v1/watch?prefix=x", 200},
		{"a bad device name", "admin", "/v1/watch/bad%20name", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, s := openWatch(t, r.client, r.edge.HTTPAddr(), tc.user, r.password(tc.user), tc.path, "")
			if code != tc.want {
				t.Fatalf("GET %s as %s: %d, want %d", tc.path, tc.user, code, tc.want)
			}
			if s != nil {
				s.cancel()
			}
		})
	}
}

// A watcher that falls behind by more than its buffer gets a final
// overflow event and is disconnected, and the writer's batch is
// acknowledged all the same; the limits on watchers answer 429 and are
// counted in /metrics.
func TestWatchOverflowAndLimits(t *testing.T) {
	p := testenv.NewPKI(t)
	p.Identity(t, "ov", iotkv.RoleDevice)
	p.Identity(t, "admin", iotkv.RoleAdmin)
	e := testenv.StartEdge(t, p, "edge-ov", func(o *edge.Options) {
		o.Watch = edge.WatchOptions{Buffer: 4, MaxPerAccount: 2, MaxTotal: 3}
	})
	client := p.HTTPClient(t, "admin")
	_, s := openWatch(t, client, e.HTTPAddr(), "ov", testenv.Password("ov"), "/v1/watch/ov", "")
	_, s2 := openWatch(t, client, e.HTTPAddr(), "ov", testenv.Password("ov"), "/v1/watch/ov?prefix=never", "")
	if code, _ := openWatch(t, client, e.HTTPAddr(), "ov", testenv.Password("ov"), "/v1/watch/ov", ""); code != http.StatusTooManyRequests {
		t.Fatalf("a third watcher of one account: %d, want 429", code)
	}
	_, s3 := openWatch(t, client, e.HTTPAddr(), "admin", testenv.Password("admin"), "/v1/watch", "")
	if code, _ := openWatch(t, client, e.HTTPAddr(), "admin", testenv.Password("admin"), "/v1/watch", ""); code != http.StatusTooManyRequests {
		t.Fatalf("a fourth watcher on the edge: %d, want 429", code)
	}

	// One batch of 1000 puts is one group: far more than 4 events at once.
	c := p.Connect(t, e.MQTTAddr(), "ov")
	b := iotkv.Batch{Seq: 1}
	for i := range 1000 {
		b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("k/%d", i), Value: json.RawMessage(strconv.Itoa(i))})
	}
	payload, _ := json.Marshal(b)
	if tok := c.Publish(iotkv.BatchTopic("ov"), 1, false, payload); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	var got []sseEvent
	for {
		ev := s.next(t)
		got = append(got, ev)
		if ev.Event == "overflow" {
			break
		}
		if ev.Event != "put" {
			t.Fatalf("event %+v before the overflow", ev)
		}
	}
	s.ended(t)
	if n := len(got) - 1; n >= 1000 {
		t.Fatalf("%d events before the overflow: the buffer of 4 was not enforced", n)
	}
	s3.next(t) // the fleet watcher fell behind too
	_ = s2
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: p.ClientTLS(t, "admin")}}
	req, _ := http.NewRequest(http.MethodGet, "https://"+e.HTTPAddr()+"/metrics", nil)
	req.SetBasicAuth("admin", testenv.Password("admin"))
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		sb.WriteString(sc.Text() + "\n")
	}
	m := sb.String()
	for _, want := range []string{`iotkv_watch_refused_total{limit="account"} 1`, `iotkv_watch_refused_total{limit="total"} 1`, "iotkv_watch_overflows_total 2"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(m, "iotkv_watchers ") {
		t.Error("/metrics lacks iotkv_watchers")
	}
}

// An idle stream gets a heartbeat comment every heartbeat; a client that
// stops reading is cut after two heartbeats of stalled writes, without
// waiting for its send buffer to overflow.
func TestWatchHeartbeatsAndCutsAStalledReader(t *testing.T) {
	p := testenv.NewPKI(t)
	p.Identity(t, "hb", iotkv.RoleDevice)
	p.Identity(t, "admin", iotkv.RoleAdmin)
	reg := prometheus.NewRegistry()
	e := testenv.StartEdge(t, p, "edge-hb", func(o *edge.Options) {
		o.Registry = reg
		o.Watch = edge.WatchOptions{Heartbeat: 200 * time.Millisecond, Buffer: 1 << 20}
	})
	client := p.HTTPClient(t, "admin")
	_, s := openWatch(t, client, e.HTTPAddr(), "hb", testenv.Password("hb"), "/v1/watch/hb", "")
	deadline := time.After(10 * time.Second)
	for heartbeats := 0; heartbeats < 2; {
		select {
		case c := <-s.comments:
			if c == ": heartbeat" {
				heartbeats++
			}
		case <-deadline:
			t.Fatal("no two heartbeats within 10s on an idle stream with a 200ms heartbeat")
		}
	}

	// A reader that sends its request and never reads: the edge writes
	// into the socket until the kernel's buffers are full, then its write
	// deadline (two heartbeats) ends the stream.
	conn, err := tls.Dial("tcp", e.HTTPAddr(), p.ClientTLS(t, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	auth := base64.StdEncoding.EncodeToString([]byte("hb:" + testenv.Password("hb")))
	fmt.Fprintf(conn, "GET /v1/watch/hb HTTP/1.1\r\nHost: edge\r\nAuthorization: Basic %s\r\n\r\n", auth)
	waitGauge := func(want float64) {
		t.Helper()
		for end := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if metricValue(t, reg, "iotkv_watchers") == want {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("iotkv_watchers never reached %v", want)
			}
		}
	}
	waitGauge(2)
	start := time.Now()
	c := p.Connect(t, e.MQTTAddr(), "hb")
	value, _ := json.Marshal(strings.Repeat("x", 60<<10))
	// ~0.9 MB of events per batch, until the stalled stream is cut (the
	// reading one stays): 80 batches are far more than loopback buffers hold.
	for seq := uint64(1); metricValue(t, reg, "iotkv_watchers") != 1; seq++ {
		if seq > 80 {
			t.Fatalf("%v watchers after 70 MB of events: the stalled reader was never cut", metricValue(t, reg, "iotkv_watchers"))
		}
		b := iotkv.Batch{Seq: seq}
		for i := range 15 {
			b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("k/%d", i), Value: value})
		}
		payload, _ := json.Marshal(b)
		if tok := c.Publish(iotkv.BatchTopic("hb"), 1, false, payload); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", seq, tok.Error())
		}
	}
	t.Logf("the stalled reader was cut %v after the writes began", time.Since(start))
	if n := metricValue(t, reg, "iotkv_watch_overflows_total"); n != 0 {
		t.Fatalf("%v overflows: the stalled reader was cut by its buffer, not by the write deadline", n)
	}
}

// metricValue reads the one unlabelled gauge or counter called name.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			return m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
