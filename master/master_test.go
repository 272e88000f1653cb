package master

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/crypto/bcrypt"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// rig is a PKI with a master identity, an admin and a device, edges and a
// master on loopback.
type rig struct {
	t   testing.TB
	pki *testenv.PKI
	dir string // master data dir

	mu  sync.Mutex
	ids map[*edge.Edge]string
}

func newRig(t testing.TB) *rig {
	t.Helper()
	r := &rig{t: t, pki: testenv.NewPKI(t), dir: filepath.Join(t.TempDir(), "backups"), ids: map[*edge.Edge]string{}}
	r.identity("master", iotkv.RoleMaster, certs.RoleMaster)
	r.identity("admin", iotkv.RoleAdmin, certs.RoleClient)
	r.identity("rd", iotkv.RoleReader, certs.RoleClient)
	r.identity("d1", iotkv.RoleDevice, certs.RoleDevice)
	r.identity("e1", iotkv.RoleEdge, certs.RoleEdge)
	r.identity("e2", iotkv.RoleEdge, certs.RoleEdge)
	return r
}

// identity is testenv's Identity with a bcrypt cost of 4: the accounts
// code refuses to make such hashes but accepts them, and under -race a
// cost-10 check takes seconds on this machine.
func (r *rig) identity(name string, role iotkv.Role, certRole string) {
	r.t.Helper()
	if err := certs.Issue(r.pki.Dir, certs.Request{Name: name, Role: certRole}); err != nil {
		r.t.Fatal(err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(testenv.Password(name)), 4)
	if err != nil {
		r.t.Fatal(err)
	}
	f, err := accounts.Load(r.pki.Accounts)
	if err != nil {
		r.t.Fatal(err)
	}
	f.Accounts = append(f.Accounts, accounts.Account{Name: name, Role: role, Hash: string(hash)})
	if err := f.Save(r.pki.Accounts); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) startMaster(edges []*edge.Edge, mod func(*Options)) *Master {
	r.t.Helper()
	var list []Edge
	for _, e := range edges {
		list = append(list, Edge{ID: r.edgeID(e), Addr: e.MQTTAddr()})
	}
	return r.startMasterList(list, mod)
}

func (r *rig) startMasterList(list []Edge, mod func(*Options)) *Master {
	r.t.Helper()
	o := Options{
		DataDir: r.dir, Password: testenv.Password("master"), TLSFiles: r.pki.Paths("master"),
		Accounts: r.pki.Accounts, Edges: list, HTTPAddr: "127.0.0.1:0",
		SnapshotInterval: 200 * time.Millisecond, AccountsPoll: 100 * time.Millisecond,
	}
	if mod != nil {
		mod(&o)
	}
	m, err := Open(o)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

func (r *rig) startEdge(id, dataDir, addr string, mod func(*edge.Options)) *edge.Edge {
	r.t.Helper()
	e := testenv.StartEdge(r.t, r.pki, id, func(o *edge.Options) {
		if dataDir != "" {
			o.DataDir = dataDir
		}
		if addr != "" {
			o.MQTTAddr = addr
		}
		if mod != nil {
			mod(o)
		}
	})
	r.mu.Lock()
	r.ids[e] = id
	r.mu.Unlock()
	return e
}

func (r *rig) edgeID(e *edge.Edge) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[e]
}

// publishBatches sends n batches of `ops` puts from device d1 over MQTT,
// QoS 1, waiting for every PUBACK.
func (r *rig) publishBatches(e *edge.Edge, firstSeq, n, ops int, prefix string) {
	r.t.Helper()
	c := r.pki.Connect(r.t, e.MQTTAddr(), "d1")
	defer c.Disconnect(50)
	for i := 0; i < n; i++ {
		b := iotkv.Batch{Seq: uint64(firstSeq + i)}
		for j := 0; j < ops; j++ {
			ts := int64(1764000000000 + i)
			b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpPut, Key: fmt.Sprintf("%s/%d", prefix, (i*ops+j)%97), Value: json.RawMessage(fmt.Sprintf(`{"i":%d,"j":%d}`, i, j)), TS: &ts})
		}
		if i%7 == 3 {
			b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpDel, Key: fmt.Sprintf("%s/%d", prefix, i%97)})
		}
		payload, _ := json.Marshal(b)
		tok := c.Publish(iotkv.BatchTopic("d1"), 1, false, payload)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			r.t.Fatalf("publish batch %d: %v", b.Seq, tok.Error())
		}
	}
}

