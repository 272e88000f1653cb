package edge_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pahov5 "github.com/eclipse/paho.golang/paho"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/memdisk"
)

func memRig(t *testing.T, d *memdisk.Disk, q edge.QuotaOptions) *edgeRig {
	t.Helper()
	e, err := edge.Open(edge.Options{
		ID: "edge1", DataDir: "/data", TLSFiles: shared.pki.Paths("edge1"), Accounts: shared.pki.Accounts,
		MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", AccountsPoll: 100 * time.Millisecond,
		StoreFS: d.FS(), Quota: q,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(t.Context()) })
	return &edgeRig{pki: shared.pki, edge: e, client: shared.client}
}

// reads returns what every REST read path answers for dev/key: GET, the
// list, and the seed API's /get.
func reads(t *testing.T, r *edgeRig, dev, key string) (get, list, seed string) {
	t.Helper()
	code, rec := r.get(t, dev, dev, key)
	get = fmt.Sprint(code)
	if code == http.StatusOK {
		get = string(rec.Value)
	}
	code, body := r.http(t, dev, http.MethodGet, "/v1/kv/"+dev+"?prefix="+key)
	var page struct{ Items []iotkv.Record }
	if code != http.StatusOK || json.Unmarshal(body, &page) != nil {
		t.Fatalf("list %s: %d %s", dev, code, body)
	}
	list = "absent"
	for _, it := range page.Items {
		if it.Key == key {
			list = string(it.Value)
		}
	}
	resp, sbody := r.do(t, dev, r.password(dev), http.MethodGet, "/get?key="+key, "")
	seed = fmt.Sprint(resp.StatusCode)
	if resp.StatusCode == http.StatusOK {
		seed = sbody
	}
	return get, list, seed
}

// A value whose group failed its fsync is never returned by a REST read:
// not while the edge runs on (its commit failed), not after the power
// loss and restart.
func TestDurableReadsNeverShowAFailedGroup(t *testing.T) {
	d := memdisk.New()
	r := memRig(t, d, edge.QuotaOptions{})
	dev := "e2e"
	pw := r.password(dev)
	if resp, body := r.do(t, dev, pw, http.MethodPut, "/v1/kv/"+dev+"/k", `"durable"`); resp.StatusCode != http.StatusOK {
		t.Fatalf("first put: %d %s", resp.StatusCode, body)
	}
	d.SetFault(memdisk.FsyncFail)
	// Readers hammer the key while the failing write goes through.
	stop := make(chan struct{})
	var seen sync.Map
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				g, l, s := reads(t, r, dev, "k")
				seen.Store(g+"|"+l+"|"+s, true)
			}
		})
	}
	resp, body := r.do(t, dev, pw, http.MethodPut, "/v1/kv/"+dev+"/k", `"lost"`)
	if resp.StatusCode < 500 {
		t.Errorf("the put whose fsync failed answered %d %s", resp.StatusCode, body)
	}
	resp, body = r.do(t, dev, pw, http.MethodPut, "/v1/kv/"+dev+"/new", `"lost"`)
	if resp.StatusCode < 500 {
		t.Errorf("a put after the failure answered %d %s", resp.StatusCode, body)
	}
	time.Sleep(100 * time.Millisecond) // let the readers run after the failure too
	close(stop)
	wg.Wait()
	seen.Range(func(k, _ any) bool {
		if strings.Contains(k.(string), "lost") {
			t.Errorf("a read returned the value of the failed group: get|list|seed = %s", k)
		}
		return true
	})
	if g, l, s := reads(t, r, dev, "k"); g != `"durable"` || l != `"durable"` || s != "durable" {
		t.Errorf("after the failed commit, k reads get=%s list=%s seed=%s; want the durable value", g, l, s)
	}
	if g, l, s := reads(t, r, dev, "new"); g != "404" || l != "absent" || s != "404" {
		t.Errorf("after the failed commit, new reads get=%s list=%s seed=%s; want not found", g, l, s)
	}

	// Power loss and restart on the fixed disk.
	d.Crash()
	_ = r.edge.Close(t.Context())
	r = memRig(t, d, edge.QuotaOptions{})
	if g, l, s := reads(t, r, dev, "k"); g != `"durable"` || l != `"durable"` || s != "durable" {
		t.Errorf("after restart, k reads get=%s list=%s seed=%s; want the durable value", g, l, s)
	}
	if g, _, _ := reads(t, r, dev, "new"); g != "404" {
		t.Errorf("after restart, new reads %s", g)
	}
	checkUsage(t, r)
}

