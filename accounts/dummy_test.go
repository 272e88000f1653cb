package accounts

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/iotkv/iotkv"
)

// writeCost saves device accounts hashed at the given costs.
func writeCost(t *testing.T, path string, costs ...int) {
	t.Helper()
	f := &File{}
	for i, c := range costs {
		h, err := bcrypt.GenerateFromPassword([]byte("pw"), c)
		if err != nil {
			t.Fatal(err)
		}
		f.Accounts = append(f.Accounts, Account{Name: "dev" + string(rune('a'+i)), Role: iotkv.RoleDevice, Hash: string(h)})
	}
	if err := f.Save(path); err != nil {
		t.Fatal(err)
	}
}

// An unknown name is checked against a hash of the same bcrypt cost as the
// file's accounts, whatever that cost, so its answer takes as long as a
// known name's (no name oracle). Checked on the hash, not by timing.
func TestUnknownNamesAreCheckedAtTheAccountsCost(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.json")
	writeCost(t, path, bcrypt.MinCost, bcrypt.MinCost+1, bcrypt.MinCost+1)
	s, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	dummyCost := func() int {
		t.Helper()
		if _, _, err := s.Verify(context.Background(), "nobody", "pw"); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("Verify(unknown) = %v, want ErrBadCredentials", err)
		}
		h, err := s.dummyHash()
		if err != nil {
			t.Fatal(err)
		}
		c, err := bcrypt.Cost([]byte(h))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if got := dummyCost(); got != bcrypt.MinCost+1 {
		t.Errorf("dummy hash cost %d with accounts at costs 4, 5, 5; want 5", got)
	}
	// The file changes cost: the next unknown name follows it.
	writeCost(t, path, bcrypt.MinCost+2)
	if changed, err := s.Reload(); err != nil || !changed {
		t.Fatalf("Reload = %v, %v", changed, err)
	}
	if got := dummyCost(); got != bcrypt.MinCost+2 {
		t.Errorf("dummy hash cost %d after a reload to cost-6 accounts; want 6", got)
	}
	// A file without accounts uses the default cost of new accounts (the
	// cost is read, not hashed: a cost-12 hash is slow under -race).
	if c := typicalCost(nil); c != DefaultCost {
		t.Errorf("typicalCost(no accounts) = %d, want DefaultCost %d", c, DefaultCost)
	}
}
