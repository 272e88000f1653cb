package master

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// A key written with a 1 s ttl reads as 404 at +1.1 s; the sweeper's
// delete reaches the master's latest.json, and an edge restored from the
// master does not bring the key back.
func TestAnExpiredKeyLeavesTheBackupAndStaysGoneAfterARestore(t *testing.T) {
	r := newRig(t)
	data := filepath.Join(t.TempDir(), "e1")
	e1 := r.startEdge("e1", data, "", nil)
	addr := e1.MQTTAddr()
	m := r.startMaster([]*edge.Edge{e1}, func(o *Options) { o.SnapshotInterval = 200 * time.Millisecond })
	client := r.pki.HTTPClient(t, "admin")
	do := func(e *edge.Edge, method, path, body string) int {
		t.Helper()
		req, _ := http.NewRequest(method, "https://"+e.HTTPAddr()+path, strings.NewReader(body))
		req.SetBasicAuth("admin", testenv.Password("admin"))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := do(e1, http.MethodPut, "/v1/kv/d2/session?ttl=1", `"s-1"`); code != http.StatusOK {
		t.Fatalf("PUT with ttl: %d", code)
	}
	written := time.Now() // the edge committed it (and started the ttl) before it answered
	r.restPut(e1, "d2", "keep", `"k"`)
	if code := do(e1, http.MethodGet, "/v1/kv/d2/session", ""); code != http.StatusOK && time.Since(written) < time.Second {
		t.Fatalf("the ttl key before its expiry: %d", code)
	}
	time.Sleep(time.Until(written.Add(1100 * time.Millisecond)))
	if code := do(e1, http.MethodGet, "/v1/kv/d2/session", ""); code != http.StatusNotFound {
		t.Fatalf("the ttl key at +1.1 s: %d, want 404", code)
	}
	// The sweeper's delete goes through the backup stream.
	r.waitLatest("e1", map[string]kv{"d2/keep": {value: `"k"`}}, 20*time.Second)
	waitFor(t, 10*time.Second, "the master to confirm everything", func() bool { st := m.Status()[0]; return st.Lag == 0 && st.Seq == st.EdgeSeq })

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
	e1b := r.startEdge("e1", data, addr, nil)
	if code := do(e1b, http.MethodGet, "/v1/kv/d2/session", ""); code != http.StatusNotFound {
		t.Fatalf("the expired key on the restored edge: %d, want 404", code)
	}
	if got := r.edgeState(e1b, "d2"); len(got) != 1 || got["d2/keep"].value != `"k"` {
		t.Fatalf("restored edge holds %v", got)
	}
}
