//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/testenv"
)

// serverProc is `iotkv edge` or `iotkv master` running as a child process
// that dies with the test (t.Cleanup) or with the test binary (Pdeathsig).
type serverProc struct {
	name   string
	cmd    *exec.Cmd
	out    *testenv.Buffer
	exited chan struct{}
	err    error             // valid after exited is closed
	addrs  map[string]string // from --addr-file: "https", and "mqtt" for an edge
}

// startServerProc runs iotkv with args plus --addr-file, reads the bound
// addresses and waits until GET /readyz answers 200 (client: a client
// trusting the CA).
func startServerProc(t *testing.T, client *http.Client, name string, args ...string) *serverProc {
	t.Helper()
	return startServerProcEnv(t, client, name, nil, args...)
}

// startServerProcEnv is startServerProc with env added to the test's own
// environment (the AWS_* variables of a master on S3).
func startServerProcEnv(t *testing.T, client *http.Client, name string, env []string, args ...string) *serverProc {
	t.Helper()
	s, addrFile := launchServerProc(t, name, env, args...)
	c := *client
	c.Timeout = time.Second
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-s.exited:
			t.Fatalf("%s exited before it was ready: %v", name, s.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was not ready within 60s", name)
		}
		if s.addrs == nil {
			s.readAddrs(t, addrFile)
		}
		if s.addrs != nil {
			if resp, err := c.Get("https://" + s.addrs["https"] + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return s
				}
			}
		}
		time.Sleep(20 * time.Millisecond) // polling: the child tells us nothing else
	}
}

// readAddrs sets s.addrs from addrFile once the server has written it.
func (s *serverProc) readAddrs(t *testing.T, addrFile string) {
	t.Helper()
	if data, err := os.ReadFile(addrFile); err == nil {
		if err := json.Unmarshal(data, &s.addrs); err != nil {
			t.Fatalf("%s --addr-file %s: %v: %s", s.name, addrFile, err, data)
		}
	}
}

// launchServerProc starts iotkv with args plus --addr-file (returned) and
// does not wait for anything.
func launchServerProc(t *testing.T, name string, env []string, args ...string) (*serverProc, string) {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), name+"-addrs.json")
	s := &serverProc{name: name, out: &testenv.Buffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command(iotkvBin, append(args, "--addr-file", addrFile, "--log-level", "debug")...)
	if env != nil {
		s.cmd.Env = append(os.Environ(), env...)
	}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-s.exited
		if t.Failed() {
			out := s.out.String()
			if len(out) > 20000 { // debug logs of 10,000 keys: keep the end
				out = "...\n" + out[len(out)-20000:]
			}
			t.Logf("%s output (pid %d):\n%s", name, s.cmd.Process.Pid, out)
		}
	})
	return s, addrFile
}

// backupValue is what one key holds: its value as compact JSON and its ts.
type backupValue struct {
	value string
	ts    *int64
}

func (v backupValue) String() string {
	if v.ts == nil {
		return v.value + " ts=null"
	}
	return fmt.Sprintf("%s ts=%d", v.value, *v.ts)
}

func (v backupValue) equal(w backupValue) bool {
	if v.value != w.value || (v.ts == nil) != (w.ts == nil) {
		return false
	}
	return v.ts == nil || *v.ts == *w.ts
}

// kvState is device → key → value.
type kvState map[string]map[string]backupValue

func (s kvState) set(device, key string, v backupValue) {
	if s[device] == nil {
		s[device] = map[string]backupValue{}
	}
	s[device][key] = v
}

func (s kvState) keys() int {
	n := 0
	for _, m := range s {
		n += len(m)
	}
	return n
}

func compactJSON(raw json.RawMessage) (string, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return "", err
	}
	return b.String(), nil
}