func (r *rig) restPut(e *edge.Edge, device, key, value string) {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodPut, "https://"+e.HTTPAddr()+"/v1/kv/"+device+"/"+key, strings.NewReader(value))
	req.SetBasicAuth("admin", testenv.Password("admin"))
	resp, err := r.pki.HTTPClient(r.t, "admin").Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		r.t.Fatalf("PUT %s/%s: %s", device, key, resp.Status)
	}
}

type kv struct {
	value string
	ts    int64
}

// edgeState reads every key of the given devices over REST.
func (r *rig) edgeState(e *edge.Edge, devices ...string) map[string]kv {
	r.t.Helper()
	out := map[string]kv{}
	client := r.pki.HTTPClient(r.t, "admin")
	for _, d := range devices {
		after := ""
		for {
			req, _ := http.NewRequest(http.MethodGet, "https://"+e.HTTPAddr()+"/v1/kv/"+d+"?limit=1000&after="+after, nil)
			req.SetBasicAuth("admin", testenv.Password("admin"))
			resp, err := client.Do(req)
			if err != nil {
				r.t.Fatal(err)
			}
			var page struct {
				Items []iotkv.Record `json:"items"`
				Next  string         `json:"next"`
			}
			err = json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			if err != nil {
				r.t.Fatal(err)
			}
			for _, rec := range page.Items {
				out[d+"/"+rec.Key] = kv{value: compact(rec.Value), ts: deref(rec.TS)}
			}
			if page.Next == "" {
				break
			}
			after = page.Next
		}
	}
	return out
}

func compact(v []byte) string {
	var b bytes.Buffer
	_ = json.Compact(&b, v)
	return b.String()
}

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// readDoc parses a backup document into a map, failing on invalid JSON.
func readDoc(t testing.TB, rd io.Reader) (iotkv.BackupHeader, map[string]kv, map[string]uint64) {
	t.Helper()
	br, err := iotkv.NewBackupReader(rd)
	if err != nil {
		t.Fatal(err)
	}
	out, devs := map[string]kv{}, map[string]uint64{}
	for {
		kind, err := br.Next()
		if err == io.EOF {
			return br.Header, out, devs
		}
		if err != nil {
			t.Fatal(err)
		}
		if kind == iotkv.BackupItemEntry {
			out[br.Entry.Device+"/"+br.Entry.Key] = kv{value: compact(br.Entry.Value), ts: deref(br.Entry.TS)}
		} else {
			devs[br.Device.Device] = br.Device.LastSeq
		}
	}
}

func (r *rig) latest(edgeID string) (iotkv.BackupHeader, map[string]kv) {
	r.t.Helper()
	f, err := os.Open(filepath.Join(r.dir, edgeID, "latest.json"))
	if os.IsNotExist(err) {
		return iotkv.BackupHeader{}, nil
	}
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	h, m, _ := readDoc(r.t, f)
	return h, m
}

