package accounts

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Logins that arrive together with the same credentials share one bcrypt
// check, and a wrong password is never shared into a success.
func TestSimultaneousLoginsShareOneCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	f := &File{}
	if err := f.Add("dev", "device", "right", MinCost); err != nil {
		t.Fatal(err)
	}
	if err := f.Save(path); err != nil {
		t.Fatal(err)
	}
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	before := s.checks.Load()
	var wg sync.WaitGroup
	errs := make([]error, 32)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pw := "right"
			if i%2 == 1 {
				pw = "wrong"
			}
			_, _, errs[i] = s.Verify(context.Background(), "dev", pw)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if (i%2 == 0) != (err == nil) {
			t.Errorf("login %d (right password: %v): %v", i, i%2 == 0, err)
		}
	}
	// One check for the right password; the wrong ones share too, but
	// never the cache. Without sharing this would be 32.
	if n := s.checks.Load() - before; n > 8 {
		t.Errorf("%d bcrypt checks for 32 simultaneous logins with 2 distinct passwords", n)
	}
}

// A login that gives up while its check waits for a worker (its client
// timed out in a storm) still leaves the check's result in the cache: the
// client's next attempt costs no bcrypt.
func TestAnAbandonedLoginStillCachesItsCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	writeAccounts(t, path, map[string]string{"a": "pa"})
	s, err := Open(Options{Path: path, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	s.workers <- struct{}{} // the only worker is busy
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := s.Verify(ctx, "a", "pa"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Verify with no free worker: %v, want the context's error", err)
	}
	<-s.workers // the worker frees up; the abandoned check runs
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.RLock()
		n := len(s.cache)
		s.mu.RUnlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the abandoned check never reached the cache")
		}
		time.Sleep(5 * time.Millisecond)
	}
	before := s.checks.Load()
	_, cached, err := s.Verify(context.Background(), "a", "pa")
	if err != nil || !cached {
		t.Fatalf("the next login: cached=%v err=%v, want a cache hit", cached, err)
	}
	if n := s.checks.Load() - before; n != 0 {
		t.Fatalf("the next login ran %d bcrypt checks, want 0", n)
	}
}
