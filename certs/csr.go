package certs

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/iotkv/iotkv/internal/atomicfile"
)

// MaxCSRBytes bounds the certificate request Sign reads.
const MaxCSRBytes = 64 << 10

// Extension OIDs a request may ask for that would make it more than a leaf.
var (
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
)

// CheckCSR parses a PEM certificate request and refuses what iotkv will not
// sign: a signature that does not verify, a CN other than name, a key
// weaker than ECDSA P-256 or RSA 2048 (Ed25519 is accepted), and a request
// for CA rights (basicConstraints CA:TRUE, or the keyCertSign or cRLSign
// key usages). The certificate Sign makes never copies a request's
// extensions, so this is a refusal of a request that shows intent, not the
// only guard.
func CheckCSR(data []byte, name string) (*x509.CertificateRequest, error) {
	if len(data) > MaxCSRBytes {
		return nil, fmt.Errorf("certificate request is %d bytes, more than %d", len(data), MaxCSRBytes)
	}
	b, _ := pem.Decode(data)
	if b == nil || (b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST") {
		return nil, errors.New("no PEM CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature does not verify: %w", err)
	}
	if csr.Subject.CommonName != name {
		return nil, fmt.Errorf("certificate request CN is %q, want %q (--name)", csr.Subject.CommonName, name)
	}
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	for _, ext := range csr.Extensions {
		switch {
		case ext.Id.Equal(oidBasicConstraints):
			var bc struct {
				IsCA       bool `asn1:"optional"`
				MaxPathLen int  `asn1:"optional,default:-1"`
			}
			if rest, err := asn1.Unmarshal(ext.Value, &bc); err != nil || len(rest) > 0 {
				return nil, errors.New("certificate request has a malformed basicConstraints extension")
			}
			if bc.IsCA {
				return nil, errors.New("certificate request asks for CA rights (basicConstraints CA:TRUE)")
			}
		case ext.Id.Equal(oidKeyUsage):
			var bits asn1.BitString
			if rest, err := asn1.Unmarshal(ext.Value, &bits); err != nil || len(rest) > 0 {
				return nil, errors.New("certificate request has a malformed keyUsage extension")
			}
			// Bit 5 keyCertSign, bit 6 cRLSign (RFC 5280 4.2.1.3).
			if bits.At(5) == 1 || bits.At(6) == 1 {
				return nil, errors.New("certificate request asks for CA rights (keyCertSign or cRLSign key usage)")
			}
		}
	}
	return csr, nil
}

func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve.Params().BitSize < 256 {
			return fmt.Errorf("certificate request key is ECDSA %s, weaker than P-256", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("certificate request key is RSA %d bits, weaker than 2048", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("certificate request key type %T is not accepted (want ECDSA, RSA or Ed25519)", pub)
	}
	return nil
}

// SignRequest is a certificate request to sign with the CA of a directory.
type SignRequest struct {
	CSR     []byte // PEM
	Request        // Name, Role, Hosts, Days; Force to overwrite Out
	// Out is where the certificate goes; default dir/NAME.crt.
	Out string
}

// Sign checks a certificate request made elsewhere (the private key stays
// where it was made) and writes the certificate the CA in dir signs for it.
// It returns the path written.
func Sign(dir string, req SignRequest) (string, error) {
	csr, err := CheckCSR(req.CSR, req.Name)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	tmpl, err := leafTemplate(req.Request)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	out := req.Out
	if out == "" {
		out = PathsFor(dir, req.Name).Cert
	}
	if !req.Force {
		if _, err := os.Stat(out); err == nil {
			return "", fmt.Errorf("%s: %w", out, ErrExists)
		}
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return "", err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, csr.PublicKey, caKey)
	if err != nil {
		return "", fmt.Errorf("sign certificate for %s: %w", req.Name, err)
	}
	if err := atomicfile.Write(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", err
	}
	return out, nil
}

// Enroll makes a device's key and certificate request: keyPath gets a new
// ECDSA P-256 key (mode 0600) and csrPath a request with CN = name, for
// the operator to sign with 'iotkv certs sign'. The key never leaves
// keyPath. It refuses to replace an existing key unless force is set.
func Enroll(keyPath, csrPath, name string, force bool) error {
	if !force {
		for _, f := range []string{keyPath, csrPath} {
			if _, err := os.Stat(f); err == nil {
				return fmt.Errorf("%s: %w", f, ErrExists)
			}
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name, Organization: []string{"iotkv"}},
	}, key)
	if err != nil {
		return fmt.Errorf("create certificate request: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	if err := atomicfile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return atomicfile.Write(csrPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644)
}