// waitLatest waits until latest.json of edgeID equals want.
func (r *rig) waitLatest(edgeID string, want map[string]kv, within time.Duration) iotkv.BackupHeader {
	r.t.Helper()
	deadline := time.Now().Add(within)
	var got map[string]kv
	var h iotkv.BackupHeader
	for time.Now().Before(deadline) {
		h, got = r.latest(edgeID)
		if equalState(got, want) {
			return h
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.t.Fatalf("latest.json of %s did not converge within %v: %d keys, want %d; first difference: %s", edgeID, within, len(got), len(want), firstDiff(got, want))
	return h
}

func equalState(a, b map[string]kv) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

func firstDiff(got, want map[string]kv) string {
	for k, v := range want {
		if got[k] != v {
			return fmt.Sprintf("%s: got %+v want %+v", k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			return fmt.Sprintf("%s: extra %+v", k, v)
		}
	}
	return "none"
}

func TestChangesOverMQTTAndRESTReachLatestJSONWithinTheInterval(t *testing.T) {
	r := newRig(t)
	e1 := r.startEdge("e1", "", "", nil)
	m := r.startMaster([]*edge.Edge{e1}, nil)

	// A reader polls latest.json during all the writes: it must always
	// parse as a whole document.
	stop := make(chan struct{})
	var reads, missing atomic.Int64
	readerDone := make(chan error, 1)
	go func() {
		path := filepath.Join(r.dir, "e1", "latest.json")
		for {
			select {
			case <-stop:
				readerDone <- nil
				return
			default:
			}
			data, err := os.ReadFile(path)
			if os.IsNotExist(err) {
				missing.Add(1)
				continue
			}
			if err != nil {
				readerDone <- err
				return
			}
			if !json.Valid(data) {
				readerDone <- fmt.Errorf("latest.json is not valid JSON (%d bytes)", len(data))
				return
			}
			reads.Add(1)
		}
	}()

	r.publishBatches(e1, 1, 60, 5, "mqtt")
	r.restPut(e1, "d1", "rest/a", `{"via":"rest"}`)
	r.restPut(e1, "d2", "x", `42`)
	want := r.edgeState(e1, "d1", "d2")
	start := time.Now()
	h := r.waitLatest("e1", want, 5*time.Second)
	t.Logf("latest.json matched the edge %v after the last write (seq %d, %d keys)", time.Since(start).Round(time.Millisecond), h.Seq, len(want))
	close(stop)
	if err := <-readerDone; err != nil {
		t.Fatal(err)
	}
	t.Logf("the reader parsed latest.json %d times", reads.Load())
	if reads.Load() == 0 {
		t.Fatal("the reader never saw latest.json")
	}

	// Status catches up with the file a moment after the rename.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := m.Status()[0]
		if st.Seq == h.Seq && st.Keys == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %+v, want seq %d keys %d", st, h.Seq, len(want))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMasterRestartResumesFromItsSeq(t *testing.T) {
	r := newRig(t)
	e1 := r.startEdge("e1", "", "", nil)
	m := r.startMaster([]*edge.Edge{e1}, nil)
	r.publishBatches(e1, 1, 20, 3, "a")
	r.waitLatest("e1", r.edgeState(e1, "d1"), 5*time.Second)
	seqBefore := m.Status()[0].Seq
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal("second Close:", err)
	}

	// Writes while the master is down for longer than an interval.
	r.publishBatches(e1, 21, 30, 3, "b")
	time.Sleep(300 * time.Millisecond)

	// The restarted master asks for what follows its seq: the first
	// changes it receives start right after it.
	var firstFrom atomic.Uint64
	m2 := r.startMaster([]*edge.Edge{e1}, func(o *Options) {
		o.Registry = prometheus.NewRegistry()
		o.dropHook = func(_, kind string, payload []byte) bool {
			if kind == iotkv.BackupKindChanges {
				var msg iotkv.BackupChanges
				if json.Unmarshal(payload, &msg) == nil {
					firstFrom.CompareAndSwap(0, msg.From)
				}
			}
			return false
		}
	})
	r.waitLatest("e1", r.edgeState(e1, "d1"), 5*time.Second)
	if n := counter(m2.follow["e1"].m.resyncs.WithLabelValues("e1")); n != 0 {
		t.Fatalf("the master resynced from a snapshot %v times; it should have caught up from its seq", n)
	}
	if got := firstFrom.Load(); got != seqBefore+1 {
		t.Fatalf("the restarted master's first changes start at %d, want %d", got, seqBefore+1)
	}
}

func TestEdgeRestartIsFollowedWithoutResync(t *testing.T) {
	r := newRig(t)
	data := filepath.Join(t.TempDir(), "e1")
	e1 := r.startEdge("e1", data, "", nil)
	addr := e1.MQTTAddr()
	m := r.startMaster([]*edge.Edge{e1}, nil)
	r.publishBatches(e1, 1, 10, 3, "a")
	r.waitLatest("e1", r.edgeState(e1, "d1"), 5*time.Second)
	if err := e1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	e1b := r.startEdge("e1", data, addr, nil)
	r.publishBatches(e1b, 11, 10, 3, "b")
	r.waitLatest("e1", r.edgeState(e1b, "d1"), 10*time.Second)
	if n := counter(m.follow["e1"].m.resyncs.WithLabelValues("e1")); n != 0 {
		t.Fatalf("resyncs = %v, want 0 (same incarnation)", n)
	}
}

func TestALostBackupMessageIsDetectedAndReplayed(t *testing.T) {
	r := newRig(t)
	e1 := r.startEdge("e1", "", "", nil)
	var dropped atomic.Int64
	m := r.startMaster([]*edge.Edge{e1}, func(o *Options) {
		// The first changes message from change 10 on is lost, however
		// the edge cut the stream into messages.
		o.dropHook = func(_, kind string, payload []byte) bool {
			var msg iotkv.BackupChanges
			if kind != iotkv.BackupKindChanges || json.Unmarshal(payload, &msg) != nil || msg.From < 10 {
				return false
			}
			return dropped.CompareAndSwap(0, 1)
		}
	})
	r.publishBatches(e1, 1, 30, 1, "g")
	// The dropped message may have been the last one in flight; later
	// changes make the hole visible by seq.
	deadline := time.Now().Add(10 * time.Second)
	for dropped.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if dropped.Load() != 1 {
		t.Fatal("no message was dropped: the test did not test a gap")
	}
	r.publishBatches(e1, 31, 10, 1, "h")
	r.waitLatest("e1", r.edgeState(e1, "d1"), 10*time.Second)
	if n := counter(m.follow["e1"].m.gaps.WithLabelValues("e1")); n < 1 {
		t.Fatalf("gaps = %v, want at least 1", n)
	}
}

func TestRetentionExceededMakesTheMasterResyncFromASnapshot(t *testing.T) {
	r := newRig(t)
	ereg := prometheus.NewRegistry()
	e1 := r.startEdge("e1", "", "", func(o *edge.Options) {
		o.Registry = ereg
		o.Backup.RetainChanges = 50
		// History would keep the changes (7 days by default) and the
		// master would read them: no forced trim to test.
		o.History.Off = true
	})
	// No master yet: nothing is confirmed, and the log exceeds retention.
	r.publishBatches(e1, 1, 100, 3, "r")
	waitFor(t, 5*time.Second, "a forced trim", func() bool { return gauge(ereg, "iotkv_backup_forced_trims_total") >= 1 })

	m := r.startMaster([]*edge.Edge{e1}, nil)
	r.waitLatest("e1", r.edgeState(e1, "d1"), 10*time.Second)
	if n := counter(m.follow["e1"].m.resyncs.WithLabelValues("e1")); n != 1 {
		t.Fatalf("resyncs = %v, want 1", n)
	}
	// After the snapshot the stream goes on with changes.
	r.publishBatches(e1, 101, 10, 3, "s")
	r.waitLatest("e1", r.edgeState(e1, "d1"), 5*time.Second)
	if n := counter(m.follow["e1"].m.resyncs.WithLabelValues("e1")); n != 1 {
		t.Fatalf("resyncs = %v after the snapshot, want still 1", n)
	}
}

func TestBackupReadsAreLimitedToAdminsAndTheEdgeItself(t *testing.T) {
	r := newRig(t)
	e1 := r.startEdge("e1", "", "", nil)
	e2 := r.startEdge("e2", "", "", nil)
	m := r.startMaster([]*edge.Edge{e1, e2}, nil)
	base := "https://" + m.HTTPAddr()
	tests := []struct {
		name, user, path string
		want             int
	}{
		{"an edge reads its own backup", "e1", "/v1/backups/e1", 200},
		{"an edge cannot read another edge's backup", "e1", "/v1/backups/e2", 403},
		{"an admin reads any backup", "admin", "/v1/backups/e2", 200},
		{"a device cannot read a backup", "d1", "/v1/backups/e1", 403},
		{"a reader cannot read a backup", "rd", "/v1/backups/e1", 403},
		{"an unknown edge is not found", "admin", "/v1/backups/e9", 404},
		{"an edge id with a dot-dot is refused", "admin", "/v1/backups/..", 400},
		{"no credentials", "", "/v1/backups/e1", 401},
		{"a device cannot list backups", "d1", "/v1/backups", 403},
		{"an admin lists backups", "admin", "/v1/backups", 200},
		{"metrics need admin", "e1", "/metrics", 403},
		{"health needs nothing", "", "/healthz", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, base+tc.path, nil)
			client := r.pki.HTTPClient(t, "admin")
			if tc.user != "" {
				req.SetBasicAuth(tc.user, testenv.Password(tc.user))
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%s as %q: %d %s, want %d", tc.path, tc.user, resp.StatusCode, body, tc.want)
			}
			if tc.want == 200 && strings.HasPrefix(tc.path, "/v1/backups/") && !json.Valid(body) {
				t.Fatalf("backup body is not JSON: %.200s", body)
			}
		})
	}
	// Edge ids name directories under DIR: none may escape it.
	for _, id := range []string{"../x", "..", ".", "a/b", "/abs", "x\x00y", strings.Repeat("a", 300), ""} {
		if _, err := Open(Options{DataDir: t.TempDir(), Password: "x", TLSFiles: r.pki.Paths("master"), Accounts: r.pki.Accounts,
			Edges: []Edge{{ID: id, Addr: "127.0.0.1:1"}}}); err == nil {
			t.Fatalf("an edge id %q was accepted", id)
		}
	}
}

