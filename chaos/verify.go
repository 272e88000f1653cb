//go:build linux

package chaos

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/iotkv/iotkv"
)

// value is what cmd/chaos-writer puts.
type value struct {
	N int64  `json:"n"`
	D string `json:"d"`
}

// check is the outcome of the verification of one scenario.
type check struct {
	acked   int64 // ops whose Put returned nil
	keys    int   // keys checked (the newest promise of each)
	lost    int   // keys whose newest promised value is missing or older on the edge
	badTS   int   // keys holding the promised op with another ts
	twice   int   // ops applied more than once
	changes int   // change log entries checked for double application
	lostOps []lostOp
}

type lostOp struct {
	device, key string
	p           promise
	got         string // what the edge holds: the record, or "missing"
}

// listAll reads every record of device from the edge over REST.
func (e *env) listAll(edgeURL, device string) ([]iotkv.Record, error) {
	var out []iotkv.Record
	after := ""
	for {
		var page struct {
			Items []iotkv.Record `json:"items"`
			Next  string         `json:"next"`
		}
		u := fmt.Sprintf("%s/v1/kv/%s?limit=1000&after=%s", edgeURL, url.PathEscape(device), url.QueryEscape(after))
		code, err := e.get(u, &page)
		if err != nil {
			return nil, err
		}
		if code != http.StatusOK {
			return nil, fmt.Errorf("list %s: status %d", device, code)
		}
		out = append(out, page.Items...)
		if page.Next == "" {
			return out, nil
		}
		after = page.Next
	}
}

// verifyEdge checks the edge against the ledger: every key's newest
// promised op is there (or a later op of the same device: a Put can
// return and the writer be killed before it prints), with the ts it was
// given; exact demands the very op, except on keys whose newest promise
// comes from a writer run that was killed. Applied
// twice: a device's batches apply in seq order, so on the edge a record
// of a lower batch seq must never carry a higher change seq than a record
// of a higher batch seq; a batch applied again after a later one breaks
// that.
func (e *env) verifyEdge(edgeURL string, exact bool) (check, error) {
	var c check
	c.acked = e.ledger.opsPromised()
	prom := e.ledger.snapshot(e.devices)
	for _, d := range e.devices {
		recs, err := e.listAll(edgeURL, d)
		if err != nil {
			return c, err
		}
		byKey := make(map[string]iotkv.Record, len(recs))
		for _, r := range recs {
			byKey[r.Key] = r
		}
		for k, p := range prom[d] {
			c.keys++
			r, ok := byKey[k]
			var v value
			if ok {
				_ = json.Unmarshal(r.Value, &v)
			}
			// A killed run may have made later ops durable without
			// printing them: its keys may hold one of those.
			strict := exact && (!e.killed[d] || p.n >= e.lastBase[d])
			switch {
			case !ok || v.N < p.n || (strict && v.N != p.n):
				c.lost++
				got := "missing"
				if ok {
					b, _ := json.Marshal(r)
					got = string(b)
				}
				c.lostOps = append(c.lostOps, lostOp{device: d, key: k, p: p, got: got})
			case v.N == p.n && (r.TS == nil || *r.TS != p.ts):
				c.badTS++
			}
		}
		c.twice += seqOrderViolations(recs)
	}
	return c, nil
}

// seqOrderViolations counts records that, in change seq order, carry a
// lower batch seq than a record applied before them. Records without a
// batch seq (REST writes, restored records) are skipped.
func seqOrderViolations(recs []iotkv.Record) int {
	recs = slices.DeleteFunc(slices.Clone(recs), func(r iotkv.Record) bool { return r.Seq == 0 || r.ChangeSeq == 0 })
	slices.SortFunc(recs, func(a, b iotkv.Record) int { return int64Cmp(int64(a.ChangeSeq), int64(b.ChangeSeq)) })
	var top uint64
	n := 0
	for _, r := range recs {
		if r.Seq < top {
			n++
		}
		top = max(top, r.Seq)
	}
	return n
}

func int64Cmp(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// changeLogDuplicates reads the change log of a stopped edge's store (the
// layout of edge/store.go: c\0{seq} -> Change) and counts the ops (a
// writer's op number is unique per device) that appear more than once.
// Without a master confirming, the log keeps every change ever applied.
func changeLogDuplicates(dir string, fs vfs.FS) (changes, dups int, err error) {
	opts := &pebble.Options{ReadOnly: true, Logger: quietLogger{}}
	if fs != nil {
		opts.FS = fs
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return 0, 0, fmt.Errorf("open %s: %w", dir, err)
	}
	defer db.Close()
	prefix := []byte("c\x00")
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: []byte("c\x01")})
	if err != nil {
		return 0, 0, err
	}
	defer it.Close()
	type op struct {
		device string
		n      int64
	}
	seen := map[op]bool{}
	for ok := it.First(); ok; ok = it.Next() {
		var ch iotkv.Change
		if err := json.Unmarshal(it.Value(), &ch); err != nil {
			return changes, dups, fmt.Errorf("change %x: %w", it.Key(), err)
		}
		if ch.Op != iotkv.OpPut {
			continue
		}
		var v value
		if json.Unmarshal(ch.Value, &v) != nil || v.D == "" {
			continue
		}
		changes++
		k := op{ch.Device, v.N}
		if seen[k] {
			dups++
		}
		seen[k] = true
	}
	return changes, dups, it.Error()
}

