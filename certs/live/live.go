// Package live keeps a server's TLS material current without a restart:
// its certificate and key, the CA bundle it trusts and the CRL it
// enforces. Watch polls the files and Reload (SIGHUP) reads them at once;
// a complete, checked snapshot replaces the one in force in a single
// atomic swap, so a handshake sees the old files or the new ones, never a
// half-loaded pair. A bad new file (unparsable, key not matching, expired,
// not from the bundle's CAs, a CRL not signed by them) is refused with one
// log line and the old snapshot stays.
//
// The tls.Config values it hands out look the snapshot up per handshake
// (GetConfigForClient, GetClientCertificate, VerifyConnection), so new
// handshakes use new files while live connections keep theirs. Revocation
// is checked in VerifyConnection, which also runs for resumed sessions.
//
// Goroutines: Watch runs in its caller's goroutine until its context ends.
// OnChange is called from the goroutine that loaded the new snapshot
// (Watch's or Reload's caller), after the swap, never with a lock held.
package live

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotkv/iotkv/certs"
)

// ExpiryWarning is how long before the server certificate or a CA expires
// the warning log starts.
const ExpiryWarning = 14 * 24 * time.Hour

// Options configure Certs. Zero values take the documented defaults.
type Options struct {
	// Files: CA bundle, certificate and key are required; CRL is optional
	// (a missing file means nothing revoked until it appears; once loaded,
	// a CRL that disappears keeps the old one in force).
	Files certs.Paths
	// Poll is how often Watch reads the files; default 500ms. A change is
	// loaded once it reads the same on two polls in a row (a file being
	// written is not mistaken for a bad one), so within 2 polls.
	Poll time.Duration
	// OnChange runs after each new snapshot is in force (the broker ends
	// the sessions of revoked certificates there).
	OnChange func()
	Logger   *slog.Logger
	// Registry gets iotkv_tls_cert_expiry_seconds and
	// iotkv_tls_reloads_total; nil registers nothing.
	Registry prometheus.Registerer
	Now      func() time.Time // default time.Now
}

// Certs is the TLS material in force.
type Certs struct {
	opts Options
	log  *slog.Logger
	cur  atomic.Pointer[snapshot]

	mu        sync.Mutex // serializes loads; guards the fields below
	pending   [32]byte   // hash of files read on the last poll, not yet loaded
	refused   [32]byte   // hash of the files last refused (logged once)
	lastWarn  time.Time  // last expiry or stale-CRL warning
	reloadsOK prometheus.Counter
	reloadsNo prometheus.Counter
}

// files is the raw content of the watched files.
type files struct {
	ca, cert, key, crl []byte
	crlMissing         bool
}

func (f files) hash() [32]byte {
	h := sha256.New()
	for _, b := range [][]byte{f.ca, f.cert, f.key, f.crl} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	if f.crlMissing {
		h.Write([]byte{1})
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// snapshot is one checked, complete set of TLS material. Never modified
// once published.
type snapshot struct {
	hash    [32]byte
	pair    *tls.Certificate
	leaf    *x509.Certificate
	cas     []*x509.Certificate
	pool    *x509.CertPool
	crls    []*x509.RevocationList
	revoked map[string]struct{} // issuer DER + "|" + serial
}

// Open loads the files; it fails when they do not make a valid set.
func Open(opts Options) (*Certs, error) {
	if opts.Files.CA == "" || opts.Files.Cert == "" || opts.Files.Key == "" {
		return nil, errors.New("tls: CA, certificate and key files are required")
	}
	if opts.Poll <= 0 {
		opts.Poll = 500 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &Certs{opts: opts, log: opts.Logger}
	f, err := c.read()
	if err != nil {
		return nil, err
	}
	s, err := c.build(f, nil)
	if err != nil {
		return nil, err
	}
	c.cur.Store(s)
	if err := c.register(opts.Registry); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.warnings(s)
	c.mu.Unlock()
	return c, nil
}

func (c *Certs) register(reg prometheus.Registerer) error {
	c.reloadsOK = prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_tls_reloads_total", Help: "TLS material reloads, by result.", ConstLabels: prometheus.Labels{"result": "ok"}})
	c.reloadsNo = prometheus.NewCounter(prometheus.CounterOpts{Name: "iotkv_tls_reloads_total", Help: "TLS material reloads, by result.", ConstLabels: prometheus.Labels{"result": "refused"}})
	if reg == nil {
		return nil
	}
	expiry := func(role string, at func(*snapshot) time.Time) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "iotkv_tls_cert_expiry_seconds",
			Help:        "Seconds until the certificate in force expires (role server: this server's own; role ca: the first CA of the bundle to expire). Negative once expired.",
			ConstLabels: prometheus.Labels{"role": role},
		}, func() float64 { return at(c.cur.Load()).Sub(c.opts.Now()).Seconds() })
	}
	for _, col := range []prometheus.Collector{
		expiry("server", func(s *snapshot) time.Time { return s.leaf.NotAfter }),
		expiry("ca", func(s *snapshot) time.Time { return firstExpiry(s.cas) }),
		c.reloadsOK, c.reloadsNo,
	} {
		if err := reg.Register(col); err != nil {
			return fmt.Errorf("register TLS metrics: %w", err)
		}
	}
	return nil
}

