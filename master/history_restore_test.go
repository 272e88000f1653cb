package master

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// history reads device/key's history on e as admin.
func (r *rig) history(e *edge.Edge, device, key string) []struct {
	Op    string          `json:"op"`
	Value json.RawMessage `json:"value"`
	Seq   uint64          `json:"seq"`
} {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+e.HTTPAddr()+"/v1/history/"+device+"/"+key+"?limit=1000", nil)
	req.SetBasicAuth("admin", testenv.Password("admin"))
	resp, err := r.pki.HTTPClient(r.t, "admin").Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct {
		Items []struct {
			Op    string          `json:"op"`
			Value json.RawMessage `json:"value"`
			Seq   uint64          `json:"seq"`
		} `json:"items"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || resp.StatusCode != http.StatusOK {
		r.t.Fatalf("history %s/%s: %s %v", device, key, resp.Status, err)
	}
	return page.Items
}

// History is per edge: an edge restored from the master gets its keys
// back but not their history, which starts again at the restore; a
// watcher resuming with an id from before the restore gets a reset.
func TestARestoredEdgesHistoryStartsAtTheRestore(t *testing.T) {
	r := newRig(t)
	data := filepath.Join(t.TempDir(), "e1")
	e1 := r.startEdge("e1", data, "", nil)
	m := r.startMaster([]*edge.Edge{e1}, nil)
	for i := range 3 {
		r.restPut(e1, "d2", "temp", fmt.Sprint(20+i))
	}
	before := r.history(e1, "d2", "temp")
	if len(before) != 3 {
		t.Fatalf("history before the loss: %+v, want 3 puts", before)
	}
	oldID := before[2].Seq
	waitFor(t, 10*time.Second, "the master to confirm everything", func() bool {
		st := m.Status()[0]
		return st.Seq > 0 && st.Lag == 0 && st.Seq == st.EdgeSeq
	})
	if err := e1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(data); err != nil { // the disk died
		t.Fatal(err)
	}
	if err := edge.Restore(context.Background(), edge.RestoreOptions{URL: "https://" + m.HTTPAddr(), ID: "e1",
		Password: testenv.Password("e1"), TLSFiles: r.pki.Paths("e1"), DataDir: data}); err != nil {
		t.Fatal(err)
	}
	e1b := r.startEdge("e1", data, "", nil)
	if got := r.edgeState(e1b, "d2")["d2/temp"]; got.value != "22" {
		t.Fatalf("restored d2/temp = %+v, want 22", got)
	}
	if h := r.history(e1b, "d2", "temp"); len(h) != 0 {
		t.Fatalf("history right after the restore: %+v, want none (it starts at the restore)", h)
	}
	r.restPut(e1b, "d2", "temp", `23`)
	if h := r.history(e1b, "d2", "temp"); len(h) != 1 || string(h[0].Value) != "23" {
		t.Fatalf("history after a write on the restored edge: %+v, want the one put", h)
	}

	// A watcher that saw change oldID on the lost edge resumes on the
	// restored one, whose change seqs started again: reset.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req := authGet(t, "https://"+e1b.HTTPAddr()+"/v1/watch/d2", "admin").WithContext(ctx)
	req.Header.Set("Last-Event-ID", fmt.Sprint(oldID))
	c := r.pki.HTTPClient(t, "admin")
	c.Timeout = 0
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "event: ") {
			if line != "event: reset" {
				t.Fatalf("first event resuming from %d after the restore: %q, want reset", oldID, line)
			}
			return
		}
	}
	t.Fatalf("no event resuming from %d after the restore: %v", oldID, sc.Err())
}
