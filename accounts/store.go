package accounts

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"

	"github.com/iotkv/iotkv"
)

// ErrBadCredentials is returned for an unknown name or a wrong password;
// the two are not told apart.
var ErrBadCredentials = errors.New("bad username or password")

// Options configure a Store.
type Options struct {
	// Path of the accounts file. Required.
	Path string
	// CacheSize bounds the verified-credential cache; default 100,000
	// entries. -1 disables the cache (benchmarks measure without it).
	CacheSize int
	// Workers bounds concurrent bcrypt checks; default GOMAXPROCS. A cold
	// reconnect storm queues here instead of starving everything else.
	Workers int
	// PollInterval is how often Watch checks the file; default 1s.
	PollInterval time.Duration
	// OnChange runs after Watch loaded a changed file (the broker ends the
	// sessions of deleted and disabled accounts there). Called from
	// Watch's goroutine with no lock held.
	OnChange func()
	Logger   *slog.Logger
}

// Store is the live view of an accounts file: lookups, password checks with
// a cache of verified credentials, and reloads when the file changes. A
// disabled account is left out of the view: to a server it does not exist.
//
// The cache is keyed by a hash of (name, password, stored hash): a wrong
// password never matches an entry, and a changed password or a reload that
// changes the account drops the entry.
type Store struct {
	opts    Options
	log     *slog.Logger
	workers chan struct{}
	flight  singleflight.Group
	checks  atomic.Int64 // bcrypt comparisons run, for tests and metrics

	mu       sync.RWMutex
	accounts map[string]Account
	stamp    fileStamp
	cache    map[[32]byte]struct{}
	// dummyCost is the bcrypt cost of the file's accounts (the most
	// common one; DefaultCost for an empty file); dummies holds a hash
	// per cost, made on first use, compared against for unknown names.
	dummyCost int
	dummies   map[int]string
}

// fileStamp identifies a version of the file. The inode is part of it
// because Save replaces the file by rename: a change that keeps the size
// and lands in the same mtime tick still gets a new inode.
type fileStamp struct {
	size    int64
	modTime time.Time
	inode   uint64
}

// Open loads the accounts file.
func Open(opts Options) (*Store, error) {
	if opts.Path == "" {
		return nil, errors.New("accounts: path is required")
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = 100_000
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Store{opts: opts, log: opts.Logger, workers: make(chan struct{}, opts.Workers), dummies: make(map[int]string)}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload rereads the file if it changed since the last load; it reports
// whether it did. A file that fails to parse leaves the old accounts in
// force.
func (s *Store) Reload() (bool, error) {
	st, err := os.Stat(s.opts.Path)
	if err != nil {
		return false, fmt.Errorf("stat accounts %s: %w", s.opts.Path, err)
	}
	stamp := fileStamp{size: st.Size(), modTime: st.ModTime()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		stamp.inode = sys.Ino
	}
	s.mu.RLock()
	same := s.accounts != nil && stamp == s.stamp
	s.mu.RUnlock()
	if same {
		return false, nil
	}
	f, err := Load(s.opts.Path)
	if err != nil {
		return false, err
	}
	m := make(map[string]Account, len(f.Accounts))
	for _, a := range f.Accounts {
		if !a.Disabled { // a disabled account is, to a server, no account
			m[a.Name] = a
		}
	}
	cost := typicalCost(f.Accounts)
	s.mu.Lock()
	s.accounts, s.stamp, s.dummyCost = m, stamp, cost
	s.cache = make(map[[32]byte]struct{})
	s.mu.Unlock()
	return true, nil
}

// Watch reloads the file whenever it changes until ctx ends.
func (s *Store) Watch(ctx context.Context) {
	t := time.NewTicker(s.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			changed, err := s.Reload()
			if err != nil {
				s.log.Warn("accounts reload failed; keeping the previous accounts", "path", s.opts.Path, "err", err)
			} else if changed {
				s.log.Info("accounts reloaded", "path", s.opts.Path, "accounts", s.Len())
				if s.opts.OnChange != nil {
					s.opts.OnChange()
				}
			}
		}
	}
}

// Len is the number of accounts.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.accounts)
}

// Lookup returns the account called name.
func (s *Store) Lookup(name string) (Account, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.accounts[name]
	return a, ok
}