// The key and byte counters equal a recount of the store after a power
// loss in the middle of a load of puts, deletes and ttl puts from several
// devices, and after the restart.
func TestUsageCountersAreExactAfterAPowerLossMidLoad(t *testing.T) {
	d := memdisk.New()
	r := memRig(t, d, edge.QuotaOptions{Keys: 40, RateOps: -1})
	devs := []string{"ref-a", "ref-b", "logs"}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var sent atomic.Int64
	for i, dev := range devs {
		c := r.v5(t, dev) // here: t.Fatal must not run in the writers
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for seq := uint64(1); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				b := iotkv.Batch{Seq: seq}
				for range 1 + rng.IntN(8) {
					k := fmt.Sprintf("k%02d", rng.IntN(60))
					switch rng.IntN(4) {
					case 0:
						b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpDel, Key: k})
					case 1:
						ttl := int64(1 + rng.IntN(2))
						b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpPut, Key: k, Value: json.RawMessage(`"ttl"`), TTL: &ttl})
					default:
						b.Ops = append(b.Ops, iotkv.Op{Op: iotkv.OpPut, Key: k, Value: json.RawMessage(`"` + strings.Repeat("v", rng.IntN(300)) + `"`)})
					}
				}
				payload, _ := json.Marshal(b)
				if resp, err := c.Publish(t.Context(), &pahov5.Publish{Topic: iotkv.BatchTopic(dev), QoS: 1, Payload: payload}); err != nil && resp == nil {
					return // the edge went away
				}
				sent.Add(1)
			}
		})
	}
	for deadline := time.Now().Add(time.Minute); sent.Load() < 150; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("only %d batches acknowledged in a minute", sent.Load())
		}
	}
	d.Crash() // mid-load: the devices are still publishing
	close(stop)
	wg.Wait()
	before := checkUsage(t, r)
	_ = r.edge.Close(t.Context())

	// The store as the power loss left it, before an edge (and its
	// sweeper) runs on it.
	after, counted, err := edge.StoreUsage("/data", d.FS())
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(after, counted) {
		t.Fatalf("after the power loss the store keeps counters %v, a recount gives %v", after, counted)
	}
	r = memRig(t, d, edge.QuotaOptions{Keys: 40, RateOps: -1})
	if len(after) == 0 {
		t.Fatal("nothing survived the power loss")
	}
	for dev, u := range after {
		if u[0] > 40 {
			t.Errorf("%s holds %d keys over its quota of 40", dev, u[0])
		}
	}
	t.Logf("batches sent %d; usage at the crash %v, after the restart %v", sent.Load(), before, after)
	// Expiry across the restart: the ttl keys (1-2 s) written before the
	// power loss read as gone, and the sweeper deletes them, so the
	// counters come down to what the list shows.
	time.Sleep(2 * time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		listed := map[string][2]int64{}
		for _, dev := range devs {
			code, body := r.http(t, dev, http.MethodGet, "/v1/kv/"+dev+"?limit=1000")
			var page struct{ Items []iotkv.Record }
			if code != http.StatusOK || json.Unmarshal(body, &page) != nil {
				t.Fatalf("list: %d %s", code, body)
			}
			for _, it := range page.Items {
				if string(it.Value) == `"ttl"` {
					t.Fatalf("%s/%s: a ttl key read after its expiry", dev, it.Key)
				}
			}
			if n := int64(len(page.Items)); n > 0 {
				listed[dev] = [2]int64{n, 0}
			}
		}
		stored, err := edge.StoredUsage(r.edge)
		if err != nil {
			t.Fatal(err)
		}
		same := len(stored) == len(listed)
		for dev, u := range stored {
			same = same && listed[dev][0] == u[0]
		}
		if same {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("expired keys not swept: counters %v, listed keys %v", stored, listed)
		}
		time.Sleep(200 * time.Millisecond)
	}
	checkUsage(t, r)
}
