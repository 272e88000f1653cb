// Package demorun is `iotkv demo`: a PKI and accounts, a master, two edges
// and simulated devices in one process on loopback, commands a person can
// paste while it runs, a live status line, and a verified summary.
package demorun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/device/sim"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/master"
)

// Options configure a demo run.
type Options struct {
	Dir      string        // where the PKI, accounts and data live; default "./demo"
	Duration time.Duration // 0: until ctx ends (Ctrl-C)
	Devices  int           // simulated devices, split over the two edges; default 10
	Rate     float64       // ops per second per device; default 5
	Out      io.Writer     // the commands, status lines and summary
	TTY      bool          // rewrite one status line in place instead of printing lines
	Logger   *slog.Logger
	// Ready, when set, is called once everything is up, with the commands
	// printed for a person to paste (tests run them).
	Ready func(commands []string)
}

// Summary is what the demo reports at the end.
type Summary struct {
	Written, Acked     uint64
	Lost, Mismatched   int
	BackupSeq, EdgeSeq map[string]uint64
}

const edgeCount = 2

// Run runs the demo until Duration passes or ctx ends, then stops writing,
// flushes, verifies every key over REST, waits for the master to catch up,
// prints the summary and stops everything.
func Run(ctx context.Context, o Options) (Summary, error) {
	if o.Dir == "" {
		o.Dir = "demo"
	}
	if o.Devices <= 0 {
		o.Devices = 10
	}
	if o.Rate <= 0 {
		o.Rate = 5
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return Summary{}, fmt.Errorf("demo dir: %w", err)
	}
	certsDir, accountsFile := filepath.Join(dir, "certs"), filepath.Join(dir, "accounts.json")
	ids := []*identity{
		{name: "master", role: iotkv.RoleMaster, certRole: certs.RoleMaster},
		{name: "admin", role: iotkv.RoleAdmin, certRole: certs.RoleClient},
		{name: "demo-dev", role: iotkv.RoleDevice, certRole: certs.RoleDevice},
	}
	edgeIDs := []string{"e1", "e2"}
	for _, e := range edgeIDs {
		ids = append(ids, &identity{name: e, role: iotkv.RoleEdge, certRole: certs.RoleEdge})
	}
	perEdge := splitDevices(o.Devices, edgeCount)
	for i, e := range edgeIDs {
		for n := 1; n <= perEdge[i]; n++ {
			ids = append(ids, &identity{name: fmt.Sprintf("%s-sim-%04d", e, n), role: iotkv.RoleDevice, certRole: certs.RoleDevice})
		}
	}
	fmt.Fprintf(o.Out, "iotkv demo: PKI and accounts in %s\n", dir)
	if err := ensureIdentities(certsDir, accountsFile, ids); err != nil {
		return Summary{}, fmt.Errorf("demo identities: %w", err)
	}
	pw := map[string]string{}
	for _, id := range ids {
		pw[id.name] = id.password
	}

	edges := map[string]*edge.Edge{}
	defer func() {
		for _, e := range edges {
			_ = e.Close(context.Background())
		}
	}()
	var targets []master.Edge
	for _, id := range edgeIDs {
		e, err := edge.Open(edge.Options{
			ID: id, DataDir: filepath.Join(dir, "data", id), TLSFiles: certs.PathsFor(certsDir, id), Accounts: accountsFile,
			MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Logger: o.Logger.With("edge", id),
		})
		if err != nil {
			return Summary{}, fmt.Errorf("demo edge %s: %w", id, err)
		}
		edges[id] = e
		targets = append(targets, master.Edge{ID: id, Addr: e.MQTTAddr()})
	}
	m, err := master.Open(master.Options{
		DataDir: filepath.Join(dir, "backups"), Password: pw["master"], TLSFiles: certs.PathsFor(certsDir, "master"),
		Accounts: accountsFile, Edges: targets, HTTPAddr: "127.0.0.1:0", SnapshotInterval: 2 * time.Second,
		Logger: o.Logger.With("component", "master"),
	})
	if err != nil {
		return Summary{}, fmt.Errorf("demo master: %w", err)
	}
	defer m.Close(context.Background())

	cmds := pasteCommands(certsDir, edges, m.HTTPAddr())
	fmt.Fprintf(o.Out, "\nmaster https://%s, edges e1 mqtts://%s https://%s, e2 mqtts://%s https://%s\n",
		m.HTTPAddr(), edges["e1"].MQTTAddr(), edges["e1"].HTTPAddr(), edges["e2"].MQTTAddr(), edges["e2"].HTTPAddr())
	printConsole(o.Out, certsDir, pw["admin"], edgeIDs, edges, m.HTTPAddr())
	fmt.Fprintf(o.Out, "\nCommands to paste while it runs:\n\n")
	for _, c := range cmds {
		fmt.Fprintf(o.Out, "  %s\n\n", c)
	}
	if o.Duration > 0 {
		fmt.Fprintf(o.Out, "%d devices write %.0f ops/s each for %s (Ctrl-C stops early).\n\n", o.Devices, o.Rate, o.Duration)
	} else {
		fmt.Fprintf(o.Out, "%d devices write %.0f ops/s each until Ctrl-C.\n\n", o.Devices, o.Rate)
	}

	duration := o.Duration
	if duration <= 0 {
		duration = 100 * 365 * 24 * time.Hour
	}
	status := newStatusLine(o.Out, o.TTY, m, edgeIDs)
	results := make([]sim.Result, edgeCount)
	errs := make([]error, edgeCount)
	var wg sync.WaitGroup
	readyOnce := sync.OnceFunc(func() {
		if o.Ready != nil {
			go o.Ready(cmds)
		}
	})
	for i, id := range edgeIDs {
		if perEdge[i] == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = sim.Run(context.Background(), sim.Options{
				Devices: perEdge[i], Rate: o.Rate, Duration: duration, Prefix: id + "-sim-",
				CertsDir: certsDir, Edge: edges[id].MQTTAddr(), REST: "https://" + edges[id].HTTPAddr(),
				QueueDir: filepath.Join(dir, "queues"), Keys: 50, Verify: true, Stop: ctx.Done(),
				Progress: func(p sim.Progress) { status.update(id, p); readyOnce() }, Logger: o.Logger,
			})
		}()
	}
	stopStatus := status.run()
	wg.Wait()
	stopStatus()
	if err := errors.Join(errs...); err != nil {
		return Summary{}, err
	}
	fmt.Fprintf(o.Out, "\nstopped writing; flushed and verified every key over REST; waiting for the master to catch up\n")
	sum := Summary{BackupSeq: map[string]uint64{}, EdgeSeq: map[string]uint64{}}
	for _, r := range results {
		sum.Written += r.Written
		sum.Acked += r.Acked
		sum.Lost += r.Lost
		sum.Mismatched += r.Mismatched
	}
	waitBackups(m, edges, 15*time.Second)
	for _, st := range m.Status() {
		sum.BackupSeq[st.Edge], sum.EdgeSeq[st.Edge] = st.Seq, edges[st.Edge].ChangeSeq()
	}
	printSummary(o.Out, sum, edgeIDs)
	if sum.Lost+sum.Mismatched > 0 {
		return sum, fmt.Errorf("demo: %d keys lost and %d mismatched", sum.Lost, sum.Mismatched)
	}
	return sum, nil
}

