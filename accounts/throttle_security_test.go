package accounts

import (
	"testing"
	"time"
)

// TestThrottleDelays: the delay starts after Free failures, doubles per
// further failure up to Max, is kept per (name, address) and per address,
// and a success clears only the (name, address) key.
func TestThrottleDelays(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	th := NewThrottle()
	th.now = func() time.Time { return now }
	var got []time.Duration
	for range 14 {
		got = append(got, th.Fail("dev-1", "10.0.0.1"))
	}
	want := []time.Duration{0, 0, 0, 0, 0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
		16 * time.Second, 32 * time.Second, 64 * time.Second, 128 * time.Second, 256 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("failure %d: delay %v, want %v (all: %v)", i+1, got[i], want[i], got)
		}
	}
	if d := th.Fail("dev-1", "10.0.0.1"); d != th.Max {
		t.Fatalf("delay %v, want the cap %v", d, th.Max)
	}
	if w := th.Wait("dev-1", "10.0.0.1"); w != th.Max {
		t.Fatalf("Wait %v, want %v", w, th.Max)
	}
	if w := th.Wait("dev-1", "10.0.0.2"); w != 0 {
		t.Fatalf("another address waits %v", w)
	}
	if w := th.Wait("dev-2", "10.0.0.1"); w != 0 {
		t.Fatalf("another name on the address waits %v below the per-address limit", w)
	}
	now = now.Add(th.Max)
	if w := th.Wait("dev-1", "10.0.0.1"); w != 0 {
		t.Fatalf("still waiting %v after the delay passed", w)
	}

	// Per address: 4 × Free failures over many names, then every name waits.
	th2 := NewThrottle()
	th2.now = func() time.Time { return now }
	for i := range 4 * th2.Free {
		if d := th2.Fail(string(rune('a'+i)), "10.0.0.9"); d != 0 {
			t.Fatalf("failure %d over distinct names already delayed %v", i+1, d)
		}
	}
	if d := th2.Fail("z", "10.0.0.9"); d != time.Second {
		t.Fatalf("per-address delay %v, want 1s", d)
	}
	th2.Success("admin", "10.0.0.9")
	if w := th2.Wait("admin", "10.0.0.9"); w == 0 {
		t.Fatal("a success cleared the per-address delay")
	}
}

// TestThrottleBounded: the throttle's memory is bounded however many
// names and addresses an attacker uses.
func TestThrottleBounded(t *testing.T) {
	th := NewThrottle()
	th.Limit = 100
	for i := range 1000 {
		th.Fail("n", string(rune(0x4e00+i)))
	}
	if n := len(th.entries); n > th.Limit {
		t.Fatalf("%d entries, limit %d", n, th.Limit)
	}
}
