package certs

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Certificate states in a listing.
const (
	StateValid   = "valid"
	StateExpired = "expired"
	StateRevoked = "revoked"
	StateNotYet  = "not-yet-valid"
	StateUnknown = "unknown-ca" // not signed by a CA of dir/ca.crt
)

// Listed is one certificate of a directory.
type Listed struct {
	File     string // base name
	Name     string // CN
	Role     string // OU, or "ca"
	Serial   string // hex, as openssl prints it
	NotAfter time.Time
	State    string
}

// CRLInfo describes dir/crl.pem for a listing.
type CRLInfo struct {
	Present    bool
	Revoked    int
	NextUpdate time.Time
}

// List reads every certificate of dir (ca.crt, which may be a bundle, and
// each NAME.crt) with its expiry and its state against the CAs of
// dir/ca.crt and dir/crl.pem.
func List(dir string, now time.Time) ([]Listed, CRLInfo, error) {
	var info CRLInfo
	caData, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, info, fmt.Errorf("list: %w", err)
	}
	cas, err := ParseCertificates(caData)
	if err != nil {
		return nil, info, fmt.Errorf("list: ca.crt: %w", err)
	}
	revoked := map[string]bool{} // issuer + serial
	if data, err := os.ReadFile(filepath.Join(dir, CRLFile)); err == nil {
		lists, err := ParseCRLs(data)
		if err != nil {
			return nil, info, fmt.Errorf("list: %s: %w", CRLFile, err)
		}
		info.Present = true
		for _, l := range lists {
			if info.NextUpdate.IsZero() || l.NextUpdate.Before(info.NextUpdate) {
				info.NextUpdate = l.NextUpdate
			}
			for _, e := range l.RevokedCertificateEntries {
				revoked[string(l.RawIssuer)+"|"+e.SerialNumber.String()] = true
				info.Revoked++
			}
		}
	} else if !os.IsNotExist(err) {
		return nil, info, fmt.Errorf("list: %w", err)
	}
	var out []Listed
	for _, c := range cas {
		out = append(out, Listed{File: "ca.crt", Name: c.Subject.CommonName, Role: "ca", Serial: FormatSerial(c.SerialNumber), NotAfter: c.NotAfter, State: timeState(c, now)})
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.crt"))
	if err != nil {
		return nil, info, fmt.Errorf("list: %w", err)
	}
	sort.Strings(files)
	for _, f := range files {
		if filepath.Base(f) == "ca.crt" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, info, fmt.Errorf("list: %w", err)
		}
		cs, err := ParseCertificates(data)
		if err != nil {
			out = append(out, Listed{File: filepath.Base(f), State: "unreadable: " + err.Error()})
			continue
		}
		c := cs[0]
		l := Listed{File: filepath.Base(f), Name: c.Subject.CommonName, Role: strings.Join(c.Subject.OrganizationalUnit, ","),
			Serial: FormatSerial(c.SerialNumber), NotAfter: c.NotAfter, State: timeState(c, now)}
		signed := false
		for _, ca := range cas {
			if c.CheckSignatureFrom(ca) == nil {
				signed = true
			}
		}
		switch {
		case revoked[string(c.RawIssuer)+"|"+c.SerialNumber.String()]:
			l.State = StateRevoked
		case !signed:
			l.State = StateUnknown
		}
		out = append(out, l)
	}
	return out, info, nil
}

func timeState(c *x509.Certificate, now time.Time) string {
	switch {
	case now.After(c.NotAfter):
		return StateExpired
	case now.Before(c.NotBefore):
		return StateNotYet
	}
	return StateValid
}