// Verify checks name's password. It returns the account, whether the
// answer came from the cache, and ErrBadCredentials when the name is
// unknown or the password is wrong. It blocks on the bcrypt worker pool
// until ctx ends.
func (s *Store) Verify(ctx context.Context, name, password string) (Account, bool, error) {
	a, ok := s.Lookup(name)
	if !ok {
		// Spend the same time as a real check so names cannot be probed:
		// the dummy hash has the cost of the file's accounts.
		dummy, err := s.dummyHash()
		if err != nil {
			return Account{}, false, err
		}
		_ = s.compare(ctx, dummy, password)
		return Account{}, false, ErrBadCredentials
	}
	key := cacheKey(a, password)
	if s.opts.CacheSize > 0 {
		s.mu.RLock()
		_, hit := s.cache[key]
		s.mu.RUnlock()
		if hit {
			return a, true, nil
		}
	}
	// Logins that arrive together with the same credentials (a device's
	// connections, a client's parallel requests) share one bcrypt check.
	ch := s.flight.DoChan(string(key[:]), func() (any, error) {
		// Not the first caller's ctx: the others may wait longer, and a
		// check keeps its place in the queue while its client backs off
		// and retries (its result is cached for the retry). Bounded all
		// the same, so abandoned checks do not pile up for ever.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if err := s.compare(fctx, a.Hash, password); err != nil {
			return nil, err
		}
		// Cached here, not by the caller: a login that gave up waiting
		// (its client timed out in a storm) still leaves the check's
		// result for the client's next attempt.
		s.remember(name, a.Hash, key)
		return nil, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return Account{}, false, r.Err
		}
	case <-ctx.Done():
		return Account{}, false, fmt.Errorf("verify password: %w", ctx.Err())
	}
	return a, false, nil
}

// typicalCost is the most common bcrypt cost of accts (the higher one on a
// tie), DefaultCost when there are none.
func typicalCost(accts []Account) int {
	n := make(map[int]int)
	best := DefaultCost
	for _, a := range accts {
		c, err := bcrypt.Cost([]byte(a.Hash)) // Parse checked it
		if err != nil {
			continue
		}
		n[c]++
		if n[c] > n[best] || (n[c] == n[best] && c > best) {
			best = c
		}
	}
	return best
}

// dummyHash returns the hash unknown names are checked against, at the
// cost of the file's accounts; it is made once per cost.
func (s *Store) dummyHash() (string, error) {
	s.mu.RLock()
	cost := s.dummyCost
	h, ok := s.dummies[cost]
	s.mu.RUnlock()
	if ok {
		return h, nil
	}
	v, err, _ := s.flight.Do(fmt.Sprintf("dummy/%d", cost), func() (any, error) {
		h, err := bcrypt.GenerateFromPassword([]byte("no such account"), cost)
		if err != nil {
			return nil, fmt.Errorf("accounts: dummy hash at cost %d: %w", cost, err)
		}
		s.mu.Lock()
		s.dummies[cost] = string(h)
		s.mu.Unlock()
		return string(h), nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// remember caches a verified credential unless the account changed since.
func (s *Store) remember(name, hash string, key [32]byte) {
	if s.opts.CacheSize <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.accounts[name]; !ok || cur.Hash != hash {
		return
	}
	if len(s.cache) >= s.opts.CacheSize {
		// Evict an arbitrary entry; map order is random enough.
		for k := range s.cache {
			delete(s.cache, k)
			break
		}
	}
	s.cache[key] = struct{}{}
}

func (s *Store) compare(ctx context.Context, hash, password string) error {
	select {
	case s.workers <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("verify password: %w", ctx.Err())
	}
	defer func() { <-s.workers }()
	s.checks.Add(1)
	if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)); err != nil {
		return ErrBadCredentials
	}
	return nil
}

func cacheKey(a Account, password string) [32]byte {
	h := sha256.New()
	h.Write([]byte(a.Name))
	h.Write([]byte{0})
	h.Write([]byte(a.Hash))
	h.Write([]byte{0})
	h.Write([]byte(password))
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// Role returns name's role, or "" when there is no such account.
func (s *Store) Role(name string) iotkv.Role {
	a, _ := s.Lookup(name)
	return a.Role
}