func splitDevices(n, parts int) []int {
	out := make([]int, parts)
	for i := range n {
		out[i%parts]++
	}
	return out
}

// waitBackups waits until the master holds every change each edge has
// logged. It reads the edges' own change seq: the one the master last
// heard in a hello may be a second old.
func waitBackups(m *master.Master, edges map[string]*edge.Edge, within time.Duration) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		caught := true
		for _, st := range m.Status() {
			e := edges[st.Edge]
			if !st.Connected || e == nil || st.Seq < e.ChangeSeq() || st.Pending > 0 {
				caught = false
			}
		}
		if caught {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func printSummary(w io.Writer, s Summary, edgeIDs []string) {
	fmt.Fprintf(w, "\nsummary: written=%d acked=%d lost=%d mismatched=%d\n", s.Written, s.Acked, s.Lost, s.Mismatched)
	for _, id := range edgeIDs {
		fmt.Fprintf(w, "  backup %s: master seq %d of edge seq %d\n", id, s.BackupSeq[id], s.EdgeSeq[id])
	}
}

// printConsole prints the web console's addresses and a login that works
// (the demo's admin; its password is also in certs/admin.password).
func printConsole(w io.Writer, certsDir, adminPassword string, edgeIDs []string, edges map[string]*edge.Edge, masterAddr string) {
	fmt.Fprintf(w, "\nWeb console (log in as admin, password %s):\n", adminPassword)
	for _, id := range edgeIDs {
		fmt.Fprintf(w, "  edge %s:  https://%s/ui/\n", id, edges[id].HTTPAddr())
	}
	fmt.Fprintf(w, "  master:   https://%s/ui/\n", masterAddr)
	fmt.Fprintf(w, "  (the certificates come from the demo's own CA, %s: the browser warns until you trust it)\n", filepath.Join(certsDir, "ca.crt"))
}

// pasteCommands are the commands printed for a person, runnable as they
// are in a shell on this machine while the demo runs.
func pasteCommands(certsDir string, edges map[string]*edge.Edge, masterAddr string) []string {
	ca := filepath.Join(certsDir, "ca.crt")
	pwOf := func(name string) string { return fmt.Sprintf(`"$(cat %s)"`, passwordFile(certsDir, name)) }
	curl := func(user, url string) string {
		return fmt.Sprintf("curl -s --cacert %s -u %s:%s %s", ca, user, pwOf(user), url)
	}
	mq := func(tool, addr, user string) string {
		host, port, _ := strings.Cut(addr, ":")
		p := certs.PathsFor(certsDir, user)
		return fmt.Sprintf("%s -h %s -p %s --cafile %s --cert %s --key %s -u %s -P %s", tool, host, port, ca, p.Cert, p.Key, user, pwOf(user))
	}
	ids := make([]string, 0, len(edges))
	for id := range edges {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var cmds []string
	for _, id := range ids {
		cmds = append(cmds, curl("admin", fmt.Sprintf("'https://%s/v1/devices'", edges[id].HTTPAddr())))
	}
	e1 := edges["e1"]
	cmds = append(cmds,
		curl("admin", fmt.Sprintf("'https://%s/v1/kv/e1-sim-0001?limit=3'", e1.HTTPAddr())),
		curl("admin", fmt.Sprintf("'https://%s/v1/backups'", masterAddr)),
		mq("mosquitto_sub", e1.MQTTAddr(), "e1-sim-0001")+" -t iotkv/v1/devices/e1-sim-0001/status/ack -C 1 -W 10 -v",
		mq("mosquitto_pub", e1.MQTTAddr(), "demo-dev")+` -q 1 -t iotkv/v1/devices/demo-dev/batch -m "{\"seq\":$(date +%s%3N),\"ops\":[{\"op\":\"put\",\"key\":\"hello\",\"value\":\"world\"}]}"`,
		curl("demo-dev", fmt.Sprintf("'https://%s/v1/kv/demo-dev/hello'", e1.HTTPAddr())),
	)
	return cmds
}
