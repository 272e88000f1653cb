package demorun

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
)

// identity is one name the demo needs: a certificate, an account and a
// password file (certs/NAME.password, 0600), so a person can paste
// commands that use them.
type identity struct {
	name     string
	role     iotkv.Role
	certRole string
	password string
}

// ensureIdentities makes (or reuses, on a second run) the CA, every
// certificate, every account and every password file in one pass, so the
// accounts file is written once.
func ensureIdentities(certsDir, accountsFile string, ids []*identity) error {
	if _, err := os.Stat(filepath.Join(certsDir, "ca.key")); errors.Is(err, os.ErrNotExist) {
		if err := certs.Init(certsDir, false); err != nil {
			return err
		}
	}
	f, err := accounts.Load(accountsFile)
	if err != nil {
		return err
	}
	var toHash []*identity
	for _, id := range ids {
		p := certs.PathsFor(certsDir, id.name)
		if _, err := os.Stat(p.Cert); errors.Is(err, os.ErrNotExist) {
			if err := certs.Issue(certsDir, certs.Request{Name: id.name, Role: id.certRole}); err != nil {
				return err
			}
		}
		pwFile := passwordFile(certsDir, id.name)
		data, err := os.ReadFile(pwFile)
		_, hasAccount := f.Get(id.name)
		if err == nil && hasAccount {
			id.password = string(bytes.TrimSpace(data))
			continue
		}
		id.password = newPassword()
		if err := os.WriteFile(pwFile, []byte(id.password+"\n"), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", pwFile, err)
		}
		if hasAccount {
			_ = f.Del(id.name)
		}
		toHash = append(toHash, id)
	}
	if len(toHash) == 0 {
		return nil
	}
	// bcrypt at the lowest allowed cost, in parallel: demo identities are
	// throwaway, and a person waits for them.
	hashes := make([]string, len(toHash))
	errs := make([]error, len(toHash))
	var wg sync.WaitGroup
	for i, id := range toHash {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hashes[i], errs[i] = accounts.HashPassword(id.password, accounts.MinCost)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for i, id := range toHash {
		f.Accounts = append(f.Accounts, accounts.Account{Name: id.name, Role: id.role, Hash: hashes[i]})
	}
	return f.Save(accountsFile)
}

func passwordFile(certsDir, name string) string {
	return filepath.Join(certsDir, name+".password")
}

func newPassword() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
