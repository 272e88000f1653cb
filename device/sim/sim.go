// Package sim drives virtual sensors: N devices, each with its own
// identity, connection and queue, writing R ops per second for a while,
// then flushing and (optionally) reading every key back over REST to count
// what was lost or changed. `iotkv device simulate` and `iotkv demo` run it
// in-process.
//
// It can provision the identities it needs (certificate signed by the CA in
// CertsDir, account with role device in AccountsFile) when CertsDir holds
// ca.key and AccountsFile is set; otherwise the identities must exist.
package sim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/device"
)

// Options configure a run. Zero values take the documented defaults.
type Options struct {
	Devices  int           // required: how many virtual sensors
	Rate     float64       // ops per second per device; default 1
	Duration time.Duration // how long they write; required
	Prefix   string        // names are Prefix + %04d from 1; default "sim-"

	CertsDir     string // ca.crt, NAME.crt, NAME.key (and ca.key to provision)
	AccountsFile string // the edge's accounts file, to provision accounts
	// Password of every device. Empty: each device's password is read from
	// CertsDir/NAME.password, which provisioning writes (random, 0600).
	Password string
	// ReloadWait is how long to wait after adding accounts before the
	// first login, so the edge has reloaded its accounts file; default
	// 1.2s (the edge polls every second).
	ReloadWait time.Duration

	Edge     string // MQTT/TLS host:port; required
	REST     string // https://host:port; required for Verify
	QueueDir string // each device's queue is QueueDir/NAME; required

	// Stop, when closed, ends the writing early like the end of Duration;
	// the flush and the verification still run (unlike cancelling ctx).
	Stop <-chan struct{}

	Keys         int           // distinct keys per device; 0: every op writes a new key
	Verify       bool          // read every key back over REST at the end
	FlushTimeout time.Duration // how long the final flush may take; default 30s

	Progress         func(Progress) // called every ProgressInterval from Run's goroutine
	ProgressInterval time.Duration  // default 1s
	// Device may change each device's options (limits, timeouts).
	Device func(*device.Options)
	Logger *slog.Logger
}

// Progress is a running total.
type Progress struct {
	Elapsed   time.Duration
	Devices   int
	Connected int
	Written   uint64 // puts that returned nil
	Acked     uint64 // ops the edge acknowledged
	Queued    int    // ops waiting in the devices' queues
	Failed    uint64 // puts that returned an error (queue full)
}

// Result is the outcome of a run.
type Result struct {
	Devices     int
	Provisioned int // identities created by this run
	Written     uint64
	Acked       uint64 // written minus what was still queued or rejected after the flush
	Rejected    uint64
	Failed      uint64 // puts that returned an error
	Elapsed     time.Duration
	Verified    bool
	Lost        int // keys written (Put returned nil) that are missing on the edge
	Mismatched  int // keys whose value on the edge is not the last one written
}

// VerifyLine is the line `simulate --verify` prints.
func (r Result) VerifyLine() string {
	return fmt.Sprintf("verify: written=%d acked=%d lost=%d mismatched=%d", r.Written, r.Acked, r.Lost, r.Mismatched)
}

