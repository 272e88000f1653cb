package rest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/rest"
)

// guardKV is the store behind the fuzzed handler. It is not a stand-in for
// the edge's behaviour but a tripwire: every call that reaches it must
// carry a valid device and key and come from a caller allowed to do it.
// Anything else means the handler let a request through that it should
// have refused.
type guardKV struct {
	t      *testing.T
	limits iotkv.Limits
	mu     sync.Mutex
	data   map[[2]string]json.RawMessage
}

func (g *guardKV) check(ctx context.Context, device, key string, write, hasKey bool) {
	g.t.Helper()
	p, ok := rest.PrincipalFrom(ctx)
	if !ok {
		g.t.Fatalf("store reached without a principal (device %q key %q)", device, key)
	}
	if iotkv.ValidateName(device) != nil {
		g.t.Fatalf("store reached with invalid device %q", device)
	}
	if hasKey && g.limits.ValidateKey(key) != nil {
		g.t.Fatalf("store reached with invalid key %q", key)
	}
	allowed := p.Role.CanRead(p.Name, device)
	if write {
		allowed = p.Role.CanWrite(p.Name, device)
	}
	if !allowed {
		g.t.Fatalf("%s (%s) reached the store for device %q (write %v)", p.Name, p.Role, device, write)
	}
}

func (g *guardKV) Get(ctx context.Context, device, key string) (iotkv.Record, error) {
	g.check(ctx, device, key, false, true)
	g.mu.Lock()
	defer g.mu.Unlock()
	v, ok := g.data[[2]string{device, key}]
	if !ok {
		return iotkv.Record{}, iotkv.ErrNotFound
	}
	return iotkv.Record{Device: device, Key: key, Value: v}, nil
}

func (g *guardKV) List(ctx context.Context, device, prefix, after string, limit int) ([]iotkv.Record, string, error) {
	g.check(ctx, device, "", false, false)
	if limit < 1 || limit > 1000 {
		g.t.Fatalf("store reached with limit %d", limit)
	}
	return nil, "", nil
}

