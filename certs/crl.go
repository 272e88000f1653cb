package certs

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/iotkv/iotkv/internal/atomicfile"
)

// DefaultCRLDays is how long a CRL written by Revoke or RefreshCRL is
// valid: its next-update. Servers keep enforcing a CRL past it, and say so
// loudly in their logs.
const DefaultCRLDays = 30

// ParseCRLs reads every X509 CRL block of a PEM file.
func ParseCRLs(data []byte) ([]*x509.RevocationList, error) {
	var out []*x509.RevocationList
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "X509 CRL" {
			continue
		}
		l, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse CRL %d: %w", len(out)+1, err)
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM X509 CRL block")
	}
	return out, nil
}

// ParseSerial reads a serial number as openssl prints it: hexadecimal,
// colons allowed (5A:3F:...), an optional 0x.
func ParseSerial(s string) (*big.Int, error) {
	h := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	h = strings.TrimPrefix(h, "0x")
	n, ok := new(big.Int).SetString(h, 16)
	if !ok || h == "" || n.Sign() <= 0 {
		return nil, fmt.Errorf("serial %q: want hexadecimal as openssl prints it", s)
	}
	return n, nil
}

// FormatSerial prints a serial as openssl x509 -serial does: upper-case
// hex, whole bytes.
func FormatSerial(n *big.Int) string {
	h := strings.ToUpper(n.Text(16))
	if len(h)%2 == 1 {
		h = "0" + h
	}
	return h
}

// loadOwnCRL returns the revocation list of dir, which the CA of dir must
// have signed; nil when there is none yet.
func loadOwnCRL(dir string, ca *x509.Certificate) (*x509.RevocationList, error) {
	path := filepath.Join(dir, CRLFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	lists, err := ParseCRLs(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, l := range lists {
		if l.CheckSignatureFrom(ca) == nil {
			return l, nil
		}
	}
	return nil, fmt.Errorf("%s is not signed by the CA of %s: refusing to replace it", path, dir)
}

// RevokeResult says what Revoke did.
type RevokeResult struct {
	Serial         *big.Int
	AlreadyRevoked bool
	NextUpdate     time.Time
	Path           string
}

// Revoke adds a certificate of the CA in dir to dir/crl.pem (creating it)
// and signs the list again with next-update days from now (DefaultCRLDays
// when days <= 0). The certificate is dir/NAME.crt when name is given,
// else the one with the given serial.
func Revoke(dir, name string, serialNo *big.Int, days int) (RevokeResult, error) {
	ca, key, err := loadCA(dir)
	if err != nil {
		return RevokeResult{}, err
	}
	if name != "" {
		path := PathsFor(dir, name).Cert
		data, err := os.ReadFile(path)
		if err != nil {
			return RevokeResult{}, fmt.Errorf("revoke %s: %w", name, err)
		}
		cs, err := ParseCertificates(data)
		if err != nil {
			return RevokeResult{}, fmt.Errorf("revoke %s: %s: %w", name, path, err)
		}
		if err := cs[0].CheckSignatureFrom(ca); err != nil {
			return RevokeResult{}, fmt.Errorf("revoke %s: %s is not signed by the CA of %s (revoke it in the directory of the CA that signed it)", name, path, dir)
		}
		serialNo = cs[0].SerialNumber
	}
	if serialNo == nil {
		return RevokeResult{}, errors.New("revoke: a name or a serial is required")
	}
	old, err := loadOwnCRL(dir, ca)
	if err != nil {
		return RevokeResult{}, err
	}
	res := RevokeResult{Serial: serialNo}
	var entries []x509.RevocationListEntry
	if old != nil {
		entries = old.RevokedCertificateEntries
		for _, e := range entries {
			if e.SerialNumber.Cmp(serialNo) == 0 {
				res.AlreadyRevoked = true
			}
		}
	}
	if !res.AlreadyRevoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: serialNo, RevocationTime: time.Now().UTC()})
	}
	res.NextUpdate, res.Path, err = writeCRL(dir, ca, key, old, entries, days)
	return res, err
}

// RefreshCRL signs dir/crl.pem again with a new next-update (creating an
// empty list when there is none): run it before the old next-update.
func RefreshCRL(dir string, days int) (time.Time, error) {
	ca, key, err := loadCA(dir)
	if err != nil {
		return time.Time{}, err
	}
	old, err := loadOwnCRL(dir, ca)
	if err != nil {
		return time.Time{}, err
	}
	var entries []x509.RevocationListEntry
	if old != nil {
		entries = old.RevokedCertificateEntries
	}
	next, _, err := writeCRL(dir, ca, key, old, entries, days)
	return next, err
}

func writeCRL(dir string, ca *x509.Certificate, key *ecdsa.PrivateKey, old *x509.RevocationList, entries []x509.RevocationListEntry, days int) (time.Time, string, error) {
	if days <= 0 {
		days = DefaultCRLDays
	}
	number := big.NewInt(1)
	if old != nil && old.Number != nil {
		number.Add(old.Number, big.NewInt(1))
	}
	now := time.Now().UTC()
	next := now.AddDate(0, 0, days)
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now,
		NextUpdate:                next,
		RevokedCertificateEntries: entries,
	}, ca, key)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("sign CRL: %w", err)
	}
	path := filepath.Join(dir, CRLFile)
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		return time.Time{}, "", err
	}
	return next, path, nil
}