// diffStates describes how got differs from want ("" when equal), at most
// 10 keys named.
func diffStates(want, got kvState) string {
	var lines []string
	missing, extra, wrong := 0, 0, 0
	add := func(format string, args ...any) {
		if len(lines) < 10 {
			lines = append(lines, fmt.Sprintf(format, args...))
		}
	}
	devices := map[string]bool{}
	for d := range want {
		devices[d] = true
	}
	for d := range got {
		devices[d] = true
	}
	var sorted []string
	for d := range devices {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted)
	for _, d := range sorted {
		var keys []string
		for k := range want[d] {
			keys = append(keys, k)
		}
		for k := range got[d] {
			if _, ok := want[d][k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			w, inWant := want[d][k]
			g, inGot := got[d][k]
			switch {
			case !inGot:
				missing++
				add("  missing %s/%s (want %s)", d, k, w)
			case !inWant:
				extra++
				add("  extra   %s/%s = %s", d, k, g)
			case !w.equal(g):
				wrong++
				add("  wrong   %s/%s = %s, want %s", d, k, g, w)
			}
		}
	}
	if missing+extra+wrong == 0 {
		return ""
	}
	return fmt.Sprintf("%d keys missing, %d extra, %d with another value or ts (of %d wanted, %d present):\n%s",
		missing, extra, wrong, want.keys(), got.keys(), strings.Join(lines, "\n"))
}

// restState reads an edge's whole state over REST as the admin: every
// device of GET /v1/devices, every key of GET /v1/kv/{device} page by page.
func restState(t *testing.T, c *http.Client, addr, user string) kvState {
	t.Helper()
	get := func(path string, into any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+path, nil)
		req.SetBasicAuth(user, testenv.Password(user))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b.String())
		}
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	var devs struct {
		Devices []struct {
			Device string `json:"device"`
		} `json:"devices"`
	}
	get("/v1/devices", &devs)
	st := kvState{}
	for _, d := range devs.Devices {
		after := ""
		for page := 0; ; page++ {
			if page > 1000 {
				t.Fatalf("GET /v1/kv/%s: more than 1000 pages; next does not advance?", d.Device)
			}
			var list struct {
				Items []iotkv.Record `json:"items"`
				Next  string         `json:"next"`
			}
			get("/v1/kv/"+url.PathEscape(d.Device)+"?limit=1000&after="+url.QueryEscape(after), &list)
			for _, r := range list.Items {
				if r.Device != d.Device {
					t.Fatalf("GET /v1/kv/%s returned a record of device %q", d.Device, r.Device)
				}
				if _, dup := st[d.Device][r.Key]; dup {
					t.Fatalf("GET /v1/kv/%s returned key %q twice", d.Device, r.Key)
				}
				v, err := compactJSON(r.Value)
				if err != nil {
					t.Fatalf("GET /v1/kv/%s: key %q: value %q: %v", d.Device, r.Key, r.Value, err)
				}
				st.set(d.Device, r.Key, backupValue{value: v, ts: r.TS})
			}
			if list.Next == "" {
				break
			}
			if list.Next == after {
				t.Fatalf("GET /v1/kv/%s: next %q does not advance", d.Device, after)
			}
			after = list.Next
		}
	}
	return st
}