func TestALostEdgeIsRestoredWithEveryConfirmedKey(t *testing.T) {
	r := newRig(t)
	data := filepath.Join(t.TempDir(), "e1")
	e1 := r.startEdge("e1", data, "", nil)
	addr := e1.MQTTAddr()
	m := r.startMaster([]*edge.Edge{e1}, func(o *Options) { o.SnapshotInterval = time.Hour }) // state from journals too
	r.publishBatches(e1, 1, 40, 4, "k")
	r.restPut(e1, "d2", "y", `"hello"`)
	want := r.edgeState(e1, "d1", "d2")
	waitFor(t, 5*time.Second, "the master to confirm everything", func() bool { st := m.Status()[0]; return st.Seq > 0 && st.Lag == 0 && st.Seq == st.EdgeSeq })
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
	// Not again on a data dir that is not empty.
	if err := edge.Restore(context.Background(), edge.RestoreOptions{URL: "https://" + m.HTTPAddr(), ID: "e1",
		Password: testenv.Password("e1"), TLSFiles: r.pki.Paths("e1"), DataDir: data}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("restore over a data dir that is not empty: %v", err)
	}
	e1b := r.startEdge("e1", data, addr, nil)
	if got := r.edgeState(e1b, "d1", "d2"); !equalState(got, want) {
		t.Fatalf("restored edge differs: %d keys, want %d; %s", len(got), len(want), firstDiff(got, want))
	}

	// The device resends its last batch with another value: acknowledged,
	// not applied again.
	c := r.pki.Connect(t, e1b.MQTTAddr(), "d1")
	payload, _ := json.Marshal(iotkv.Batch{Seq: 40, Ops: []iotkv.Op{{Op: iotkv.OpPut, Key: "k/0", Value: json.RawMessage(`"again"`)}}})
	tok := c.Publish(iotkv.BatchTopic("d1"), 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("resent batch: %v", tok.Error())
	}
	if got := r.edgeState(e1b, "d1")["d1/k/0"]; got != want["d1/k/0"] {
		t.Fatalf("a resent batch was applied again: %+v, want %+v", got, want["d1/k/0"])
	}
	// The master follows the restored edge (a new incarnation) with a
	// snapshot, and keeps the same content.
	waitFor(t, 10*time.Second, "a resync from the restored edge", func() bool {
		return counter(m.follow["e1"].m.resyncs.WithLabelValues("e1")) >= 1 && m.Status()[0].Lag == 0
	})
	resp, err := r.pki.HTTPClient(t, "admin").Do(authGet(t, "https://"+m.HTTPAddr()+"/v1/backups/e1", "admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, got, devs := readDoc(t, resp.Body)
	if !equalState(got, want) {
		t.Fatalf("backup after resync differs: %s", firstDiff(got, want))
	}
	if devs["d1"] != 40 {
		t.Fatalf("device d1 last seq in the backup = %d, want 40", devs["d1"])
	}
}

func authGet(t *testing.T, url, user string) *http.Request {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, testenv.Password(user))
	return req
}

func waitFor(t testing.TB, within time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func gauge(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			m := mf.GetMetric()[0]
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}

func counter(c prometheus.Counter) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return -1
	}
	return d.GetCounter().GetValue()
}
