//go:build linux

package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/testenv"
)

// Bins are the binaries the harness runs: iotkv and cmd/chaos-writer.
type Bins struct{ IOTKV, Writer string }

// Names of the identities every environment has.
const (
	edgeID  = "e1"
	auditor = "auditor" // role admin: reads every namespace, metrics, backups
)

// env is one scenario's world: a PKI and accounts, device identities, the
// ledger of promises, and the processes it started.
type env struct {
	t       testing.TB
	bins    Bins
	pki     *testenv.PKI
	dir     string
	devices []string
	ledger  *ledger
	client  *http.Client // the auditor's HTTPS client
	runs    map[string]int64
	// Per device: the first op number of its latest writer run, and
	// whether a run of it was killed (its last ops may be durable in the
	// queue without a printed promise).
	lastBase map[string]int64
	killed   map[string]bool
}

func newEnv(t testing.TB, bins Bins, devices int) *env {
	t.Helper()
	e := &env{t: t, bins: bins, pki: testenv.NewPKI(t), dir: t.TempDir(), ledger: newLedger(), runs: map[string]int64{},
		lastBase: map[string]int64{}, killed: map[string]bool{}}
	ids := map[string]iotkv.Role{edgeID: iotkv.RoleEdge, "master": iotkv.RoleMaster, auditor: iotkv.RoleAdmin, "probe": iotkv.RoleDevice}
	for i := range devices {
		name := fmt.Sprintf("dev-%02d", i+1)
		ids[name] = iotkv.RoleDevice
		e.devices = append(e.devices, name)
	}
	e.identities(ids)
	e.client = e.pki.HTTPClient(t, auditor)
	e.client.Timeout = 10 * time.Second
	t.Cleanup(e.client.CloseIdleConnections)
	return e
}

