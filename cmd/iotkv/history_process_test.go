package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

// sse is one Server-Sent Event.
type sse struct{ id, event, data string }

// watchSSE opens GET path as user with Last-Event-ID lastID ("" for none)
// and sends the events on the returned channel, closed when the stream
// ends.
func watchSSE(t *testing.T, p *testenv.PKI, addr, user, path, lastID string) <-chan sse {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+path, nil)
	req.SetBasicAuth(user, testenv.Password(user))
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	c := p.HTTPClient(t, user)
	c.Timeout = 0
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	out := make(chan sse, 100000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var ev sse
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.event != "" {
					out <- ev
				}
				ev = sse{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return out
}

type historyItem struct {
	Op    string          `json:"op"`
	Value json.RawMessage `json:"value"`
	Seq   uint64          `json:"seq"`
	At    int64           `json:"at"`
}

func readHistory(t *testing.T, p *testenv.PKI, addr, device, key string) []historyItem {
	t.Helper()
	var all []historyItem
	var after uint64
	for {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://%s/v1/history/%s/%s?limit=1000&after=%d", addr, device, key, after), nil)
		req.SetBasicAuth(device, testenv.Password(device))
		resp, err := p.HTTPClient(t, device).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var page struct {
			Items []historyItem `json:"items"`
			Next  uint64        `json:"next"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("history %s/%s: %s %v", device, key, resp.Status, err)
		}
		all = append(all, page.Items...)
		if page.Next == 0 {
			return all
		}
		after = page.Next
	}
}

// The history survives kill -9 exactly: after the restart a key's history
// is every value it was given up to some batch at or after the last one
// acknowledged, in order, with no gap and nothing else, ending at the
// value the key holds; every change a watcher was sent before the kill is
// in it (a watcher only sees durable changes); and a watcher that
// reconnects to the restarted edge with Last-Event-ID gets exactly the
// changes after its id, then the live ones. `iotkv device history` prints
// the same history.
func TestHistoryIsExactAfterKill9AndWatchResumesAcrossTheRestart(t *testing.T) {
	p := testenv.NewPKI(t)
	p.Identity(t, "dev", iotkv.RoleDevice)
	p.Identity(t, "edge1", iotkv.RoleEdge)
	data := filepath.Join(t.TempDir(), "data")
	e := startEdgeProc(t, p, data)
	events := watchSSE(t, p, e.HTTPS, "dev", "/v1/watch/dev", "")

	c := p.Connect(t, e.MQTT, "dev")
	acked := make(chan uint64, 1000)
	go func() {
		defer close(acked)
		for seq := uint64(1); ; seq++ {
			payload := fmt.Sprintf(`{"seq":%d,"ops":[{"op":"put","key":"temp","value":%d},{"op":"put","key":"other","value":%d}]}`, seq, seq, seq)
			tok := c.Publish(iotkv.BatchTopic("dev"), 1, false, payload)
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				return // the edge is gone
			}
			acked <- seq
		}
	}()
	var last uint64
	for seq := range acked {
		last = seq
		if seq == 40 {
			if err := e.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.wait(t, 10*time.Second)
	var seen []sse
	for ev := range events { // ends with the killed edge's connection
		seen = append(seen, ev)
	}
	if len(seen) == 0 {
		t.Fatal("the watcher saw nothing before the kill")
	}

	e = startEdgeProc(t, p, data)
	hist := readHistory(t, p, e.HTTPS, "dev", "temp")
	if uint64(len(hist)) < last {
		t.Fatalf("history of temp has %d ops after kill -9; %d batches were acknowledged", len(hist), last)
	}
	bySeq := map[uint64]string{}
	for i, it := range hist {
		if it.Op != "put" || string(it.Value) != strconv.Itoa(i+1) || (i > 0 && it.Seq <= hist[i-1].Seq) {
			t.Fatalf("history item %d = %+v (previous %+v): want put %d, increasing seq", i, it, hist[max(i-1, 0)], i+1)
		}
		bySeq[it.Seq] = string(it.Value)
	}
	code, rec := getRecord(t, p.HTTPClient(t, "dev"), e.HTTPS, "dev", "temp")
	if code != http.StatusOK || string(rec.Value) != strconv.Itoa(len(hist)) || rec.ChangeSeq != hist[len(hist)-1].Seq {
		t.Fatalf("temp = %d %+v; its history ends at %+v", code, rec, hist[len(hist)-1])
	}
	var lastID string
	for _, ev := range seen {
		var d struct {
			Key   string          `json:"key"`
			Value json.RawMessage `json:"value"`
			Seq   uint64          `json:"seq"`
		}
		if err := json.Unmarshal([]byte(ev.data), &d); err != nil || ev.event != "put" {
			t.Fatalf("event before the kill: %+v", ev)
		}
		if d.Key == "temp" && bySeq[d.Seq] != string(d.Value) {
			t.Fatalf("the watcher was sent temp=%s at %d, which is not in the history after the kill", d.Value, d.Seq)
		}
		lastID = ev.id
	}

	// The CLI prints the same history.
	pw := filepath.Join(t.TempDir(), "dev.pw")
	if err := os.WriteFile(pw, []byte(testenv.Password("dev")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(iotkvBin, "device", "history", "temp", "--since", "1h", "--name", "dev", "--password-file", pw,
		"--certs", p.Dir, "--rest", "https://"+e.HTTPS).CombinedOutput()
	if err != nil {
		t.Fatalf("iotkv device history: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(hist) || !strings.HasSuffix(lines[0], " put 1") || !strings.HasSuffix(lines[len(lines)-1], fmt.Sprintf(" put %d", len(hist))) {
		t.Fatalf("iotkv device history printed %d lines (%q ... %q), want %d", len(lines), lines[0], lines[len(lines)-1], len(hist))
	}

	// Resume after the last event seen: the rest of the history, then live.
	resumed := watchSSE(t, p, e.HTTPS, "dev", "/v1/watch/dev?prefix=temp", lastID)
	lastSeen, _ := strconv.ParseUint(lastID, 10, 64)
	for _, it := range hist {
		if it.Seq <= lastSeen {
			continue
		}
		select {
		case ev := <-resumed:
			if ev.id != strconv.FormatUint(it.Seq, 10) || !strings.Contains(ev.data, `"value":`+string(it.Value)+",") {
				t.Fatalf("resumed event %+v, want change %d = %s", ev, it.Seq, it.Value)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("no resumed event for change %d", it.Seq)
		}
	}
	sub := p.Connect(t, e.MQTT, "dev")
	publishOrFail(t, sub, iotkv.BatchTopic("dev"), fmt.Sprintf(`{"seq":%d,"ops":[{"op":"put","key":"temp","value":"after"}]}`, last+1000))
	select {
	case ev := <-resumed:
		if !strings.Contains(ev.data, `"after"`) {
			t.Fatalf("live event after the replay: %+v", ev)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no live event after the replay")
	}
	// SIGTERM ends the stream and the edge exits 0.
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := e.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the edge exited %d on SIGTERM with a watcher connected, want 0", code)
	}
}