// changeLogTrace lists, for each device with a lost op, its last 40
// changes and every change of a lost key: what a failure report needs to
// tell a lost batch from a batch applied out of order.
func changeLogTrace(dir string, lost []lostOp) (string, error) {
	db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true, Logger: quietLogger{}})
	if err != nil {
		return "", fmt.Errorf("open %s: %w", dir, err)
	}
	defer db.Close()
	keys := map[[2]string]bool{}
	for _, l := range lost {
		keys[[2]string{l.device, l.key}] = true
		keys[[2]string{l.device, ""}] = true
	}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("c\x00"), UpperBound: []byte("c\x01")})
	if err != nil {
		return "", err
	}
	defer it.Close()
	var lines, tail []string
	for ok := it.First(); ok; ok = it.Next() {
		var ch iotkv.Change
		if json.Unmarshal(it.Value(), &ch) != nil || !keys[[2]string{ch.Device, ""}] {
			continue
		}
		var v value
		_ = json.Unmarshal(ch.Value, &v)
		line := fmt.Sprintf("%d %s seq=%d %s n=%d", ch.Seq, ch.Device, ch.DeviceSeq, ch.Key, v.N)
		if keys[[2]string{ch.Device, ch.Key}] {
			lines = append(lines, line)
		}
		tail = append(tail, line)
		if len(tail) > 40 {
			tail = tail[1:]
		}
	}
	return strings.Join(lines, "\n") + "\n-- last changes --\n" + strings.Join(tail, "\n"), it.Error()
}

// latestDoc is latest.json as docs/protocol.md describes it.
type latestDoc struct {
	Edge    *string              `json:"edge"`
	Seq     *uint64              `json:"seq"`
	TakenAt *string              `json:"taken_at"`
	Entries *[]iotkv.BackupEntry `json:"entries"`
}

// parseLatest checks that data is a complete latest.json.
func parseLatest(data []byte) (latestDoc, error) {
	var d latestDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&d); err != nil {
		return d, err
	}
	if dec.More() {
		return d, errors.New("trailing data")
	}
	if d.Edge == nil || d.Seq == nil || d.TakenAt == nil || d.Entries == nil {
		return d, errors.New("a field is missing")
	}
	return d, nil
}

// waitMasterMatches waits until the master's latest.json holds exactly the
// edge's state (device, key, value, ts of every key) and returns how long
// that took.
func (e *env) waitMasterMatches(edgeURL, latest string, within time.Duration) (time.Duration, error) {
	start := time.Now()
	type kv struct {
		value string
		ts    int64
	}
	want := map[[2]string]kv{}
	for _, d := range e.devices {
		recs, err := e.listAll(edgeURL, d)
		if err != nil {
			return 0, err
		}
		for _, r := range recs {
			var ts int64
			if r.TS != nil {
				ts = *r.TS
			}
			want[[2]string{r.Device, r.Key}] = kv{compact(r.Value), ts}
		}
	}
	var why string
	for time.Since(start) < within {
		data, err := os.ReadFile(latest)
		if err != nil {
			why = err.Error()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		doc, err := parseLatest(data)
		if err != nil {
			return 0, fmt.Errorf("latest.json does not parse: %w", err)
		}
		why = ""
		if len(*doc.Entries) != len(want) {
			why = fmt.Sprintf("latest.json has %d entries, the edge %d keys", len(*doc.Entries), len(want))
		}
		for _, en := range *doc.Entries {
			var ts int64
			if en.TS != nil {
				ts = *en.TS
			}
			if w, ok := want[[2]string{en.Device, en.Key}]; why == "" && (!ok || w.value != compact(en.Value) || w.ts != ts) {
				why = fmt.Sprintf("latest.json %s/%s = %s (ts %d), edge has %+v", en.Device, en.Key, en.Value, ts, w)
			}
		}
		if why == "" {
			return time.Since(start), nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start), fmt.Errorf("latest.json does not match the edge after %v: %s", within, why)
}

func compact(v []byte) string {
	var b bytes.Buffer
	if json.Compact(&b, v) != nil {
		return string(v)
	}
	return b.String()
}

// quietLogger drops Pebble's informational lines (WAL replay) from the
// test output.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)         {}
func (quietLogger) Errorf(f string, args ...any) { fmt.Fprintf(os.Stderr, "pebble: "+f+"\n", args...) }
func (quietLogger) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }
