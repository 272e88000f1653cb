// Package certs is iotkv's PKI: a CA and the leaf certificates of edges,
// masters, devices and clients (ECDSA P-256), and the TLS configurations
// built from them. Every connection in iotkv is TLS 1.2 or later with
// certificates from this CA.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/atomicfile"
)

// Roles a certificate may be issued for.
const (
	RoleEdge   = "edge"
	RoleMaster = "master"
	RoleDevice = "device"
	RoleClient = "client"
)

// DefaultHosts returns the SANs a server certificate gets when none are given.
func DefaultHosts() []string { return []string{"localhost", "127.0.0.1", "::1"} }

// Paths are the files of one identity in a certificate directory.
type Paths struct {
	CA, Cert, Key string
	// CRL is the revocation list servers enforce; a missing file means
	// nothing is revoked yet (servers pick it up when it appears).
	CRL string
}

// PathsFor returns dir/ca.crt, dir/name.crt, dir/name.key and dir/crl.pem.
func PathsFor(dir, name string) Paths {
	return Paths{
		CA:   filepath.Join(dir, "ca.crt"),
		Cert: filepath.Join(dir, name+".crt"),
		Key:  filepath.Join(dir, name+".key"),
		CRL:  filepath.Join(dir, CRLFile),
	}
}

// CRLFile is the name of the revocation list in a certificate directory.
const CRLFile = "crl.pem"

// ErrExists is returned when a file would be overwritten without force.
var ErrExists = errors.New("already exists (use --force to overwrite)")

// Init creates dir/ca.crt and dir/ca.key (0600). It refuses to overwrite an
// existing CA unless force is set.
func Init(dir string, force bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	crtPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if !force {
		for _, p := range []string{crtPath, keyPath} {
			if _, err := os.Stat(p); err == nil {
				return fmt.Errorf("%s: %w", p, ErrExists)
			}
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "iotkv CA", Organization: []string{"iotkv"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create CA certificate: %w", err)
	}
	return writePair(crtPath, keyPath, der, key)
}

// Request describes a leaf certificate.
type Request struct {
	Name  string   // the CN, also the account name
	Role  string   // edge, master, device or client
	Hosts []string // SANs for server roles; DefaultHosts when empty
	Days  int      // validity; default 825
	// NotBefore and NotAfter override Days when set (tests of expired
	// certificates use them).
	NotBefore, NotAfter time.Time
	Force               bool // overwrite existing files
}

// Issue signs a leaf certificate with the CA in dir and writes dir/NAME.crt
// and dir/NAME.key (0600).
func Issue(dir string, req Request) error {
	tmpl, err := leafTemplate(req)
	if err != nil {
		return fmt.Errorf("issue certificate: %w", err)
	}
	p := PathsFor(dir, req.Name)
	if !req.Force {
		for _, f := range []string{p.Cert, p.Key} {
			if _, err := os.Stat(f); err == nil {
				return fmt.Errorf("%s: %w", f, ErrExists)
			}
		}
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("sign certificate for %s: %w", req.Name, err)
	}
	return writePair(p.Cert, p.Key, der, key)
}

// leafTemplate checks req and builds the certificate to sign: CN = name,
// OU = role, client auth for every role and server auth with SANs for edge
// and master.
func leafTemplate(req Request) (*x509.Certificate, error) {
	if err := iotkv.ValidateName(req.Name); err != nil {
		return nil, err
	}
	if req.Name == "ca" {
		return nil, fmt.Errorf("name %q is reserved", req.Name)
	}
	server := false
	switch req.Role {
	case RoleEdge, RoleMaster:
		server = true
	case RoleDevice, RoleClient:
	default:
		return nil, fmt.Errorf("unknown role %q (want edge, master, device or client)", req.Role)
	}
	days := req.Days
	if days <= 0 {
		days = 825
	}
	notBefore, notAfter := time.Now().Add(-time.Hour), time.Now().AddDate(0, 0, days)
	if !req.NotBefore.IsZero() {
		notBefore = req.NotBefore
	}
	if !req.NotAfter.IsZero() {
		notAfter = req.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: req.Name, Organization: []string{"iotkv"}, OrganizationalUnit: []string{req.Role}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Every identity is a client somewhere (an edge restores from the
		// master, a master logs in to edges); servers also serve.
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, // CA:FALSE, whatever a request asked for
	}
	if server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		hosts := req.Hosts
		if len(hosts) == 0 {
			hosts = DefaultHosts()
		}
		for _, h := range hosts {
			h = strings.TrimSpace(h)
			if h == "" {
				continue
			}
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	return tmpl, nil
}

// loadCA returns the CA certificate and key of dir. ca.crt may be a bundle
// (old and new CA during a rotation): the certificate used is the one
// ca.key belongs to.
func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	p := PathsFor(dir, "ca")
	hint := fmt.Sprintf("(run 'iotkv certs init --dir %s' first)", dir)
	keyPEM, err := os.ReadFile(p.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA key %s %s: %w", p.Key, hint, err)
	}
	certPEM, err := os.ReadFile(p.Cert)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA certificate %s %s: %w", p.Cert, hint, err)
	}
	cas, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA certificate %s: %w", p.Cert, err)
	}
	for _, c := range cas {
		pair, err := tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), keyPEM)
		if err != nil {
			continue
		}
		key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
		if !ok {
			return nil, nil, fmt.Errorf("CA key in %s is not ECDSA", p.Key)
		}
		return c, key, nil
	}
	return nil, nil, fmt.Errorf("load CA from %s: no certificate in %s matches %s", dir, p.Cert, p.Key)
}

// ParseCertificates reads every CERTIFICATE block of a PEM bundle; it
// fails on a bundle with none or with a block that does not parse.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

func writePair(crtPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	if err := atomicfile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return atomicfile.Write(crtPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // the OS has no randomness: nothing can be secure
	}
	return n
}
