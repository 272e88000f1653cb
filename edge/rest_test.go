package edge_test

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

// do sends a request with Basic auth (user "" sends none) and returns the
// response with its body read.
func (r *edgeRig) do(t *testing.T, user, password, method, path, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+r.edge.HTTPAddr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(data)
}

// Listing pages through a device's keys in order, by prefix, with limit
// and after; next is the key to continue after and "" on the last page.
func TestListPaginatesByPrefixLimitAndAfter(t *testing.T) {
	r := shared
	keys := []string{"a", "room/1", "room/2", "room/3", "room/30", "room0", "z"}
	for _, k := range keys {
		if resp, body := r.do(t, "admin", rigAdminPassword, http.MethodPut, "/v1/kv/list-dev/"+k, `"v-`+k+`"`); resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT list-dev/%s: %d %s", k, resp.StatusCode, body)
		}
	}
	type page struct {
		Items []iotkv.Record `json:"items"`
		Next  string         `json:"next"`
	}
	list := func(query string) page {
		t.Helper()
		resp, body := r.do(t, "admin", rigAdminPassword, http.MethodGet, "/v1/kv/list-dev?"+query, "")
		var p page
		if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &p) != nil {
			t.Fatalf("GET /v1/kv/list-dev?%s: %d %s", query, resp.StatusCode, body)
		}
		return p
	}
	keysOf := func(p page) string {
		var ks []string
		for _, it := range p.Items {
			ks = append(ks, it.Key)
		}
		return strings.Join(ks, ",")
	}
	cases := []struct {
		name, query, keys, next string
	}{
		{"everything fits on one page", "", "a,room/1,room/2,room/3,room/30,room0,z", ""},
		{"a prefix selects a subtree", "prefix=" + url.QueryEscape("room/"), "room/1,room/2,room/3,room/30", ""},
		{"a prefix is a byte prefix, not a path", "prefix=room", "room/1,room/2,room/3,room/30,room0", ""},
		{"a limit cuts the page and names the next key", "limit=2", "a,room/1", "room/1"},
		{"after continues past a key", "limit=2&after=" + url.QueryEscape("room/1"), "room/2,room/3", "room/3"},
		{"after with a prefix", "prefix=" + url.QueryEscape("room/") + "&after=" + url.QueryEscape("room/3"), "room/30", ""},
		{"a limit equal to what is left ends without next", "limit=2&after=room0", "z", ""},
		{"a prefix that matches nothing", "prefix=nothing", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := list(tc.query)
			if got := keysOf(p); got != tc.keys || p.Next != tc.next {
				t.Errorf("keys %q next %q, want %q next %q", got, p.Next, tc.keys, tc.next)
			}
		})
	}
	// Walking every page with limit=3 visits every key once.
	var walked []string
	for after, n := "", 0; n < 10; n++ {
		p := list("limit=3&after=" + url.QueryEscape(after))
		for _, it := range p.Items {
			walked = append(walked, it.Key)
			if string(it.Value) != `"v-`+it.Key+`"` {
				t.Errorf("list-dev/%s has value %s", it.Key, it.Value)
			}
		}
		if p.Next == "" {
			break
		}
		after = p.Next
	}
	if strings.Join(walked, ",") != strings.Join(keys, ",") {
		t.Errorf("pages walked %v, want %v", walked, keys)
	}
}

