//go:build linux

package chaos

import (
	"strconv"
	"strings"
	"sync"
	"time"
)

// promise is the newest op on a key whose Put returned nil.
type promise struct {
	n  int64 // the op number in the value {"n":N,...}
	ts int64 // the device timestamp given with it
}

type ackState struct {
	seq uint64
	at  time.Time // when seq last moved up
}

// ledger is what the writers promised, read from their standard output:
// per device, per key, the newest op whose Put returned nil, and the seq
// the edge last acknowledged.
type ledger struct {
	mu       sync.Mutex
	promised map[string]map[string]promise
	ops      int64
	acks     map[string]ackState
	flushed  map[string]bool
	// reconnects: sessions lost, summed over a device's writer runs.
	reconnects map[string]uint64
	lastRe     map[string]uint64 // the current run's count
}

func newLedger() *ledger {
	return &ledger{promised: map[string]map[string]promise{}, acks: map[string]ackState{}, flushed: map[string]bool{},
		reconnects: map[string]uint64{}, lastRe: map[string]uint64{}}
}

// line records one line of a writer's output (see cmd/chaos-writer).
func (l *ledger) line(s string) {
	f := strings.Fields(s)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case len(f) == 5 && f[0] == "put":
		n, err1 := strconv.ParseInt(f[3], 10, 64)
		ts, err2 := strconv.ParseInt(f[4], 10, 64)
		if err1 != nil || err2 != nil {
			return
		}
		keys := l.promised[f[1]]
		if keys == nil {
			keys = map[string]promise{}
			l.promised[f[1]] = keys
		}
		if n >= keys[f[2]].n {
			keys[f[2]] = promise{n: n, ts: ts}
		}
		l.ops++
		delete(l.flushed, f[1])
	case len(f) == 3 && f[0] == "ack":
		seq, err := strconv.ParseUint(f[2], 10, 64)
		if err == nil && seq > l.acks[f[1]].seq {
			l.acks[f[1]] = ackState{seq: seq, at: time.Now()}
		}
	case len(f) == 3 && f[0] == "reconnects":
		n, err := strconv.ParseUint(f[2], 10, 64)
		if err == nil {
			if n < l.lastRe[f[1]] { // a new run of the writer
				l.lastRe[f[1]] = 0
			}
			l.reconnects[f[1]] += n - l.lastRe[f[1]]
			l.lastRe[f[1]] = n
		}
	case len(f) == 2 && f[0] == "flushed":
		l.flushed[f[1]] = true
	}
}

func (l *ledger) opsPromised() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ops
}

// ackSeqs returns the acknowledged seq of each device.
func (l *ledger) ackSeqs(devs []string) map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]uint64, len(devs))
	for _, d := range devs {
		out[d] = l.acks[d].seq
	}
	return out
}

// waitProgress waits until every device in devs has had a seq
// acknowledged above the one in from, and returns how long that took
// since start; ok is false at the deadline.
func (l *ledger) waitProgress(devs []string, from map[string]uint64, start time.Time, within time.Duration) (time.Duration, bool) {
	deadline := start.Add(within)
	for {
		l.mu.Lock()
		var last time.Time
		all := true
		for _, d := range devs {
			a := l.acks[d]
			if a.seq <= from[d] {
				all = false
				break
			}
			if a.at.After(last) {
				last = a.at
			}
		}
		l.mu.Unlock()
		if all {
			return max(last.Sub(start), 0), true
		}
		if time.Now().After(deadline) {
			return within, false
		}
		time.Sleep(20 * time.Millisecond) // the writers report acks every 50ms
	}
}

// snapshot copies the promises of devs.
func (l *ledger) snapshot(devs []string) map[string]map[string]promise {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]map[string]promise, len(devs))
	for _, d := range devs {
		keys := make(map[string]promise, len(l.promised[d]))
		for k, p := range l.promised[d] {
			keys[k] = p
		}
		out[d] = keys
	}
	return out
}

func (l *ledger) allFlushed(devs []string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, d := range devs {
		if !l.flushed[d] {
			return false
		}
	}
	return true
}

// reconnectCounts returns the sessions each device lost so far.
func (l *ledger) reconnectCounts(devs []string) map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]uint64, len(devs))
	for _, d := range devs {
		out[d] = l.reconnects[d]
	}
	return out
}
