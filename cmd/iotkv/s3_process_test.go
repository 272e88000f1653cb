//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
	"github.com/iotkv/iotkv/s3store"
)

// wait waits for the process to exit and returns its exit code.
func (s *serverProc) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-s.exited:
	case <-time.After(within):
		t.Fatalf("%s did not exit within %v", s.name, within)
	}
	var ee *exec.ExitError
	if errors.As(s.err, &ee) {
		return ee.ExitCode()
	}
	if s.err != nil {
		t.Fatalf("%s: %v", s.name, s.err)
	}
	return 0
}

// backupStatus is one edge of the master's GET /v1/backups.
type backupStatus struct {
	Edge        string `json:"edge"`
	Connected   bool   `json:"connected"`
	Seq         uint64 `json:"seq"`
	EdgeSeq     uint64 `json:"edge_seq"`
	Lag         uint64 `json:"lag"`
	SnapshotSeq uint64 `json:"snapshot_seq"`
	Pending     int    `json:"pending"`
	Store       string `json:"store"`
	StoreError  string `json:"store_error"`
}

// waitBackup polls the master's GET /v1/backups (as admin) until ok holds
// for edge, and returns that status.
func waitBackup(t *testing.T, c *http.Client, addr, edge string, within time.Duration, what string, ok func(backupStatus) bool) backupStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	var last backupStatus
	var lastErr error
	for {
		lastErr = func() error {
			req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/v1/backups", nil)
			req.SetBasicAuth("admin", testenv.Password("admin"))
			resp, err := c.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET /v1/backups: %s", resp.Status)
			}
			var body struct {
				Edges []backupStatus `json:"edges"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				return fmt.Errorf("GET /v1/backups: %w", err)
			}
			for _, st := range body.Edges {
				if st.Edge == edge {
					last = st
					return nil
				}
			}
			return fmt.Errorf("GET /v1/backups lists no edge %s", edge)
		}()
		if lastErr == nil && ok(last) {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last status %+v, error %v", what, within, last, lastErr)
		}
		time.Sleep(50 * time.Millisecond) // polling: the master pushes nothing
	}
}

// publishBatches publishes device's batches at QoS 1, each acknowledged
// before the next.
func publishBatches(t *testing.T, p *testenv.PKI, mqttAddr, device string, batches []iotkv.Batch) {
	t.Helper()
	c := p.Connect(t, mqttAddr, device)
	for _, b := range batches {
		payload, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		tok := c.Publish(iotkv.BatchTopic(device), 1, false, payload)
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("%s batch %d: no PUBACK within 30s: %v", device, b.Seq, tok.Error())
		}
	}
}

// s3Model is what the devices of the S3 test wrote and had acknowledged:
// the expected state, the batches still to publish, and the change count
// (the edge gives every op one change seq).
type s3Model struct {
	state   kvState
	pending map[string][]iotkv.Batch
	lastSeq map[string]uint64
	changes uint64
}

func (m *s3Model) batch(device string, ops ...iotkv.Op) {
	m.lastSeq[device]++
	m.pending[device] = append(m.pending[device], iotkv.Batch{Seq: m.lastSeq[device], Ops: ops})
	for _, op := range ops {
		m.changes++
		if op.Op == iotkv.OpDel {
			delete(m.state[device], op.Key)
			continue
		}
		v, err := compactJSON(op.Value)
		if err != nil {
			panic(err)
		}
		m.state.set(device, op.Key, backupValue{value: v, ts: op.TS})
	}
}

func (m *s3Model) publish(t *testing.T, p *testenv.PKI, mqttAddr string) {
	t.Helper()
	for device, bs := range m.pending {
		publishBatches(t, p, mqttAddr, device, bs)
	}
	m.pending = map[string][]iotkv.Batch{}
}

func put(key, value string, ts *int64) iotkv.Op {
	return iotkv.Op{Op: iotkv.OpPut, Key: key, Value: json.RawMessage(value), TS: ts}
}

// The master on S3 as a user runs it: versitygw, `iotkv master --store
// s3://... --s3-endpoint ...` with AWS_* credentials, an `iotkv edge` it
// follows, devices writing over MQTT/TLS. Once the master reports every
// change stored (GET /v1/backups: seq reaches the edge's last change, lag
// 0), the edge is killed with SIGKILL, the master stopped, the edge's data
// dir deleted, and `iotkv edge --restore-from s3://...` on the empty dir,
// with no master running, must serve every acknowledged key with its value
// and ts, and nothing else. The restored edge still knows each device's
// last seq: a batch sent again is acknowledged, not applied twice.
func TestS3MasterBackupRestoresAKilledEdgeWithNoMasterRunning(t *testing.T) {
	s3 := testenv.StartS3(t)
	p := testenv.NewPKI(t)
	edgeCerts(t, p, "e1")
	devices := []string{"dev-a", "dev-b"}
	for _, d := range devices {
		p.Identity(t, d, iotkv.RoleDevice)
	}
	pwFile := masterIdentity(t, p, "master")
	p.Identity(t, "admin", iotkv.RoleAdmin)
	hc := p.HTTPClient(t, "admin")
	store := s3.URL("fleet")

	data := filepath.Join(t.TempDir(), "e1")
	edgeArgs := []string{"edge", "--id", "e1", "--data", data, "--certs", p.Dir, "--accounts", p.Accounts,
		"--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}
	e1 := startServerProc(t, hc, "edge", edgeArgs...)
	m := startServerProcEnv(t, hc, "master", s3.Env(), "master", "--store", store, "--s3-endpoint", s3.Endpoint,
		"--flush-interval", "200ms", "--snapshot-interval", "1s", "--lease-ttl", "3s",
		"--certs", p.Dir, "--accounts", p.Accounts, "--password-file", pwFile,
		"--edges", "e1="+e1.addrs["mqtt"], "--http-addr", "127.0.0.1:0")
	waitBackup(t, hc, m.addrs["https"], "e1", 30*time.Second, "the master following e1", func(st backupStatus) bool {
		return st.Connected && st.Store == store+"/"
	})

	// Phase 1: 300 keys of every JSON kind, a third with ts, until the
	// master has compacted them into a snapshot.
	const tsBase = int64(1764000000000)
	model := &s3Model{state: kvState{}, pending: map[string][]iotkv.Batch{}, lastSeq: map[string]uint64{}}
	for di, d := range devices {
		for b := range 6 {
			var ops []iotkv.Op
			for i := b * 25; i < (b+1)*25; i++ {
				var ts *int64
				if i%3 == 0 {
					v := tsBase + int64(i)
					ts = &v
				}
				var val string
				switch i % 4 {
				case 0:
					val = fmt.Sprint(i*10 + di)
				case 1:
					val = fmt.Sprintf("%q", fmt.Sprintf("v-%s-%d é \u2603", d, i))
				case 2:
					val = fmt.Sprintf(`{ "n": %d, "a": [1, 2.5, null, true] }`, i)
				case 3:
					val = "null"
				}
				ops = append(ops, put(fmt.Sprintf("k/%04d", i), val, ts))
			}
			model.batch(d, ops...)
		}
	}
	model.publish(t, p, e1.addrs["mqtt"])
	st := waitBackup(t, hc, m.addrs["https"], "e1", 30*time.Second, "a snapshot of the first 300 keys in S3",
		func(st backupStatus) bool { return st.SnapshotSeq >= model.changes })
	t.Logf("phase 1: %d changes, snapshot at seq %d", model.changes, st.SnapshotSeq)

	// Phase 2: overwrites (with and without ts), deletes, new keys; stored
	// as segments after the snapshot.
	ts := tsBase + 999_999
	var ops []iotkv.Op
	for i := range 20 {
		o := put(fmt.Sprintf("k/%04d", i), fmt.Sprintf(`"rewritten %d"`, i), nil)
		if i%2 == 1 {
			o.TS = &ts
		}
		ops = append(ops, o)
	}
	for i := 20; i < 30; i++ {
		ops = append(ops, iotkv.Op{Op: iotkv.OpDel, Key: fmt.Sprintf("k/%04d", i)})
	}
	model.batch("dev-a", ops...)
	for _, d := range devices {
		ops = nil
		for i := range 50 {
			ops = append(ops, put(fmt.Sprintf("n/%04d", i), fmt.Sprintf(`{"phase":2,"i":%d}`, i), nil))
		}
		model.batch(d, ops...)
	}
	model.publish(t, p, e1.addrs["mqtt"])
	acked := time.Now()
	if d := diffStates(model.state, restState(t, hc, e1.addrs["https"], "admin")); d != "" {
		t.Fatalf("the edge over REST differs from what its devices wrote and had acknowledged: %s", d)
	}
	st = waitBackup(t, hc, m.addrs["https"], "e1", 30*time.Second, "every change stored in S3", func(st backupStatus) bool {
		return st.Connected && st.Seq >= model.changes && st.Lag == 0 && st.StoreError == ""
	})
	t.Logf("phase 2: all %d changes stored %v after the last PUBACK (status %+v)",
		model.changes, time.Since(acked).Round(time.Millisecond), st)

	// The edge's disk is lost and no master runs.
	if err := e1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	e1.wait(t, 10*time.Second)
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := m.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("the master exited %d on SIGTERM, want 0", code)
	}
	if err := os.RemoveAll(data); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	restored := startServerProcEnv(t, hc, "restored edge", s3.Env(), append(edgeArgs,
		"--restore-from", store, "--s3-endpoint", s3.Endpoint)...)
	t.Logf("restored from S3 and ready in %v", time.Since(start).Round(time.Millisecond))
	if d := diffStates(model.state, restState(t, hc, restored.addrs["https"], "admin")); d != "" {
		t.Fatalf("the edge restored from S3 differs from what was acknowledged: %s", d)
	}

	// The devices' last seqs came back too: dev-b's last batch, sent again
	// with other values (as a device that missed the PUBACK would), is
	// acknowledged and not applied; its next batch is.
	again := iotkv.Batch{Seq: model.lastSeq["dev-b"], Ops: []iotkv.Op{put("n/0000", `"applied twice"`, nil)}}
	publishBatches(t, p, restored.addrs["mqtt"], "dev-b", []iotkv.Batch{again})
	model.batch("dev-b", put("after-restore", `true`, nil))
	model.publish(t, p, restored.addrs["mqtt"])
	if d := diffStates(model.state, restState(t, hc, restored.addrs["https"], "admin")); d != "" {
		t.Fatalf("after a resent and a new batch: %s", d)
	}
}

// runIotkv runs the iotkv binary to its end (within 20s) and returns its
// exit code and standard error.
func runIotkv(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, iotkvBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr testenv.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("iotkv %s: still running after 20s (it should have refused to start)\n%s", strings.Join(args, " "), stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stderr.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, stderr.String()
}

// A --store or --restore-from URL that no S3 server could serve is a
// usage error: exit 2 and one line saying why, before anything starts
// (all other flags here are valid). A bucket name S3 refuses used to start
// a master that was never ready.
func TestABadS3URLIsAUsageErrorWithAOneLineReason(t *testing.T) {
	p := testenv.NewPKI(t)
	pwFile := masterIdentity(t, p, "master")
	edgeCerts(t, p, "e1")
	for _, tc := range []struct {
		name, url, reason string
		storeOnly         bool // --restore-from takes a master's https:// URL too
	}{
		{"another scheme", "ftp://x", "s3://BUCKET/PREFIX", false},
		{"an https URL", "https://s3.amazonaws.com/backups", "want s3://BUCKET/PREFIX", true},
		{"no bucket", "s3://", "want s3://BUCKET/PREFIX", false},
		{"no bucket but a prefix", "s3:///fleet", "want s3://BUCKET/PREFIX", false},
		{"a bucket name too short for S3", "s3://b/fleet", `bucket "b": Bucket name cannot be shorter`, false},
		{"a bucket name S3 refuses", "s3://-backups/fleet", `bucket "-backups": Bucket name contains invalid characters`, false},
		{"the server where the bucket goes", "s3://127.0.0.1:7070/backups", "--s3-endpoint", false},
		{"a query that would be dropped", "s3://backups/fleet?region=eu", "no ?query", false},
	} {
		for _, cmd := range []struct {
			flag string
			args []string
		}{
			{"--store", []string{"master", "--certs", p.Dir, "--accounts", p.Accounts, "--password-file", pwFile,
				"--edges", "e1=127.0.0.1:1", "--http-addr", "127.0.0.1:0", "--store", tc.url}},
			{"--restore-from", []string{"edge", "--id", "e1", "--data", filepath.Join(t.TempDir(), "e1"), "--certs", p.Dir,
				"--accounts", p.Accounts, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--restore-from", tc.url}},
		} {
			if tc.storeOnly && cmd.flag != "--store" {
				continue
			}
			t.Run(cmd.flag+" with "+tc.name, func(t *testing.T) {
				code, stderr := runIotkv(t, nil, cmd.args...)
				line := strings.TrimSuffix(stderr, "\n")
				if code != 2 || strings.Contains(line, "\n") || !strings.Contains(line, cmd.flag) || !strings.Contains(line, tc.reason) {
					t.Fatalf("%s %s: exit %d, stderr %q; want exit 2 and one line naming %s and saying %q",
						cmd.flag, tc.url, code, stderr, cmd.flag, tc.reason)
				}
				t.Logf("%s", line)
			})
		}
	}
}

// `iotkv edge --restore-from s3://...` where there is no backup of the
// edge (an empty prefix, a missing bucket, a server that is down) or only
// a broken one (a segment missing) fails with exit 1 and a last line
// saying so, leaves no data dir or half-written store behind and never
// starts an empty edge.
func TestRestoreFromS3WithNothingThereFailsAndStartsNoEdge(t *testing.T) {
	s3 := testenv.StartS3(t)
	p := testenv.NewPKI(t)
	edgeCerts(t, p, "e1")
	// A chain with a hole: changes 1..2 and 5, as if a segment were lost.
	st, err := s3store.Open(s3store.Options{URL: s3.URL("holey"), Endpoint: s3.Endpoint, Creds: s3.Creds()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := st.AdvanceManifest(ctx, "e1", "inc1", 0); err != nil {
		t.Fatal(err)
	}
	segment := func(seqs ...uint64) []byte {
		var b []byte
		for _, seq := range seqs {
			line, _ := json.Marshal(iotkv.Change{Seq: seq, Device: "dev", Key: fmt.Sprint("k", seq), Op: iotkv.OpPut, Value: json.RawMessage("1"), UpdatedAt: 1})
			b = append(append(b, line...), '\n')
		}
		return b
	}
	for _, seg := range [][]uint64{{1, 2}, {5}} {
		if _, _, err := st.PutSegment(ctx, "e1", "inc1", seg[0], seg[len(seg)-1], segment(seg...)); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct{ name, url, endpoint, reason string }{
		{"an empty prefix", s3.URL("nothing-here"), s3.Endpoint, "no backup of edge e1 in " + s3.URL("nothing-here/") + ": check the bucket"},
		{"a chain with a missing segment", s3.URL("holey"), s3.Endpoint, "gap in the backup chain"},
		{"a bucket that does not exist", "s3://no-such-bucket/fleet", s3.Endpoint, "bucket does not exist"},
		{"an endpoint where nothing listens", s3.URL("fleet"), "http://127.0.0.1:1", "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			data, addrFile := filepath.Join(dir, "e1"), filepath.Join(dir, "addrs.json")
			code, stderr := runIotkv(t, s3.Env(), "edge", "--id", "e1", "--data", data, "--certs", p.Dir,
				"--accounts", p.Accounts, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
				"--addr-file", addrFile, "--restore-from", tc.url, "--s3-endpoint", tc.endpoint, "--log-level", "warn")
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			if code != 1 || !strings.HasPrefix(last, "iotkv: restore: ") || !strings.Contains(last, tc.reason) {
				t.Fatalf("exit %d, last line %q; want exit 1 and a line saying %q\n%s", code, last, tc.reason, stderr)
			}
			t.Logf("%s", last)
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				t.Errorf("left behind: %s (the data dir, a half restore or an address file of an edge that started)", e.Name())
			}
		})
	}
}