// Errors are JSON with a code; a missing or wrong login is a 401 that
// names the Basic realm.
func TestRESTErrorsAreJSON(t *testing.T) {
	r := shared
	dup := testenv.Password("dup")
	cases := []struct {
		name, user, pw, method, path, body string
		status                             int
		code                               string
	}{
		{"no credentials", "", "", http.MethodGet, "/v1/kv/dup/k", "", 401, iotkv.CodeUnauthenticated},
		{"an unknown user", "ghost", "pw", http.MethodGet, "/v1/kv/dup/k", "", 401, iotkv.CodeUnauthenticated},
		{"a missing key", "dup", dup, http.MethodGet, "/v1/kv/dup/no-such-key", "", 404, iotkv.CodeNotFound},
		{"another device's key", "dup", dup, http.MethodGet, "/v1/kv/e2e/temp", "", 403, iotkv.CodeNotAuthorized},
		{"a write to another device", "dup", dup, http.MethodPut, "/v1/kv/e2e/temp", "1", 403, iotkv.CodeNotAuthorized},
		{"metrics for a device", "dup", dup, http.MethodGet, "/metrics", "", 403, iotkv.CodeNotAuthorized},
		{"a body that is not JSON", "dup", dup, http.MethodPut, "/v1/kv/dup/k", "not json", 400, iotkv.CodeInvalidValue},
		{"a key with a control character", "dup", dup, http.MethodPut, "/v1/kv/dup/a%01b", "1", 400, iotkv.CodeInvalidKey},
		{"a value over 64 KiB", "dup", dup, http.MethodPut, "/v1/kv/dup/big", `"` + strings.Repeat("x", 70<<10) + `"`, 413, iotkv.CodeTooLarge},
		{"a limit out of range", "dup", dup, http.MethodGet, "/v1/kv/dup?limit=0", "", 400, iotkv.CodeBadRequest},
		{"a bad device name", "admin", rigAdminPassword, http.MethodGet, "/v1/kv/bad%20name/k", "", 400, iotkv.CodeBadRequest},
		{"an unknown route", "dup", dup, http.MethodGet, "/v2/nothing", "", 404, iotkv.CodeNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := r.do(t, tc.user, tc.pw, tc.method, tc.path, tc.body)
			var e struct {
				Error iotkv.Error `json:"error"`
			}
			if resp.StatusCode != tc.status || json.Unmarshal([]byte(body), &e) != nil || e.Error.Code != tc.code || e.Error.Message == "" {
				t.Errorf("%d %s, want %d with code %s", resp.StatusCode, body, tc.status, tc.code)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			if tc.status == 401 && resp.Header.Get("WWW-Authenticate") != `Basic realm="iotkv"` {
				t.Errorf("WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
			}
		})
	}
}

// The seed's own workload through its API: 100 puts, 100 gets, 100
// deletes, each answered in text/plain; the values are JSON strings.
func TestSeedAPIWorkload(t *testing.T) {
	r := shared
	pw := testenv.Password("dup")
	seed := func(path string) (int, string) {
		t.Helper()
		resp, body := r.do(t, "dup", pw, http.MethodGet, path, "")
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Fatalf("GET %s: Content-Type %q, want text/plain", path, ct)
		}
		return resp.StatusCode, body
	}
	if code, body := seed("/put?key=k&value=v"); code != 200 || body != "success" {
		t.Fatalf("/put?key=k&value=v: %d %q, want success", code, body)
	}
	if code, body := seed("/get?key=k"); code != 200 || body != "v" {
		t.Fatalf("/get?key=k: %d %q, want v", code, body)
	}
	for i := range 100 {
		if code, body := seed(fmt.Sprintf("/put?key=seed/key%d&value=value%d", i, i)); code != 200 || body != "success" {
			t.Fatalf("/put key%d: %d %q", i, code, body)
		}
	}
	for i := range 100 {
		if code, body := seed(fmt.Sprintf("/get?key=seed/key%d", i)); code != 200 || body != fmt.Sprintf("value%d", i) {
			t.Fatalf("/get key%d: %d %q", i, code, body)
		}
	}
	if code, rec := r.get(t, "dup", "dup", "seed/key42"); code != 200 || string(rec.Value) != `"value42"` || rec.Seq != 0 {
		t.Errorf("the seed's value over REST: %d %+v, want the JSON string \"value42\"", code, rec)
	}
	for i := range 100 {
		if code, body := seed(fmt.Sprintf("/delete?key=seed/key%d", i)); code != 200 || body != "success" {
			t.Fatalf("/delete key%d: %d %q", i, code, body)
		}
	}
	for _, tc := range []struct {
		name, path string
		code       int
		body       string
	}{
		{"a deleted key", "/get?key=seed/key7", 404, "failure"},
		{"a key never written", "/get?key=never", 404, "failure"},
		{"no key", "/put?value=v", 400, "failure"},
		{"a key with a leading slash", "/put?key=/x&value=v", 400, "failure"},
	} {
		if code, body := seed(tc.path); code != tc.code || body != tc.body {
			t.Errorf("%s (%s): %d %q, want %d %q", tc.name, tc.path, code, body, tc.code, tc.body)
		}
	}
	// A non-string value reads back as its JSON text.
	if resp, body := r.do(t, "dup", pw, http.MethodPut, "/v1/kv/dup/num", `{"a":1}`); resp.StatusCode != 200 {
		t.Fatalf("PUT dup/num: %d %s", resp.StatusCode, body)
	}
	if code, body := seed("/get?key=num"); code != 200 || body != `{"a":1}` {
		t.Errorf("/get of a JSON object: %d %q", code, body)
	}
}

// documented fails t unless the edge's own /v1/openapi.json documents the
// answer status/body of method on the route: the status is listed, its
// response is the JSON Error schema, and one of its examples has the
// body's error code. body must have the Error schema's shape.
func documented(t *testing.T, r *edgeRig, method, route string, status int, body string) {
	t.Helper()
	var e struct {
		Error *struct {
			Code    *string `json:"code"`
			Message *string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == nil || e.Error.Code == nil || e.Error.Message == nil {
		t.Fatalf("%s %s answered %d %s: not the documented {\"error\":{\"code\",\"message\"}}", method, route, status, body)
	}
	code, docBody := r.http(t, "admin", http.MethodGet, "/v1/openapi.json")
	if code != http.StatusOK {
		t.Fatalf("/v1/openapi.json: %d", code)
	}
	type response struct {
		Ref     string `json:"$ref"`
		Content map[string]struct {
			Schema struct {
				Ref string `json:"$ref"`
			} `json:"schema"`
			Examples map[string]struct {
				Value struct {
					Error struct {
						Code string `json:"code"`
					} `json:"error"`
				} `json:"value"`
			} `json:"examples"`
		} `json:"content"`
	}
	var doc struct {
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			Responses map[string]response `json:"responses"`
		} `json:"components"`
	}
	if err := json.Unmarshal(docBody, &doc); err != nil {
		t.Fatal(err)
	}
	var op struct {
		Responses map[string]response `json:"responses"`
	}
	if err := json.Unmarshal(doc.Paths[route][strings.ToLower(method)], &op); err != nil {
		t.Fatalf("OpenAPI %s %s: %v", method, route, err)
	}
	resp, ok := op.Responses[strconv.Itoa(status)]
	if !ok {
		t.Fatalf("OpenAPI %s %s does not list %d (it lists %v)", method, route, status, slices.Collect(maps.Keys(op.Responses)))
	}
	if name, ok := strings.CutPrefix(resp.Ref, "#/components/responses/"); ok {
		resp = doc.Components.Responses[name]
	}
	content := resp.Content["application/json"]
	if content.Schema.Ref != "#/components/schemas/Error" {
		t.Fatalf("OpenAPI %s %s %d: schema %q, want the Error schema", method, route, status, content.Schema.Ref)
	}
	for _, ex := range content.Examples {
		if ex.Value.Error.Code == *e.Error.Code {
			return
		}
	}
	t.Fatalf("OpenAPI %s %s %d has no example with code %s (the edge answered %s)", method, route, status, *e.Error.Code, body)
}