func (o *Options) validate() error {
	switch {
	case o.Devices <= 0:
		return errors.New("simulate: devices must be at least 1")
	case o.Duration <= 0:
		return errors.New("simulate: duration must be positive")
	case o.Edge == "":
		return errors.New("simulate: edge address is required")
	case o.QueueDir == "":
		return errors.New("simulate: queue dir is required")
	case o.CertsDir == "":
		return errors.New("simulate: certificate dir is required")
	case o.Verify && o.REST == "":
		return errors.New("simulate: verify needs the REST address")
	}
	if o.Rate <= 0 {
		o.Rate = 1
	}
	if o.Prefix == "" {
		o.Prefix = "sim-"
	}
	if o.ReloadWait <= 0 {
		o.ReloadWait = 1200 * time.Millisecond
	}
	if o.FlushTimeout <= 0 {
		o.FlushTimeout = 30 * time.Second
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// sensor is one virtual device and what it wrote.
type sensor struct {
	name     string
	password string
	c        *device.Client
	mu       sync.Mutex
	expect   map[string]json.RawMessage // key -> last value whose Put returned nil
	written  uint64
	failed   uint64
}

// Run provisions (when it can and must), runs the sensors for
// opts.Duration or until ctx ends, flushes, and verifies when asked. The
// error is for failures to set up or to talk to the edge at all; lost or
// mismatched keys are in the Result.
func Run(ctx context.Context, opts Options) (Result, error) {
	var res Result
	if err := opts.validate(); err != nil {
		return res, err
	}
	log := opts.Logger
	sensors := make([]*sensor, opts.Devices)
	for i := range sensors {
		sensors[i] = &sensor{name: fmt.Sprintf("%s%04d", opts.Prefix, i+1), expect: map[string]json.RawMessage{}}
	}
	n, err := provision(opts, sensors)
	if err != nil {
		return res, err
	}
	res.Devices, res.Provisioned = len(sensors), n
	if n > 0 {
		log.Info("simulate: provisioned identities; waiting for the edge to reload its accounts", "count", n, "wait", opts.ReloadWait)
		select {
		case <-time.After(opts.ReloadWait):
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	defer func() {
		for _, s := range sensors {
			if s.c != nil {
				_ = s.c.Close()
			}
		}
	}()
	// One device first: if the edge has not reloaded its accounts yet, one
	// identity retries instead of all of them (failed logins are throttled
	// per address).
	if err := openSensor(opts, sensors[0]); err != nil {
		return res, err
	}
	if err := waitConnected(ctx, sensors[0].c, opts.FlushTimeout); err != nil {
		return res, err
	}
	for _, s := range sensors[1:] {
		if err := openSensor(opts, s); err != nil {
			return res, err
		}
	}
	start := time.Now()
	runCtx, cancel := context.WithTimeout(ctx, opts.Duration)
	defer cancel()
	if opts.Stop != nil {
		go func() {
			select {
			case <-opts.Stop:
				cancel()
			case <-runCtx.Done():
			}
		}()
	}
	run := newRunID()
	var wg sync.WaitGroup
	for i, s := range sensors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.write(runCtx, opts, run, i)
		}()
	}
	progressDone := make(chan struct{})
	var progressWG sync.WaitGroup
	if opts.Progress != nil {
		progressWG.Add(1)
		go func() {
			defer progressWG.Done()
			t := time.NewTicker(opts.ProgressInterval)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					opts.Progress(progress(sensors, time.Since(start)))
				case <-progressDone:
					return
				}
			}
		}()
	}
	wg.Wait()
	log.Info("simulate: writing done; flushing", "elapsed", time.Since(start).Round(time.Millisecond))
	fctx, fcancel := context.WithTimeout(context.Background(), opts.FlushTimeout)
	defer fcancel()
	var fwg sync.WaitGroup
	for _, s := range sensors {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			if err := s.c.Flush(fctx); err != nil {
				log.Warn("simulate: flush incomplete", "device", s.name, "err", err)
			}
		}()
	}
	fwg.Wait()
	close(progressDone)
	progressWG.Wait()
	res.Elapsed = time.Since(start)
	for _, s := range sensors {
		st := s.c.Stats()
		s.mu.Lock()
		res.Written += s.written
		res.Failed += s.failed
		s.mu.Unlock()
		res.Rejected += st.Rejected
		unacked := uint64(st.QueuedOps) + st.Rejected
		res.Acked += s.written - min(s.written, unacked)
	}
	if opts.Verify {
		if err := verify(ctx, sensors, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

func openSensor(opts Options, s *sensor) error {
	o := device.Options{
		Name: s.name, Password: s.password, TLSFiles: certs.PathsFor(opts.CertsDir, s.name),
		Edge: opts.Edge, REST: opts.REST, QueueDir: filepath.Join(opts.QueueDir, s.name),
		ReconnectMin: 250 * time.Millisecond, Logger: opts.Logger,
	}
	if opts.Device != nil {
		opts.Device(&o)
	}
	c, err := device.Open(o)
	if err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	s.c = c
	return nil
}

func waitConnected(ctx context.Context, c *device.Client, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !c.Stats().Connected {
		if time.Now().After(deadline) {
			return fmt.Errorf("simulate: %s could not connect within %v: %s", c.Name(), timeout, c.Stats().LastError)
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// write puts at opts.Rate until ctx ends.
func (s *sensor) write(ctx context.Context, opts Options, run string, idx int) {
	interval := time.Duration(float64(time.Second) / opts.Rate)
	t := time.NewTicker(interval)
	defer t.Stop()
	for i := 0; ; i++ {
		key := fmt.Sprintf("k%06d", i)
		if opts.Keys > 0 {
			key = fmt.Sprintf("k%06d", i%opts.Keys)
		}
		temp := 20 + 5*math.Sin(float64(i)/10+float64(idx))
		value, _ := json.Marshal(map[string]any{"run": run, "n": i, "temp": math.Round(temp*100) / 100})
		err := s.c.Put(ctx, key, value)
		s.mu.Lock()
		if err != nil {
			s.failed++
		} else {
			s.written++
			s.expect[key] = value
		}
		s.mu.Unlock()
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

func progress(sensors []*sensor, elapsed time.Duration) Progress {
	p := Progress{Elapsed: elapsed, Devices: len(sensors)}
	for _, s := range sensors {
		st := s.c.Stats()
		if st.Connected {
			p.Connected++
		}
		p.Acked += st.Acked + st.Coalesced
		p.Queued += st.QueuedOps
		s.mu.Lock()
		p.Written += s.written
		p.Failed += s.failed
		s.mu.Unlock()
	}
	return p
}

// verify reads every device's keys back with its own account.
func verify(ctx context.Context, sensors []*sensor, res *Result) error {
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, s := range sensors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			recs, err := s.c.Reader().List(ctx, "")
			got := make(map[string]json.RawMessage, len(recs))
			for _, r := range recs {
				got[r.Key] = r.Value
			}
			lost, mismatched := 0, 0
			s.mu.Lock()
			for k, want := range s.expect {
				v, ok := got[k]
				switch {
				case !ok:
					lost++
				case !sameJSON(v, want):
					mismatched++
				}
			}
			s.mu.Unlock()
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			res.Lost += lost
			res.Mismatched += mismatched
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("simulate: verify: %w", firstErr)
	}
	res.Verified = true
	return nil
}

func sameJSON(a, b []byte) bool {
	var ca, cb bytes.Buffer
	if json.Compact(&ca, a) != nil || json.Compact(&cb, b) != nil {
		return bytes.Equal(a, b)
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}

func newRunID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// provision fills in each sensor's password and creates the certificates
// and accounts that are missing, when CertsDir holds ca.key and
// AccountsFile is set. It returns how many identities it created.
func provision(opts Options, sensors []*sensor) (int, error) {
	_, caKeyErr := os.Stat(filepath.Join(opts.CertsDir, "ca.key"))
	canProvision := caKeyErr == nil && opts.AccountsFile != ""
	var f *accounts.File
	if canProvision {
		var err error
		if f, err = accounts.Load(opts.AccountsFile); err != nil {
			return 0, fmt.Errorf("simulate: %w", err)
		}
	}
	created := 0
	var missing []*sensor
	for _, s := range sensors {
		paths := certs.PathsFor(opts.CertsDir, s.name)
		pwFile := filepath.Join(opts.CertsDir, s.name+".password")
		s.password = opts.Password
		if s.password == "" {
			if data, err := os.ReadFile(pwFile); err == nil {
				s.password = string(bytes.TrimSpace(data))
			}
		}
		_, certErr := os.Stat(paths.Cert)
		hasAccount := false
		if f != nil {
			_, hasAccount = f.Get(s.name)
		}
		if !canProvision {
			if certErr != nil {
				return 0, fmt.Errorf("simulate: no certificate for %s in %s (give --certs with ca.key and --accounts to provision)", s.name, opts.CertsDir)
			}
			if s.password == "" {
				return 0, fmt.Errorf("simulate: no password for %s (give --password-file or provision with --accounts)", s.name)
			}
			continue
		}
		if certErr != nil {
			if err := certs.Issue(opts.CertsDir, certs.Request{Name: s.name, Role: certs.RoleDevice}); err != nil {
				return 0, fmt.Errorf("simulate: %w", err)
			}
		}
		if !hasAccount {
			if s.password == "" {
				s.password = newPassword()
				if err := os.WriteFile(pwFile, []byte(s.password+"\n"), 0o600); err != nil {
					return 0, fmt.Errorf("simulate: write %s: %w", pwFile, err)
				}
			}
			missing = append(missing, s)
		} else if s.password == "" {
			return 0, fmt.Errorf("simulate: account %s exists but its password is unknown (give --password-file, or write it to %s)", s.name, pwFile)
		}
		if certErr != nil || !hasAccount {
			created++
		}
	}
	if len(missing) == 0 {
		return created, nil
	}
	// bcrypt at the lowest allowed cost, on every core: these are
	// throwaway identities, and 1,000 of them at cost 12 would take
	// minutes.
	hashes := make([]string, len(missing))
	errs := make([]error, len(missing))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i, s := range missing {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			hashes[i], errs[i] = accounts.HashPassword(s.password, accounts.MinCost)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("simulate: %w", err)
	}
	for i, s := range missing {
		f.Accounts = append(f.Accounts, accounts.Account{Name: s.name, Role: iotkv.RoleDevice, Hash: hashes[i]})
	}
	if err := f.Save(opts.AccountsFile); err != nil {
		return 0, fmt.Errorf("simulate: %w", err)
	}
	return created, nil
}

func newPassword() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