// readLatest parses DIR/{edge}/latest.json; an error means "not (yet) a
// complete document naming this edge".
func readLatest(path, edgeID string) (kvState, uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	var doc struct {
		Edge    *string             `json:"edge"`
		Seq     *uint64             `json:"seq"`
		TakenAt *string             `json:"taken_at"`
		Entries []iotkv.BackupEntry `json:"entries"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, 0, fmt.Errorf("%s does not parse (%d bytes): %w", path, len(data), err)
	}
	if doc.Edge == nil || doc.Seq == nil || doc.TakenAt == nil || doc.Entries == nil {
		return nil, 0, fmt.Errorf("%s lacks one of edge, seq, taken_at, entries", path)
	}
	if *doc.Edge != edgeID {
		return nil, 0, fmt.Errorf("%s: edge %q, want %q", path, *doc.Edge, edgeID)
	}
	if _, err := time.Parse(time.RFC3339Nano, *doc.TakenAt); err != nil {
		return nil, 0, fmt.Errorf("%s: taken_at %q: %v", path, *doc.TakenAt, err)
	}
	st := kvState{}
	for _, e := range doc.Entries {
		if _, dup := st[e.Device][e.Key]; dup {
			return nil, 0, fmt.Errorf("%s: %s/%s appears twice", path, e.Device, e.Key)
		}
		v, err := compactJSON(e.Value)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %s/%s: value %q: %v", path, e.Device, e.Key, e.Value, err)
		}
		st.set(e.Device, e.Key, backupValue{value: v, ts: e.TS})
	}
	return st, *doc.Seq, nil
}

// The first Done-when of the master: two edges and a master as real
// processes, devices write 10,000 keys over MQTT, and within
// --snapshot-interval plus a margin each DIR/{edge}/latest.json holds
// exactly the edge's state as REST reads it: every device, key, value and
// ts, nothing more.
func TestLatestJSONEqualsEdgeStateWithTwoEdgesAndAMaster(t *testing.T) {
	const (
		snapshotInterval = 2 * time.Second
		margin           = 20 * time.Second
		keysPerDevice    = 2500 // 4 devices: 10,000 keys
		opsPerBatch      = 250
	)
	edgeIDs := []string{"e1", "e2"}
	devices := map[string][]string{"e1": {"dev-a", "dev-b"}, "e2": {"dev-c", "dev-d"}}

	p := testenv.NewPKI(t)
	edgeCerts(t, p, edgeIDs...)
	for _, id := range edgeIDs {
		for _, d := range devices[id] {
			p.Identity(t, d, iotkv.RoleDevice)
		}
	}
	pwFile := masterIdentity(t, p, "master")
	p.Identity(t, "admin", iotkv.RoleAdmin)
	hc := p.HTTPClient(t, "admin")

	root := t.TempDir()
	edges := map[string]*serverProc{}
	var edgeList []string
	for _, id := range edgeIDs {
		edges[id] = startServerProc(t, hc, id, "edge", "--id", id, "--data", filepath.Join(root, id),
			"--certs", p.Dir, "--accounts", p.Accounts, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
		edgeList = append(edgeList, id+"="+edges[id].addrs["mqtt"])
	}
	backups := filepath.Join(root, "backups")
	startServerProc(t, hc, "master", "master", "--data", backups, "--certs", p.Dir, "--accounts", p.Accounts,
		"--password-file", pwFile, "--edges", strings.Join(edgeList, ","), "--http-addr", "127.0.0.1:0",
		"--snapshot-interval", snapshotInterval.String())

	// What the devices write, kept as the expected state per edge. Values
	// are of every JSON kind, some with whitespace the backup may compact;
	// a third of the puts carry ts; the last batch of each device deletes
	// some keys, overwrites others with and without ts, and puts a key back.
	model := map[string]kvState{}
	batches := map[string][]iotkv.Batch{}
	const tsBase = int64(1764000000000)
	for _, id := range edgeIDs {
		model[id] = kvState{}
		for di, d := range devices[id] {
			var ops []iotkv.Op
			for i := range keysPerDevice {
				key := fmt.Sprintf("k/%04d", i)
				var val string
				switch i % 6 {
				case 0:
					val = fmt.Sprint(i*10 + di)
				case 1:
					val = fmt.Sprintf("%q", fmt.Sprintf("v-%s-%d é \"q\" \\ \u2603", d, i))
				case 2:
					val = fmt.Sprintf(`{ "n": %d, "a": [1, 2.5, "x", null, true], "o": {"d": %q} }`, i, d)
				case 3:
					val = fmt.Sprint(i%2 == 0)
				case 4:
					val = fmt.Sprintf("%d.25e-3", i)
				case 5:
					val = "null"
				}
				if i == 7 {
					key = "dir/sub/ключ-" + d
				}
				op := iotkv.Op{Op: iotkv.OpPut, Key: key, Value: json.RawMessage(val)}
				if i%3 == 0 {
					ts := tsBase + int64(i)
					op.TS = &ts
				}
				ops = append(ops, op)
			}
			var final []iotkv.Op
			for _, i := range []int{3, 100, 1001, 2499} { // deletes
				final = append(final, iotkv.Op{Op: iotkv.OpDel, Key: fmt.Sprintf("k/%04d", i)})
			}
			ts := tsBase + 999_999
			final = append(final,
				iotkv.Op{Op: iotkv.OpPut, Key: "k/0000", Value: json.RawMessage(`"rewritten without ts"`)}, // had ts
				iotkv.Op{Op: iotkv.OpPut, Key: "k/0001", Value: json.RawMessage(`[ 1, {"b" : 2} ]`), TS: &ts},
				iotkv.Op{Op: iotkv.OpDel, Key: "k/0002"},
				iotkv.Op{Op: iotkv.OpPut, Key: "k/0002", Value: json.RawMessage(`"back"`)},
				iotkv.Op{Op: iotkv.OpDel, Key: "never-written"},
			)
			var bs []iotkv.Batch
			for start := 0; start < len(ops); start += opsPerBatch {
				bs = append(bs, iotkv.Batch{Seq: uint64(len(bs) + 1), Ops: ops[start:min(start+opsPerBatch, len(ops))]})
			}
			bs = append(bs, iotkv.Batch{Seq: uint64(len(bs) + 1), Ops: final})
			batches[d] = bs
			for _, b := range bs {
				for _, op := range b.Ops {
					if op.Op == iotkv.OpDel {
						delete(model[id][d], op.Key)
						continue
					}
					v, err := compactJSON(op.Value)
					if err != nil {
						t.Fatal(err)
					}
					model[id].set(d, op.Key, backupValue{value: v, ts: op.TS})
				}
			}
		}
	}

	// Publish: one connection per device, all devices at once, each batch
	// QoS 1 and acknowledged (durable) before the next.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, id := range edgeIDs {
		for _, d := range devices[id] {
			c := p.Connect(t, edges[id].addrs["mqtt"], d)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, b := range batches[d] {
					payload, err := json.Marshal(b)
					if err != nil {
						errs <- err
						return
					}
					tok := c.Publish(iotkv.BatchTopic(d), 1, false, payload)
					if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
						errs <- fmt.Errorf("%s batch %d: no PUBACK within 30s: %v", d, b.Seq, tok.Error())
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	written := time.Now()
	t.Logf("10,000 keys published and acknowledged in %v", written.Sub(start).Round(time.Millisecond))

	// Every PUBACK means applied and durable: REST must show exactly what
	// was written now (this also keeps the comparison below from passing
	// on two empty states).
	want := map[string]kvState{}
	for _, id := range edgeIDs {
		want[id] = restState(t, hc, edges[id].addrs["https"], "admin")
		if d := diffStates(model[id], want[id]); d != "" {
			t.Fatalf("edge %s over REST differs from what its devices wrote and had acknowledged: %s", id, d)
		}
	}

	deadline := written.Add(snapshotInterval + margin)
	for _, id := range edgeIDs {
		path := filepath.Join(backups, id, "latest.json")
		var last string
		for {
			got, seq, err := readLatest(path, id)
			if err == nil {
				if last = diffStates(want[id], got); last == "" {
					t.Logf("%s: latest.json (seq %d, %d keys) equals the edge's state %v after the last PUBACK",
						id, seq, got.keys(), time.Since(written).Round(time.Millisecond))
					break
				}
				last = fmt.Sprintf("latest.json (seq %d) differs from the edge's state over REST: %s", seq, last)
			} else {
				last = err.Error()
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v after the last PUBACK (--snapshot-interval %v + %v): %s",
					id, time.Since(written).Round(time.Millisecond), snapshotInterval, margin, last)
			}
			time.Sleep(100 * time.Millisecond) // polling a file: nothing to wait on
		}
	}
	// The edges' state did not move meanwhile (nothing else writes).
	for _, id := range edgeIDs {
		if d := diffStates(want[id], restState(t, hc, edges[id].addrs["https"], "admin")); d != "" {
			t.Errorf("edge %s changed during the test: %s", id, d)
		}
	}
}

// edgeCerts issues an edge certificate for each id. The edges of these
// tests log in nowhere, so the certificate is all they need (an account
// costs a bcrypt hash, slow under -race).
func edgeCerts(t *testing.T, p *testenv.PKI, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := certs.Issue(p.Dir, certs.Request{Name: id, Role: certs.RoleEdge}); err != nil {
			t.Fatal(err)
		}
	}
}

// masterIdentity adds the master identity name to p and returns the path
// of a file holding its password, for --password-file.
func masterIdentity(t *testing.T, p *testenv.PKI, name string) string {
	t.Helper()
	p.Identity(t, name, iotkv.RoleMaster)
	pw := filepath.Join(t.TempDir(), name+".pw")
	if err := os.WriteFile(pw, []byte(testenv.Password(name)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return pw
}
