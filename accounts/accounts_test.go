package accounts

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/iotkv/iotkv"
)

func TestFileAddSaveLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	f, err := Load(path)
	if err != nil || len(f.Accounts) != 0 {
		t.Fatalf("Load of a missing file = %+v, %v; want an empty file", f, err)
	}
	if err := f.Add("dev1", iotkv.RoleDevice, "pw1", MinCost); err != nil {
		t.Fatal(err)
	}
	refusals := []struct {
		name string
		add  func() error
		want string
	}{
		{"a second account of the same name", func() error { return f.Add("dev1", iotkv.RoleDevice, "x", MinCost) }, "already exists"},
		{"a cost below 10", func() error { return f.Add("weak", iotkv.RoleDevice, "x", 9) }, "cost"},
		{"an empty password", func() error { return f.Add("empty", iotkv.RoleDevice, "", MinCost) }, "empty"},
		{"an unknown role", func() error { return f.Add("king", "king", "x", MinCost) }, "role"},
		{"a name that cannot be a topic level", func() error { return f.Add("a/b", iotkv.RoleDevice, "x", MinCost) }, "name"},
		{"a password change of a missing account", func() error { return f.Passwd("ghost", "x", MinCost) }, "no such account"},
		{"a delete of a missing account", func() error { return f.Del("ghost") }, "no such account"},
	}
	for _, r := range refusals {
		if err := r.add(); err == nil || !strings.Contains(err.Error(), r.want) {
			t.Errorf("%s: %v, want an error with %q", r.name, err, r.want)
		}
	}
	if err := f.Save(path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("accounts file mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	raw, _ := os.ReadFile(path)
	if strings.Contains(string(raw), "pw1") {
		t.Fatal("the accounts file holds the plaintext password")
	}
	g, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	a, ok := g.Get("dev1")
	if !ok || a.Role != iotkv.RoleDevice || !strings.HasPrefix(a.Hash, "$2") {
		t.Fatalf("dev1 after a round trip: %+v", a)
	}
	if err := g.Del("dev1"); err != nil || len(g.Accounts) != 0 {
		t.Fatalf("Del: %v, %+v", err, g.Accounts)
	}
}

func TestParseRefusesBrokenFiles(t *testing.T) {
	const hash = `$2a$10$012345678901234567890uLDfWBXlQ5zQq1Jkl2DdW3ZyHnJ6sYqG`
	cases := []struct {
		name, data string
	}{
		{"not JSON", `{`},
		{"an unknown field", `{"version":1,"accounts":[],"extra":1}`},
		{"trailing data", `{"version":1,"accounts":[]} {}`},
		{"an unknown role", `{"accounts":[{"name":"a","role":"king","hash":"` + hash + `"}]}`},
		{"a hash that is not bcrypt", `{"accounts":[{"name":"a","role":"device","hash":"plaintext"}]}`},
		{"a bad name", `{"accounts":[{"name":"a b","role":"device","hash":"` + hash + `"}]}`},
		{"a name twice", `{"accounts":[{"name":"a","role":"device","hash":"` + hash + `"},{"name":"a","role":"admin","hash":"` + hash + `"}]}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse([]byte(tc.data)); err == nil {
				t.Errorf("Parse(%s) accepted it", tc.data)
			}
		})
	}
	if f, err := Parse([]byte(`{"version":1,"accounts":[{"name":"a","role":"device","hash":"` + hash + `"}]}`)); err != nil || len(f.Accounts) != 1 {
		t.Errorf("Parse of a good file: %+v, %v", f, err)
	}
}

// quickHash hashes at bcrypt's minimum cost, below what Add allows: under
// the race detector a cost-10 hash takes ~0.75 s, and the Store takes any
// bcrypt hash.
func quickHash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// writeAccounts saves device accounts name → password.
func writeAccounts(t *testing.T, path string, accts map[string]string) {
	t.Helper()
	f := &File{}
	for name, pw := range accts {
		f.Accounts = append(f.Accounts, Account{Name: name, Role: iotkv.RoleDevice, Hash: quickHash(t, pw)})
	}
	if err := f.Save(path); err != nil {
		t.Fatal(err)
	}
}

func (s *Store) cacheLen() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.cache)
}

// The verified-credential cache answers a repeated good login without
// bcrypt; a wrong password never reaches it; a reload drops it.
func TestStoreCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	writeAccounts(t, path, map[string]string{"dev1": "pw1"})
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	verify := func(name, pw string) (bool, error) {
		t.Helper()
		a, cached, err := s.Verify(ctx, name, pw)
		if err == nil && a.Name != name {
			t.Fatalf("Verify(%s) returned account %+v", name, a)
		}
		return cached, err
	}

	if cached, err := verify("dev1", "pw1"); err != nil || cached {
		t.Fatalf("first good login: cached=%v err=%v, want a bcrypt check", cached, err)
	}
	if cached, err := verify("dev1", "pw1"); err != nil || !cached {
		t.Fatalf("second good login: cached=%v err=%v, want a cache hit", cached, err)
	}
	for range 2 {
		if cached, err := verify("dev1", "wrong"); !errors.Is(err, ErrBadCredentials) || cached {
			t.Fatalf("wrong password: cached=%v err=%v, want ErrBadCredentials from bcrypt", cached, err)
		}
	}
	if _, err := verify("ghost", "pw1"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("unknown name: %v, want ErrBadCredentials", err)
	}
	if n := s.cacheLen(); n != 1 {
		t.Fatalf("cache holds %d entries after one good and several bad logins, want 1", n)
	}

	if changed, err := s.Reload(); err != nil || changed {
		t.Fatalf("Reload of an unchanged file: changed=%v err=%v", changed, err)
	}
	if s.cacheLen() != 1 {
		t.Fatal("a reload of an unchanged file dropped the cache")
	}

	// A password change on disk: after the reload the old password fails
	// (no stale cache hit) and the new one is checked with bcrypt.
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Accounts[0].Hash = quickHash(t, "pw2") // as Passwd does, cheaper
	f.Accounts = append(f.Accounts, Account{Name: "dev2", Role: iotkv.RoleReader, Hash: quickHash(t, "pw3")})
	if err := f.Save(path); err != nil {
		t.Fatal(err)
	}
	if changed, err := s.Reload(); err != nil || !changed {
		t.Fatalf("Reload after a change: changed=%v err=%v", changed, err)
	}
	if s.cacheLen() != 0 {
		t.Fatal("a reload kept the cache")
	}
	if _, err := verify("dev1", "pw1"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("the old password after a change: %v, want ErrBadCredentials", err)
	}
	if cached, err := verify("dev1", "pw2"); err != nil || cached {
		t.Fatalf("the new password: cached=%v err=%v", cached, err)
	}
	if s.Role("dev2") != iotkv.RoleReader || s.Len() != 2 {
		t.Fatalf("after the reload: dev2 role %q, %d accounts", s.Role("dev2"), s.Len())
	}

	// A broken file keeps the accounts in force.
	if err := os.WriteFile(path, []byte("{broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reload(); err == nil {
		t.Fatal("Reload of a broken file succeeded")
	}
	if cached, err := verify("dev1", "pw2"); err != nil || !cached {
		t.Fatalf("after a failed reload: cached=%v err=%v, want the old accounts and cache", cached, err)
	}
}

func TestStoreCacheIsBoundedAndCanBeOff(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	writeAccounts(t, path, map[string]string{"a": "pa", "b": "pb"})
	ctx := context.Background()

	bounded, err := Open(Options{Path: path, CacheSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range [][2]string{{"a", "pa"}, {"b", "pb"}} {
		if _, _, err := bounded.Verify(ctx, c[0], c[1]); err != nil {
			t.Fatal(err)
		}
	}
	if n := bounded.cacheLen(); n != 1 {
		t.Errorf("a cache of size 1 holds %d entries", n)
	}

	off, err := Open(Options{Path: path, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, cached, err := off.Verify(ctx, "a", "pa"); err != nil || cached {
			t.Fatalf("with the cache off: cached=%v err=%v", cached, err)
		}
	}
}

// Watch picks up a changed file by itself.
func TestStoreWatchReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	writeAccounts(t, path, map[string]string{"a": "pa"})
	s, err := Open(Options{Path: path, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Watch(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	writeAccounts(t, path, map[string]string{"b": "pb"})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, ok := s.Lookup("b"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Watch did not load the new accounts within 10s")
		}
		time.Sleep(5 * time.Millisecond) // polling the watcher's effect
	}
	if _, ok := s.Lookup("a"); ok {
		t.Error("a deleted account is still known after the reload")
	}
}

// Verify gives up when its context ends while every bcrypt worker is busy.
func TestVerifyWaitsForAWorkerOnlyUntilTheContextEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	writeAccounts(t, path, map[string]string{"a": "pa"})
	s, err := Open(Options{Path: path, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	s.workers <- struct{}{} // the only worker is busy
	defer func() { <-s.workers }()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := s.Verify(ctx, "a", "pa"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Verify with no free worker: %v, want the context's error", err)
	}
}

// fakeClock drives a Throttle's time.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) Add(d time.Duration)     { c.now = c.now.Add(d) }
func newTestThrottle(c *fakeClock) *Throttle { th := NewThrottle(); th.now = c.Now; return th }

func TestThrottleDelaysGrowAndSuccessClears(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	th := newTestThrottle(clock)
	th.Max = 8 * time.Second
	for i := range 5 {
		if d := th.Fail("dev1", "10.0.0.1"); d != 0 {
			t.Fatalf("failure %d: delay %v, want none within the free failures", i+1, d)
		}
	}
	if w := th.Wait("dev1", "10.0.0.1"); w != 0 {
		t.Fatalf("Wait after the free failures: %v", w)
	}
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second} {
		if d := th.Fail("dev1", "10.0.0.1"); d != want {
			t.Fatalf("failure %d beyond the free ones: delay %v, want %v", i+1, d, want)
		}
	}
	if w := th.Wait("dev1", "10.0.0.1"); w != 8*time.Second {
		t.Fatalf("Wait = %v, want 8s", w)
	}
	if w := th.Wait("dev2", "10.0.0.2"); w != 0 {
		t.Fatalf("another user from another address waits %v", w)
	}
	clock.Add(3 * time.Second)
	if w := th.Wait("dev1", "10.0.0.1"); w != 5*time.Second {
		t.Fatalf("Wait 3s later = %v, want 5s", w)
	}
	clock.Add(5 * time.Second)
	if w := th.Wait("dev1", "10.0.0.1"); w != 0 {
		t.Fatalf("Wait after the delay = %v, want 0", w)
	}
	th.Success("dev1", "10.0.0.1")
	if d := th.Fail("dev1", "10.0.0.1"); d != 0 {
		t.Errorf("after a success the next failure is delayed %v, want the free failures again", d)
	}
}

// An address may hold several accounts (a gateway): it gets four times the
// free failures of one account before it is slowed down as a whole.
func TestThrottleAddressAllowsMoreFailures(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	th := newTestThrottle(clock)
	for i := range 20 {
		if d := th.Fail("user"+string(rune('a'+i)), "10.0.0.9"); d != 0 {
			t.Fatalf("failure %d of different users from one address delayed %v", i+1, d)
		}
	}
	if d := th.Fail("another", "10.0.0.9"); d != time.Second {
		t.Fatalf("the 21st failure from one address: delay %v, want 1s", d)
	}
	if w := th.Wait("innocent", "10.0.0.9"); w != time.Second {
		t.Fatalf("another user of the throttled address waits %v, want 1s", w)
	}
	if w := th.Wait("innocent", "10.0.0.10"); w != 0 {
		t.Fatalf("another address waits %v", w)
	}
}

func TestThrottleForgetsTheOldestBeyondItsLimit(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	th := newTestThrottle(clock)
	th.Limit = 4
	for _, addr := range []string{"a", "b", "c"} {
		clock.Add(time.Second)
		th.Fail("u", addr)
	}
	if n := len(th.entries); n > th.Limit {
		t.Fatalf("%d entries tracked, limit %d", n, th.Limit)
	}
	if _, ok := th.entries[keys("u", "a")[0]]; ok {
		t.Error("the oldest entry was kept beyond the limit")
	}
}
