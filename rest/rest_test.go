package rest_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/rest"
)

// memKV is a KV in memory; the real store is tested through the edge.
type memKV struct{ recs map[string]iotkv.Record }

func (m *memKV) Get(_ context.Context, device, key string) (iotkv.Record, error) {
	if r, ok := m.recs[device+"\x00"+key]; ok {
		return r, nil
	}
	return iotkv.Record{}, iotkv.ErrNotFound
}

func (m *memKV) List(context.Context, string, string, string, int) ([]iotkv.Record, string, error) {
	return nil, "", nil
}

func (m *memKV) Put(_ context.Context, device, key string, v json.RawMessage, _ int64) (iotkv.Record, error) {
	r := iotkv.Record{Device: device, Key: key, Value: v, UpdatedAt: 1}
	m.recs[device+"\x00"+key] = r
	return r, nil
}

func (m *memKV) Delete(_ context.Context, device, key string) error {
	delete(m.recs, device+"\x00"+key)
	return nil
}

func (m *memKV) Devices(context.Context) ([]rest.DeviceInfo, error) { return nil, nil }

// testServer serves the edge handler over plain HTTP (TLS is the server's
// business, tested through the edge) with accounts dev1 (device) and admin.
func testServer(t *testing.T, ready func() error) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "accounts.json")
	f := &accounts.File{Version: 1}
	for _, a := range []struct {
		name string
		role iotkv.Role
	}{{"dev1", iotkv.RoleDevice}, {"admin", iotkv.RoleAdmin}} {
		// Cost 4 written directly: the handler, not bcrypt, is under test.
		h, err := bcrypt.GenerateFromPassword([]byte(a.name+"-pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		f.Accounts = append(f.Accounts, accounts.Account{Name: a.name, Role: a.role, Hash: string(h)})
	}
	data, _ := json.Marshal(f)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := accounts.Open(accounts.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	auth, err := rest.NewAuthenticator(store, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := rest.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rest.NewEdgeHandler(rest.EdgeOptions{
		KV: &memKV{recs: map[string]iotkv.Record{}}, Auth: auth, Metrics: m, Gatherer: reg, Ready: ready,
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func call(t *testing.T, user, pw, url string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if user != "" {
		req.SetBasicAuth(user, pw)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// Repeated failed logins get 429 with a Retry-After that grows; the right
// password from the same address must then wait too, and the metrics count
// the failures.
func TestRepeatedFailedLoginsGet429WithRetryAfter(t *testing.T) {
	url := testServer(t, nil)
	var statuses []int
	for range 5 {
		resp, body := call(t, "dev1", "wrong", url+"/v1/kv/dev1/k")
		statuses = append(statuses, resp.StatusCode)
		if resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") != `Basic realm="iotkv"` {
			t.Errorf("401 without the Basic realm: %q %s", resp.Header.Get("WWW-Authenticate"), body)
		}
	}
	for i, s := range statuses {
		if s != http.StatusUnauthorized {
			t.Fatalf("failure %d within the free ones: %d, want 401 (all: %v)", i+1, s, statuses)
		}
	}
	resp, body := call(t, "dev1", "wrong", url+"/v1/kv/dev1/k")
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("the 6th failure: %d %s, want 429", resp.StatusCode, body)
	}
	var e struct {
		Error iotkv.Error `json:"error"`
	}
	if json.Unmarshal([]byte(body), &e) != nil || e.Error.Code != iotkv.CodeRateLimited {
		t.Errorf("429 body %s, want a rate_limited JSON error", body)
	}
	first, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || first < 1 {
		t.Fatalf("Retry-After %q, want whole seconds >= 1", resp.Header.Get("Retry-After"))
	}
	resp, _ = call(t, "dev1", "dev1-pw", url+"/v1/kv/dev1/k")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("the right password during the delay: %d, want 429 with Retry-After", resp.StatusCode)
	}
	// Another account from the same address is not blocked by dev1's
	// failures (the address allows more), and sees them counted.
	if resp, body := call(t, "admin", "admin-pw", url+"/metrics"); resp.StatusCode != http.StatusOK || !strings.Contains(body, `iotkv_rest_auth_failures_total{reason="bad_password"} 6`) {
		t.Errorf("admin /metrics: %d; want the 6 failures counted in:\n%s", resp.StatusCode, grep(body, "iotkv_rest_auth_failures_total"))
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestHealthReadinessAndOpenAPINeedNoLogin(t *testing.T) {
	var notReady atomic.Bool
	url := testServer(t, func() error {
		if notReady.Load() {
			return errors.New("the store cannot make writes durable")
		}
		return nil
	})
	if resp, body := call(t, "", "", url+"/healthz"); resp.StatusCode != 200 || !strings.Contains(body, "ok") {
		t.Errorf("/healthz: %d %s", resp.StatusCode, body)
	}
	if resp, _ := call(t, "", "", url+"/readyz"); resp.StatusCode != 200 {
		t.Errorf("/readyz when ready: %d", resp.StatusCode)
	}
	notReady.Store(true)
	if resp, body := call(t, "", "", url+"/readyz"); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, iotkv.CodeUnavailable) {
		t.Errorf("/readyz when not ready: %d %s, want 503", resp.StatusCode, body)
	}
	resp, body := call(t, "", "", url+"/v1/openapi.json")
	var doc struct {
		OpenAPI string                     `json:"openapi"`
		Paths   map[string]json.RawMessage `json:"paths"`
	}
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &doc) != nil || !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("/v1/openapi.json: %d, openapi %q", resp.StatusCode, doc.OpenAPI)
	}
	for _, p := range []string{"/v1/kv/{device}/{key}", "/v1/kv/{device}", "/v1/devices", "/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/get", "/put", "/delete"} {
		if _, ok := doc.Paths[p]; !ok {
			t.Errorf("the OpenAPI document does not describe %s", p)
		}
	}
}

// The OpenAPI document describes every field the JSON answers carry
// (Device, Record), the ttl of a PUT with its bounds, and the quota and
// rate refusals of every write route, JSON and seed API. (The edge's quota
// tests hold the real 403 and 429 answers to this document.)
func TestOpenAPIDocumentsFieldsTTLAndRefusals(t *testing.T) {
	url := testServer(t, nil)
	resp, body := call(t, "", "", url+"/v1/openapi.json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/v1/openapi.json: %d", resp.StatusCode)
	}
	type param struct {
		Name   string `json:"name"`
		In     string `json:"in"`
		Schema struct {
			Type    string `json:"type"`
			Minimum *int64 `json:"minimum"`
			Maximum *int64 `json:"maximum"`
		} `json:"schema"`
	}
	type operation struct {
		Parameters []param                    `json:"parameters"`
		Responses  map[string]json.RawMessage `json:"responses"`
	}
	var doc struct {
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			Schemas map[string]struct {
				Properties map[string]json.RawMessage `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	for schema, v := range map[string]any{"Device": rest.DeviceInfo{}, "Record": iotkv.Record{}} {
		want := jsonFields(reflect.TypeOf(v))
		got := slices.Sorted(maps.Keys(doc.Components.Schemas[schema].Properties))
		if !slices.Equal(got, want) {
			t.Errorf("OpenAPI schema %s has fields %v; the answers carry %v", schema, got, want)
		}
	}
	op := func(path, method string) operation {
		var o operation
		if err := json.Unmarshal(doc.Paths[path][method], &o); err != nil || o.Responses == nil {
			t.Fatalf("OpenAPI %s %s: missing or unreadable (%v)", method, path, err)
		}
		return o
	}
	put := op("/v1/kv/{device}/{key}", "put")
	i := slices.IndexFunc(put.Parameters, func(p param) bool { return p.Name == "ttl" })
	if i < 0 {
		t.Fatal("OpenAPI PUT /v1/kv/{device}/{key} does not document ttl")
	}
	if ttl := put.Parameters[i]; ttl.In != "query" || ttl.Schema.Type != "integer" || ttl.Schema.Minimum == nil || *ttl.Schema.Minimum != iotkv.MinTTL ||
		ttl.Schema.Maximum == nil || *ttl.Schema.Maximum != iotkv.MaxTTL {
		t.Errorf("OpenAPI ttl %+v, want a query integer from %d to %d", ttl, iotkv.MinTTL, iotkv.MaxTTL)
	}
	for _, w := range []struct{ path, method string }{
		{"/v1/kv/{device}/{key}", "put"}, {"/v1/kv/{device}/{key}", "delete"}, {"/put", "get"}, {"/delete", "get"},
	} {
		o := op(w.path, w.method)
		for _, status := range []string{"403", "429"} {
			if _, ok := o.Responses[status]; !ok {
				t.Errorf("OpenAPI %s %s does not document %s", w.method, w.path, status)
			}
		}
	}
}

// jsonFields lists the JSON names of a struct's fields, sorted.
func jsonFields(typ reflect.Type) []string {
	var out []string
	for f := range typ.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "-" && f.IsExported() {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}