func firstExpiry(cs []*x509.Certificate) time.Time {
	var t time.Time
	for _, c := range cs {
		if t.IsZero() || c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

func (c *Certs) read() (files, error) {
	var f files
	var err error
	p := c.opts.Files
	if f.ca, err = os.ReadFile(p.CA); err != nil {
		return f, fmt.Errorf("read CA bundle: %w", err)
	}
	if f.cert, err = os.ReadFile(p.Cert); err != nil {
		return f, fmt.Errorf("read certificate: %w", err)
	}
	if f.key, err = os.ReadFile(p.Key); err != nil {
		return f, fmt.Errorf("read key: %w", err)
	}
	if p.CRL != "" {
		f.crl, err = os.ReadFile(p.CRL)
		if errors.Is(err, os.ErrNotExist) {
			f.crlMissing, err = true, nil
		}
		if err != nil {
			return f, fmt.Errorf("read CRL: %w", err)
		}
	}
	return f, nil
}

// build checks f and makes a snapshot; prev is the one in force (nil at
// start).
func (c *Certs) build(f files, prev *snapshot) (*snapshot, error) {
	p := c.opts.Files
	now := c.opts.Now()
	pair, err := tls.X509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("certificate %s and key %s: %w", p.Cert, p.Key, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", p.Cert, err)
		}
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("certificate %s expired on %s", p.Cert, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	cas, err := certs.ParseCertificates(f.ca)
	if err != nil {
		return nil, fmt.Errorf("CA bundle %s: %w", p.CA, err)
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		if !ca.IsCA {
			return nil, fmt.Errorf("CA bundle %s: %q is not a CA certificate", p.CA, ca.Subject.CommonName)
		}
		pool.AddCert(ca)
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(ic)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("certificate %s is not from a CA of the bundle %s: %w", p.Cert, p.CA, err)
	}
	s := &snapshot{hash: f.hash(), pair: &pair, leaf: leaf, cas: cas, pool: pool, revoked: map[string]struct{}{}}
	switch {
	case f.crlMissing && prev != nil && len(prev.crls) > 0:
		return nil, fmt.Errorf("CRL %s disappeared: keeping the revocations in force", p.CRL)
	case f.crl != nil:
		lists, err := certs.ParseCRLs(f.crl)
		if err != nil {
			return nil, fmt.Errorf("CRL %s: %w", p.CRL, err)
		}
		for i, l := range lists {
			signed := false
			for _, ca := range cas {
				if l.CheckSignatureFrom(ca) == nil {
					signed = true
					break
				}
			}
			if !signed {
				return nil, fmt.Errorf("CRL %s: list %d is not signed by a CA of the bundle %s", p.CRL, i+1, p.CA)
			}
			for _, e := range l.RevokedCertificateEntries {
				s.revoked[revokedKey(l.RawIssuer, e.SerialNumber.Bytes())] = struct{}{}
			}
		}
		s.crls = lists
	}
	if s.isRevoked(leaf) {
		return nil, fmt.Errorf("certificate %s (serial %s) is revoked by %s", p.Cert, certs.FormatSerial(leaf.SerialNumber), p.CRL)
	}
	return s, nil
}

func revokedKey(issuer, serial []byte) string {
	return string(issuer) + "|" + string(serial)
}

func (s *snapshot) isRevoked(c *x509.Certificate) bool {
	_, ok := s.revoked[revokedKey(c.RawIssuer, c.SerialNumber.Bytes())]
	return ok
}

// Reload reads the files now (SIGHUP). It returns nil when they are in
// force (new or unchanged) and the reason when they were refused.
func (c *Certs) Reload() error {
	return c.poll(true)
}

// poll reads the files; with now false (Watch), a change is loaded only
// once it reads the same on two polls in a row.
func (c *Certs) poll(now bool) error {
	c.mu.Lock()
	f, err := c.read()
	var h [32]byte
	if err == nil {
		h = f.hash()
	}
	cur := c.cur.Load()
	switch {
	case err == nil && h == cur.hash:
		c.pending = [32]byte{}
		c.mu.Unlock()
		return nil
	case !now && h != c.pending:
		c.pending = h // changed since the last poll: maybe still being written
		c.mu.Unlock()
		return nil
	}
	var s *snapshot
	if err == nil {
		s, err = c.build(f, cur)
	}
	if err != nil {
		if h != c.refused || now {
			c.refused = h
			c.reloadsNo.Inc()
			c.log.Error("TLS reload refused; keeping the certificates in force", "err", err)
		}
		c.mu.Unlock()
		return err
	}
	c.cur.Store(s)
	c.pending, c.refused = [32]byte{}, [32]byte{}
	c.reloadsOK.Inc()
	c.log.Info("TLS material reloaded", "serial", certs.FormatSerial(s.leaf.SerialNumber), "not_after", s.leaf.NotAfter.UTC(), "cas", len(s.cas), "revoked", len(s.revoked))
	c.lastWarn = time.Time{}
	c.warnings(s)
	c.mu.Unlock()
	if c.opts.OnChange != nil {
		c.opts.OnChange()
	}
	return nil
}

// warnings logs a certificate or CA expiring within ExpiryWarning and a CRL
// past its next-update; at most hourly. Called with c.mu held.
func (c *Certs) warnings(s *snapshot) {
	now := c.opts.Now()
	if !c.lastWarn.IsZero() && now.Sub(c.lastWarn) < time.Hour {
		return
	}
	c.lastWarn = now
	if left := s.leaf.NotAfter.Sub(now); left < ExpiryWarning {
		c.log.Warn("server certificate expires soon: reissue it", "file", c.opts.Files.Cert, "not_after", s.leaf.NotAfter.UTC(), "days_left", int(left.Hours()/24))
	}
	for _, ca := range s.cas {
		if left := ca.NotAfter.Sub(now); left < ExpiryWarning {
			c.log.Warn("CA certificate expires soon: rotate the CA", "file", c.opts.Files.CA, "ca", ca.Subject.CommonName, "not_after", ca.NotAfter.UTC(), "days_left", int(left.Hours()/24))
		}
	}
	for _, l := range s.crls {
		if !l.NextUpdate.IsZero() && now.After(l.NextUpdate) {
			c.log.Error("CRL is past its next update: still enforcing it; sign it again with 'iotkv certs crl --dir D'", "file", c.opts.Files.CRL, "next_update", l.NextUpdate.UTC())
		}
	}
}

// Watch polls the files until ctx ends.
func (c *Certs) Watch(ctx context.Context) {
	t := time.NewTicker(c.opts.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = c.poll(false)
			c.mu.Lock()
			c.warnings(c.cur.Load())
			c.mu.Unlock()
		}
	}
}

// Leaf is the certificate in force.
func (c *Certs) Leaf() *x509.Certificate { return c.cur.Load().leaf }

// Revoked reports whether the CRL in force revokes cert.
func (c *Certs) Revoked(cert *x509.Certificate) bool { return c.cur.Load().isRevoked(cert) }

// CheckPeer refuses a connection whose peer certificate is revoked, or,
// for a resumed session (which skips chain verification), no longer
// chains to a CA of the bundle in force.
func (c *Certs) CheckPeer(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	s := c.cur.Load()
	leaf := cs.PeerCertificates[0]
	if s.isRevoked(leaf) {
		return fmt.Errorf("certificate %q (serial %s) is revoked", leaf.Subject.CommonName, certs.FormatSerial(leaf.SerialNumber))
	}
	if cs.DidResume {
		inter := x509.NewCertPool()
		for _, ic := range cs.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.pool, Intermediates: inter, CurrentTime: c.opts.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("resumed session: %w", err)
		}
	}
	return nil
}

// ServerConfig is a listener's TLS configuration: the certificate in force
// and client certificates checked against the bundle and CRL in force at
// each handshake; TLS 1.2+.
func (c *Certs) ServerConfig(clientAuth tls.ClientAuthType) *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12, ClientAuth: clientAuth}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		s := c.cur.Load()
		return &tls.Config{
			MinVersion:       tls.VersionTLS12,
			Certificates:     []tls.Certificate{*s.pair},
			ClientAuth:       clientAuth,
			ClientCAs:        s.pool,
			VerifyConnection: c.CheckPeer,
		}, nil
	}
	return base
}

// ClientConfig is the TLS configuration for dialing serverName: the
// certificate in force as ours, the server verified against the bundle and
// CRL in force at each handshake; TLS 1.2+. serverName is a host name or
// an IP address of the server's certificate.
func (c *Certs) ClientConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.cur.Load().pair, nil
		},
		// The standard verification reads a fixed RootCAs; it is done
		// below instead, against the bundle in force, with the same checks.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: the server sent no certificate")
			}
			s := c.cur.Load()
			inter := x509.NewCertPool()
			for _, ic := range cs.PeerCertificates[1:] {
				inter.AddCert(ic)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: serverName, Roots: s.pool, Intermediates: inter, CurrentTime: c.opts.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return fmt.Errorf("tls: verify server %s: %w", serverName, err)
			}
			if s.isRevoked(leaf) {
				return fmt.Errorf("tls: server certificate of %s (serial %s) is revoked", serverName, certs.FormatSerial(leaf.SerialNumber))
			}
			return nil
		},
	}
}
