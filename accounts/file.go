// Package accounts owns the accounts file (JSON, bcrypt hashes only), the
// live view of it that servers check logins against, a bounded cache of
// verified credentials, and the throttling of repeated failures.
package accounts

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"golang.org/x/crypto/bcrypt"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/atomicfile"
)

// Cost bounds for new passwords.
const (
	DefaultCost = 12
	MinCost     = 10
)

// Account is one entry of the accounts file.
type Account struct {
	Name string     `json:"name"`
	Role iotkv.Role `json:"role"`
	Hash string     `json:"hash"`
	// Disabled accounts are kept in the file but refused everywhere, as
	// if deleted: logins fail, live sessions end, REST calls get 401.
	Disabled bool `json:"disabled,omitempty"`
}

// File is the accounts file's content.
type File struct {
	Version  int       `json:"version"`
	Accounts []Account `json:"accounts"`
}

// Errors callers can test for.
var (
	ErrNotFound = errors.New("no such account")
	ErrExists   = errors.New("account already exists")
)

// Parse decodes and validates an accounts file.
func Parse(data []byte) (*File, error) {
	var f File
	if err := iotkv.DecodeStrict(data, &f); err != nil {
		return nil, fmt.Errorf("parse accounts: %w", err)
	}
	seen := make(map[string]bool, len(f.Accounts))
	for i, a := range f.Accounts {
		if err := iotkv.ValidateName(a.Name); err != nil {
			return nil, fmt.Errorf("parse accounts: entry %d: %w", i, err)
		}
		if !a.Role.Valid() {
			return nil, fmt.Errorf("parse accounts: %s: unknown role %q", a.Name, a.Role)
		}
		if _, err := bcrypt.Cost([]byte(a.Hash)); err != nil {
			return nil, fmt.Errorf("parse accounts: %s: hash is not bcrypt: %w", a.Name, err)
		}
		if seen[a.Name] {
			return nil, fmt.Errorf("parse accounts: %s appears twice", a.Name)
		}
		seen[a.Name] = true
	}
	return &f, nil
}

// Load reads the accounts file at path; a missing file is an empty one.
func Load(path string) (*File, error) {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return &File{Version: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read accounts %s: %w", path, err)
	}
	// Whoever can write the file can make themselves admin.
	if st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("accounts %s is writable by group or others (mode %04o): run chmod 600 %s", path, st.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read accounts %s: %w", path, err)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Save writes f to path atomically (temp file, fsync, rename, fsync of the
// directory), a new file with mode 0600; a file that exists keeps its
// owner, group and mode (root:iotkv 0640, for a server running as iotkv).
func (f *File) Save(path string) error {
	f.Version = 1
	sort.Slice(f.Accounts, func(i, j int) bool { return f.Accounts[i].Name < f.Accounts[j].Name })
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encode accounts: %w", err)
	}
	return atomicfile.Replace(path, append(data, '\n'), 0o600)
}

func (f *File) index(name string) int {
	for i, a := range f.Accounts {
		if a.Name == name {
			return i
		}
	}
	return -1
}

// Get returns the account called name.
func (f *File) Get(name string) (Account, bool) {
	if i := f.index(name); i >= 0 {
		return f.Accounts[i], true
	}
	return Account{}, false
}

// Add hashes password at cost and adds an account.
func (f *File) Add(name string, role iotkv.Role, password string, cost int) error {
	if err := iotkv.ValidateName(name); err != nil {
		return err
	}
	if !role.Valid() {
		return fmt.Errorf("unknown role %q (want device, reader, writer, admin, master or edge)", role)
	}
	if f.index(name) >= 0 {
		return fmt.Errorf("%s: %w", name, ErrExists)
	}
	hash, err := HashPassword(password, cost)
	if err != nil {
		return err
	}
	f.Accounts = append(f.Accounts, Account{Name: name, Role: role, Hash: hash})
	return nil
}

// Passwd replaces name's password.
func (f *File) Passwd(name, password string, cost int) error {
	i := f.index(name)
	if i < 0 {
		return fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	hash, err := HashPassword(password, cost)
	if err != nil {
		return err
	}
	f.Accounts[i].Hash = hash
	return nil
}

// Del removes name.
func (f *File) Del(name string) error {
	i := f.index(name)
	if i < 0 {
		return fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	f.Accounts = append(f.Accounts[:i], f.Accounts[i+1:]...)
	return nil
}

// SetDisabled disables or enables name.
func (f *File) SetDisabled(name string, disabled bool) error {
	i := f.index(name)
	if i < 0 {
		return fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	f.Accounts[i].Disabled = disabled
	return nil
}

// HashPassword hashes with bcrypt, refusing costs below MinCost and
// passwords bcrypt cannot take.
func HashPassword(password string, cost int) (string, error) {
	if cost == 0 {
		cost = DefaultCost
	}
	if cost < MinCost || cost > bcrypt.MaxCost {
		return "", fmt.Errorf("bcrypt cost %d: must be between %d and %d", cost, MinCost, bcrypt.MaxCost)
	}
	if password == "" {
		return "", errors.New("password is empty")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}