func (g *guardKV) Put(ctx context.Context, device, key string, value json.RawMessage, _ int64) (iotkv.Record, error) {
	g.check(ctx, device, key, true, true)
	if err := g.limits.ValidateValue(value); err != nil {
		g.t.Fatalf("store reached with invalid value %q: %v", value, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.data[[2]string{device, key}] = value
	return iotkv.Record{Device: device, Key: key, Value: value}, nil
}

func (g *guardKV) Delete(ctx context.Context, device, key string) error {
	g.check(ctx, device, key, true, true)
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.data, [2]string{device, key})
	return nil
}

func (g *guardKV) Devices(ctx context.Context) ([]rest.DeviceInfo, error) {
	return []rest.DeviceInfo{{Device: "dev-1"}, {Device: "dev-2"}}, nil
}

var fuzzUsers = []struct {
	name string
	role iotkv.Role
}{{"dev-1", iotkv.RoleDevice}, {"reader", iotkv.RoleReader}, {"writer", iotkv.RoleWriter}, {"admin", iotkv.RoleAdmin}, {"master", iotkv.RoleMaster}, {"edge-1", iotkv.RoleEdge}}

// FuzzEdgeHandler drives the real edge router, auth middleware and
// handlers with arbitrary methods, paths, queries and bodies from every
// role. Nothing may panic or answer 500, error answers under /v1 are the
// JSON error shape, and no request the caller may not make reaches the
// store (guardKV).
func FuzzEdgeHandler(f *testing.F) {
	limits := iotkv.Limits{MaxKeyBytes: 32, MaxValueBytes: 256}.WithDefaults()
	dir := f.TempDir()
	path := filepath.Join(dir, "accounts.json")
	// Cost 4 (bcrypt's minimum, below what the CLI allows) keeps the
	// fuzzer on the handler instead of in bcrypt.
	af := &accounts.File{}
	for _, u := range fuzzUsers {
		h, err := bcrypt.GenerateFromPassword([]byte(u.name+"-pw"), bcrypt.MinCost)
		if err != nil {
			f.Fatal(err)
		}
		af.Accounts = append(af.Accounts, accounts.Account{Name: u.name, Role: u.role, Hash: string(h)})
	}
	if err := af.Save(path); err != nil {
		f.Fatal(err)
	}
	store, err := accounts.Open(accounts.Options{Path: path})
	if err != nil {
		f.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	auth, err := rest.NewAuthenticator(store, nil, reg)
	if err != nil {
		f.Fatal(err)
	}
	metrics, err := rest.NewMetrics(reg)
	if err != nil {
		f.Fatal(err)
	}
	kv := &guardKV{limits: limits, data: map[[2]string]json.RawMessage{}}
	h := rest.NewEdgeHandler(rest.EdgeOptions{KV: kv, Auth: auth, Metrics: metrics, Gatherer: reg, Limits: limits})

	seeds := []struct {
		user   uint8
		method string
		target string
		body   string
	}{
		{0, "GET", "/v1/kv/dev-1/temp", ""},
		{0, "PUT", "/v1/kv/dev-1/a/b/c", `{"x":1}`},
		{0, "PUT", "/v1/kv/dev-2/a", `1`},
		{0, "DELETE", "/v1/kv/dev-1/a", ""},
		{1, "GET", "/v1/kv/dev-2?prefix=a&limit=10&after=b", ""},
		{1, "GET", "/v1/kv/dev-2?limit=-1", ""},
		{2, "PUT", "/v1/kv/dev-2/%2Fslash", `"v"`},
		{2, "PUT", "/v1/kv/dev-2/a%00b", `"v"`},
		{2, "PUT", "/v1/kv/../a", `"v"`},
		{2, "PUT", "/v1/kv/dev-2/..%2F..%2Fx", `"v"`},
		{2, "PUT", "/v1/kv/dev-2//x", `"v"`},
		{3, "GET", "/metrics", ""},
		{3, "GET", "/v1/devices", ""},
		{4, "GET", "/v1/kv/dev-1/a", ""},
		{5, "PUT", "/v1/kv/dev-1/a", `1`},
		{0, "GET", "/put?key=k&value=v", ""},
		{0, "GET", "/get?key=%2Fk", ""},
		{4, "GET", "/delete?key=k", ""},
		{6, "GET", "/v1/kv/dev-1/a", ""},
		{7, "GET", "/healthz", ""},
		{0, "POST", "/v1/kv/dev-1/a", `1`},
		{2, "PUT", "/v1/kv/dev-2/k", `[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`},
	}
	for _, s := range seeds {
		f.Add(s.user, s.method, s.target, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, user uint8, method, target string, body []byte) {
		kv.t = t
		req, err := http.NewRequest(method, "https://edge.test"+target, bytes.NewReader(body))
		if err != nil {
			return
		}
		req.RemoteAddr = "192.0.2.1:1234"
		// Users beyond the table send no credentials (6) or a wrong
		// password (7); failures are throttled, so 429 is expected there.
		switch i := int(user) % (len(fuzzUsers) + 2); {
		case i < len(fuzzUsers):
			req.SetBasicAuth(fuzzUsers[i].name, fuzzUsers[i].name+"-pw")
		case i == len(fuzzUsers)+1:
			// From its own address, so that its throttling does not
			// turn every other request into a 429.
			req.SetBasicAuth("dev-1", "wrong")
			req.RemoteAddr = "192.0.2.66:1234"
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		switch w.Code {
		case 200, 204, 400, 401, 403, 404, 405, 413, 429:
		default:
			t.Fatalf("%s %q: status %d: %s", method, target, w.Code, w.Body)
		}
		if w.Code >= 400 && w.Header().Get("Content-Type") == "application/json" {
			var e struct {
				Error iotkv.Error `json:"error"`
			}
			if json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Error.Code == "" {
				t.Fatalf("%s %q: status %d with a body that is not the error shape: %s", method, target, w.Code, w.Body)
			}
		}
	})
}