// identities issues certificates and accounts (bcrypt at its minimum
// cost: cost 10 takes seconds per hash under -race) and writes
// NAME.password next to each certificate, where cmd/chaos-writer reads it.
func (e *env) identities(ids map[string]iotkv.Role) {
	t := e.t
	f, err := accounts.Load(e.pki.Accounts)
	if err != nil {
		t.Fatal(err)
	}
	for name, role := range ids {
		certRole := certs.RoleClient
		switch role {
		case iotkv.RoleEdge:
			certRole = certs.RoleEdge
		case iotkv.RoleMaster:
			certRole = certs.RoleMaster
		case iotkv.RoleDevice:
			certRole = certs.RoleDevice
		}
		if err := certs.Issue(e.pki.Dir, certs.Request{Name: name, Role: certRole}); err != nil {
			t.Fatal(err)
		}
		h, err := bcrypt.GenerateFromPassword([]byte(testenv.Password(name)), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		f.Accounts = append(f.Accounts, accounts.Account{Name: name, Role: role, Hash: string(h)})
		if err := os.WriteFile(e.passwordFile(name), []byte(testenv.Password(name)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Save(e.pki.Accounts); err != nil {
		t.Fatal(err)
	}
}

func (e *env) passwordFile(name string) string { return filepath.Join(e.pki.Dir, name+".password") }

// edgeProc is `iotkv edge` as a child process. Its ports are chosen by the
// first start and kept across restarts, so clients reconnect to the same
// address.
type edgeProc struct {
	e           *env
	data        string
	mqtt, https string
	p           *proc
	starts      int
}

func (e *env) startEdge() *edgeProc {
	ep := &edgeProc{e: e, data: filepath.Join(e.dir, "edge-data"), mqtt: "127.0.0.1:0", https: "127.0.0.1:0"}
	ep.start("")
	return ep
}

// start runs the edge (restoring from the master URL first when given)
// and waits until /readyz answers 200.
func (ep *edgeProc) start(restoreFrom string) {
	t := ep.e.t
	t.Helper()
	ep.starts++
	addrFile := filepath.Join(ep.e.dir, fmt.Sprintf("edge-addr-%d.json", ep.starts))
	args := []string{"edge", "--id", edgeID, "--data", ep.data, "--certs", ep.e.pki.Dir, "--accounts", ep.e.pki.Accounts,
		"--mqtt-addr", ep.mqtt, "--http-addr", ep.https, "--addr-file", addrFile, "--max-keepalive", "10"}
	if restoreFrom != "" {
		args = append(args, "--restore-from", restoreFrom, "--password-file", ep.e.passwordFile(edgeID))
	}
	ep.p = startProc(t, fmt.Sprintf("edge#%d", ep.starts), nil, ep.e.bins.IOTKV, args...)
	addrs := waitAddrFile(t, ep.p, addrFile, 60*time.Second)
	ep.mqtt, ep.https = addrs["mqtt"], addrs["https"]
	ep.e.waitReady(ep.p, "https://"+ep.https, 60*time.Second)
}

func (ep *edgeProc) url() string { return "https://" + ep.https }

// waitAddrFile waits for a server's --addr-file.
func waitAddrFile(t testing.TB, p *proc, path string, within time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if data, err := os.ReadFile(path); err == nil {
			var addrs map[string]string
			if json.Unmarshal(data, &addrs) == nil {
				return addrs
			}
		}
		if !p.running() {
			t.Fatalf("%s exited before it was listening: %v", p.name, p.err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s wrote no address file within %v", p.name, within)
		}
		time.Sleep(10 * time.Millisecond) // polling: the child tells us nothing else
	}
}

// waitReady waits until base/readyz answers 200.
func (e *env) waitReady(p *proc, base string, within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if p != nil && !p.running() {
			e.t.Fatalf("%s exited before it was ready: %v", p.name, p.err)
		}
		if code, _ := e.get(base+"/readyz", nil); code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s not ready within %v", base, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get GETs url as the auditor and decodes a JSON answer into v (when not
// nil and the status is 200).
func (e *env) get(url string, v any) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.SetBasicAuth(auditor, testenv.Password(auditor))
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s: %w", url, err)
		}
	}
	return resp.StatusCode, nil
}

// masterProc is `iotkv master` as a child process, ports kept across
// restarts like the edge's.
type masterProc struct {
	e      *env
	data   string
	edges  string
	https  string
	p      *proc
	starts int
}

func (e *env) startMaster(edgeAddr string) *masterProc {
	m := &masterProc{e: e, data: filepath.Join(e.dir, "master-data"), edges: edgeID + "=" + edgeAddr, https: "127.0.0.1:0"}
	m.start()
	return m
}

func (m *masterProc) start() {
	t := m.e.t
	t.Helper()
	m.starts++
	addrFile := filepath.Join(m.e.dir, fmt.Sprintf("master-addr-%d.json", m.starts))
	m.p = startProc(t, fmt.Sprintf("master#%d", m.starts), nil, m.e.bins.IOTKV, "master",
		"--data", m.data, "--certs", m.e.pki.Dir, "--accounts", m.e.pki.Accounts, "--password-file", m.e.passwordFile("master"),
		"--edges", m.edges, "--http-addr", m.https, "--snapshot-interval", "250ms", "--addr-file", addrFile)
	m.https = waitAddrFile(t, m.p, addrFile, 60*time.Second)["https"]
	m.e.waitReady(m.p, m.url(), 60*time.Second)
}

func (m *masterProc) url() string { return "https://" + m.https }

func (m *masterProc) latestPath() string { return filepath.Join(m.data, edgeID, "latest.json") }

// writerOpts shape one writer process.
type writerOpts struct {
	rate  float64  // ops per second per device
	keys  int      // distinct keys per device; 0: a new key per op
	skews []string // device clock offsets
}

// writer is a cmd/chaos-writer process driving some devices.
type writer struct {
	e       *env
	devices []string
	edge    string
	o       writerOpts
	p       *proc
}

// startWriter starts devs on the edge at edgeAddr. Every run of a device
// numbers its ops from a new base, so later ops carry larger numbers.
func (e *env) startWriter(edgeAddr string, devs []string, o writerOpts) *writer {
	w := &writer{e: e, devices: devs, edge: edgeAddr, o: o}
	w.start(false)
	return w
}

func (w *writer) start(flushOnly bool) {
	e := w.e
	var base int64
	for _, d := range w.devices {
		e.runs[d]++
		base = max(base, e.runs[d])
	}
	for _, d := range w.devices {
		e.lastBase[d] = base * 10_000_000
	}
	args := []string{"--edge", w.edge, "--certs", e.pki.Dir, "--queue", filepath.Join(e.dir, "queues"),
		"--devices", strings.Join(w.devices, ","), "--base", fmt.Sprint(base * 10_000_000),
		"--rate", fmt.Sprint(w.o.rate), "--keys", fmt.Sprint(w.o.keys), "--log-level", "info"}
	if len(w.o.skews) > 0 {
		args = append(args, "--skew", strings.Join(w.o.skews, ","))
	}
	if flushOnly {
		args = append(args, "--flush-only")
	}
	w.p = startProc(e.t, "writer "+strings.Join(w.devices, ","), e.ledger.line, e.bins.Writer, args...)
}

// kill is kill -9 of the writer. Its devices' last ops may now be
// durable in their queues, and so reach the edge, without a promise
// printed for them.
func (w *writer) kill() {
	for _, d := range w.devices {
		w.e.killed[d] = true
	}
	w.p.kill()
}

// finish stops the writer cleanly: it flushes every queued op to the edge
// and must exit 0.
func (w *writer) finish() error {
	if err := w.p.stop(90 * time.Second); err != nil {
		return fmt.Errorf("writer %v: %w\n%s", w.devices, err, w.p.tail)
	}
	return nil
}

// freeAddr reserves nothing; it returns a loopback address that was free
// a moment ago (for in-process servers restarted on the same port).
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
