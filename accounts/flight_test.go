package accounts

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
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
