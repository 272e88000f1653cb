package edge_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// Under the race detector one bcrypt hash at cost 10 takes ~0.75 s, so the
// functional tests of this package share one PKI and one edge, made here;
// each test uses its own device identities, so their keys and seqs never
// meet. (The security tests start their own edges.)
var shared *edgeRig

// rigDevices are the device identities of the shared rig, one or two per
// test.
var rigDevices = []string{"e2e", "dup", "bad", "ref-a", "ref-b", "logs"}

func TestMain(m *testing.M) {
	os.Exit(runWithRig(m))
}

func runWithRig(m *testing.M) int {
	root, err := os.MkdirTemp("", "iotkv-edge-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(root)
	var logs testenv.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := startRig(root, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the shared edge:", err)
		return 1
	}
	r.logs = &logs
	shared = r
	code := m.Run()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.edge.Close(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "close the shared edge:", err)
		code = 1
	}
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- shared edge log:\n%s", logs.String())
	}
	return code
}

// startRig makes the PKI and accounts (hashing in parallel) and opens the
// edge on loopback port 0 as testenv.StartEdge does.
func startRig(root string, log *slog.Logger) (*edgeRig, error) {
	p := &testenv.PKI{Dir: filepath.Join(root, "certs"), Accounts: filepath.Join(root, "accounts.json")}
	if err := certs.Init(p.Dir, false); err != nil {
		return nil, err
	}
	type ident struct {
		name string
		role iotkv.Role
		pw   string
	}
	ids := []ident{{"edge1", iotkv.RoleEdge, testenv.Password("edge1")}, {"admin", iotkv.RoleAdmin, rigAdminPassword}}
	for _, d := range rigDevices {
		ids = append(ids, ident{d, iotkv.RoleDevice, testenv.Password(d)})
	}
	f := &accounts.File{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, id := range ids {
		certRole := map[iotkv.Role]string{iotkv.RoleEdge: certs.RoleEdge, iotkv.RoleDevice: certs.RoleDevice, iotkv.RoleAdmin: certs.RoleClient}[id.role]
		if err := certs.Issue(p.Dir, certs.Request{Name: id.name, Role: certRole}); err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := accounts.HashPassword(id.pw, accounts.MinCost)
			mu.Lock()
			defer mu.Unlock()
			errs = append(errs, err)
			f.Accounts = append(f.Accounts, accounts.Account{Name: id.name, Role: id.role, Hash: h})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	if err := f.Save(p.Accounts); err != nil {
		return nil, err
	}
	e, err := edge.Open(edge.Options{
		ID: "edge1", DataDir: filepath.Join(root, "data"), TLSFiles: p.Paths("edge1"), Accounts: p.Accounts,
		MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", AccountsPoll: 100 * time.Millisecond, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	tc, err := certs.ClientConfig(p.Paths("admin"))
	if err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	return &edgeRig{pki: p, edge: e, client: client}, nil
}
