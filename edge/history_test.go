package edge_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"testing"
)

type historyPage struct {
	Items []struct {
		Op    string          `json:"op"`
		Value json.RawMessage `json:"value"`
		TS    *int64          `json:"ts"`
		Seq   uint64          `json:"seq"`
		At    int64           `json:"at"`
	} `json:"items"`
	Next uint64 `json:"next"`
}

func (r *edgeRig) history(t *testing.T, user, path string) (int, historyPage, string) {
	t.Helper()
	resp, body := r.do(t, user, r.password(user), http.MethodGet, path, "")
	var p historyPage
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal([]byte(body), &p); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, body)
		}
	}
	return resp.StatusCode, p, body
}

// The history of a key lists every put and del oldest first with its
// change seq and commit time, pages with limit/after, and filters by time.
func TestHistoryListsEveryOpOfAKeyOldestFirst(t *testing.T) {
	r := shared
	for i := range 5 {
		if resp, body := r.do(t, "admin", rigAdminPassword, http.MethodPut, "/v1/kv/hist-a/room/temp", strconv.Itoa(20+i)); resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT: %d %s", resp.StatusCode, body)
		}
		// Another key and another device never show up.
		r.do(t, "admin", rigAdminPassword, http.MethodPut, "/v1/kv/hist-a/room/temp2", `0`)
		r.do(t, "admin", rigAdminPassword, http.MethodPut, "/v1/kv/hist-b/room/temp", `0`)
	}
	if resp, _ := r.do(t, "admin", rigAdminPassword, http.MethodDelete, "/v1/kv/hist-a/room/temp", ""); resp.StatusCode != http.StatusNoContent {
		t.Fatal(resp.StatusCode)
	}
	r.do(t, "admin", rigAdminPassword, http.MethodPut, "/v1/kv/hist-a/room/temp", `"back"`)

	code, all, body := r.history(t, "admin", "/v1/history/hist-a/room/temp")
	if code != http.StatusOK || len(all.Items) != 7 || all.Next != 0 {
		t.Fatalf("history: %d %s", code, body)
	}
	want := []string{"put 20", "put 21", "put 22", "put 23", "put 24", "del null", `put "back"`}
	for i, it := range all.Items {
		if got := it.Op + " " + string(it.Value); got != want[i] {
			t.Errorf("item %d = %s, want %s", i, got, want[i])
		}
		if it.At == 0 || (i > 0 && (it.Seq <= all.Items[i-1].Seq || it.At < all.Items[i-1].At)) {
			t.Errorf("item %d: seq %d at %d do not follow the previous item", i, it.Seq, it.At)
		}
	}
	_, rec := r.get(t, "admin", "hist-a", "room/temp")
	if last := all.Items[6]; last.Seq != rec.ChangeSeq || last.At != rec.UpdatedAt {
		t.Errorf("last history item seq %d at %d; the record's change_seq %d updated_at %d", last.Seq, last.At, rec.ChangeSeq, rec.UpdatedAt)
	}

	// Pages of 3 cover the same items.
	var paged []uint64
	after := uint64(0)
	for range 10 {
		code, p, body := r.history(t, "admin", fmt.Sprintf("/v1/history/hist-a/room/temp?limit=3&after=%d", after))
		if code != http.StatusOK || len(p.Items) > 3 {
			t.Fatalf("page after %d: %d %s", after, code, body)
		}
		for _, it := range p.Items {
			paged = append(paged, it.Seq)
		}
		if p.Next == 0 {
			break
		}
		after = p.Next
	}
	if len(paged) != 7 || paged[0] != all.Items[0].Seq || paged[6] != all.Items[6].Seq {
		t.Fatalf("paged seqs %v, want the 7 of %+v", paged, all.Items)
	}
	// since/until select by commit time, inclusive.
	at := all.Items[6].At
	_, p, _ := r.history(t, "admin", fmt.Sprintf("/v1/history/hist-a/room/temp?since=%d", at))
	if len(p.Items) == 0 || p.Items[len(p.Items)-1].Seq != all.Items[6].Seq || p.Items[0].At < at {
		t.Errorf("since=%d: %+v", at, p.Items)
	}
	_, p, _ = r.history(t, "admin", fmt.Sprintf("/v1/history/hist-a/room/temp?until=%d", all.Items[0].At-1))
	if len(p.Items) != 0 {
		t.Errorf("until before the first write: %+v", p.Items)
	}
	if code, p, _ := r.history(t, "admin", "/v1/history/hist-a/never/written"); code != http.StatusOK || len(p.Items) != 0 {
		t.Errorf("history of a key never written: %d %+v", code, p)
	}
}

// History is read like a value: a device reads only its own; bad
// parameters are 400 with a JSON error.
func TestHistoryRolesAndBadParameters(t *testing.T) {
	r := shared
	tests := []struct {
		name, user, path string
		want             int
	}{
		{"a device reads its own history", "logs", "/v1/history/logs/k", 200},
		{"a device may not read another's", "logs", "/v1/history/e2e/k", 403},
		{"since must be a number", "admin", "/v1/history/logs/k?since=yesterday", 400},
		{"until must not be negative", "admin", "/v1/history/logs/k?until=-5", 400},
		{"after must be a seq", "admin", "/v1/history/logs/k?after=x", 400},
		{"limit above 1000", "admin", "/v1/history/logs/k?limit=1001", 400},
		{"limit zero", "admin", "/v1/history/logs/k?limit=0", 400},
		{"a bad device name", "admin", "/v1/history/bad%20name/k", 400},
		{"no key", "admin", "/v1/history/logs/", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, body := r.history(t, tc.user, tc.path)
			if code != tc.want {
				t.Fatalf("GET %s as %s: %d %s, want %d", tc.path, tc.user, code, body, tc.want)
			}
			if code != 200 {
				var e struct {
					Error struct{ Code, Message string } `json:"error"`
				}
				if json.Unmarshal([]byte(body), &e) != nil || e.Error.Code == "" || e.Error.Message == "" {
					t.Fatalf("error body %s is not a JSON error", body)
				}
			}
		})
	}
}
