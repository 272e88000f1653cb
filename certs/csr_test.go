package certs_test

import (
	"crypto"
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
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotkv/iotkv/certs"
)

func csrPEM(t testing.TB, key crypto.Signer, cn string, exts ...pkix.Extension) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, ExtraExtensions: exts}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func mustKey[K any](k K, err error) K {
	if err != nil {
		panic(err)
	}
	return k
}

func ext(t testing.TB, oid asn1.ObjectIdentifier, v any) pkix.Extension {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oid, Critical: true, Value: b}
}

func TestSignRefusesWhatItMustNotSign(t *testing.T) {
	p256 := mustKey(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	good := csrPEM(t, p256, "dev1")
	tampered := []byte(string(good))
	{
		b, _ := pem.Decode(good)
		der := append([]byte(nil), b.Bytes...)
		der[len(der)-5] ^= 0xff // inside the signature
		tampered = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	type bc struct {
		IsCA bool `asn1:"optional"`
	}
	cases := []struct {
		name string
		csr  []byte
		want string
	}{
		{"a CN other than --name", csrPEM(t, p256, "dev2"), "CN"},
		{"a signature that does not verify", tampered, "signature"},
		{"an ECDSA P-224 key", csrPEM(t, mustKey(ecdsa.GenerateKey(elliptic.P224(), rand.Reader)), "dev1"), "weaker than P-256"},
		{"an RSA 1024 key", csrPEM(t, mustKey(rsa.GenerateKey(rand.Reader, 1024)), "dev1"), "weaker than 2048"},
		{"CA:TRUE", csrPEM(t, p256, "dev1", ext(t, asn1.ObjectIdentifier{2, 5, 29, 19}, bc{IsCA: true})), "CA rights"},
		{"keyCertSign", csrPEM(t, p256, "dev1", ext(t, asn1.ObjectIdentifier{2, 5, 29, 15}, asn1.BitString{Bytes: []byte{0x04}, BitLength: 6})), "CA rights"},
		{"not PEM", []byte("hello"), "PEM"},
	}
	dir := t.TempDir()
	if err := certs.Init(dir, false); err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := certs.Sign(dir, certs.SignRequest{CSR: tc.csr, Request: certs.Request{Name: "dev1", Role: certs.RoleDevice}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("sign: %v, want an error with %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "dev1.crt")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused request left dev1.crt: %v", err)
			}
		})
	}
}

func TestSignAcceptsStrongKeysAndMakesALeaf(t *testing.T) {
	dir := t.TempDir()
	if err := certs.Init(dir, false); err != nil {
		t.Fatal(err)
	}
	keys := map[string]crypto.Signer{
		"p256":    mustKey(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)),
		"p384":    mustKey(ecdsa.GenerateKey(elliptic.P384(), rand.Reader)),
		"rsa2048": mustKey(rsa.GenerateKey(rand.Reader, 2048)),
		"ed25519": func() crypto.Signer { _, k, _ := ed25519.GenerateKey(rand.Reader); return k }(),
	}
	for name, key := range keys {
		t.Run(name, func(t *testing.T) {
			// CA:FALSE asked for explicitly is fine.
			csr := csrPEM(t, key, name, ext(t, asn1.ObjectIdentifier{2, 5, 29, 19}, struct{}{}))
			path, err := certs.Sign(dir, certs.SignRequest{CSR: csr, Request: certs.Request{Name: name, Role: certs.RoleDevice}})
			if err != nil {
				t.Fatal(err)
			}
			c := parseFile(t, path)
			if c.IsCA || c.Subject.CommonName != name {
				t.Fatalf("signed certificate: CA %v, CN %q", c.IsCA, c.Subject.CommonName)
			}
			ca := parseFile(t, filepath.Join(dir, "ca.crt"))
			if err := c.CheckSignatureFrom(ca); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := certs.Sign(dir, certs.SignRequest{CSR: csrPEM(t, keys["p256"], "p256"), Request: certs.Request{Name: "p256", Role: certs.RoleDevice}}); !errors.Is(err, certs.ErrExists) {
		t.Fatalf("signing over an existing certificate without force: %v", err)
	}
}

func TestEnrollMakesAPrivateKeyAndARequestSignThenTakes(t *testing.T) {
	dir := t.TempDir()
	if err := certs.Init(dir, false); err != nil {
		t.Fatal(err)
	}
	key, csr := filepath.Join(dir, "dev9.key"), filepath.Join(dir, "dev9.csr")
	if err := certs.Enroll(key, csr, "dev9", false); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	if err := certs.Enroll(key, csr, "dev9", false); !errors.Is(err, certs.ErrExists) {
		t.Fatalf("a second enroll without force: %v", err)
	}
	data, _ := os.ReadFile(csr)
	if _, err := certs.Sign(dir, certs.SignRequest{CSR: data, Request: certs.Request{Name: "dev9", Role: certs.RoleDevice}}); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.ClientConfig(certs.PathsFor(dir, "dev9")); err != nil {
		t.Fatalf("the enrolled key and the signed certificate are not a pair: %v", err)
	}
}

func TestRevokeWritesACRLAndListShowsIt(t *testing.T) {
	dir := t.TempDir()
	if err := certs.Init(dir, false); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"dev1", "dev2"} {
		if err := certs.Issue(dir, certs.Request{Name: n, Role: certs.RoleDevice}); err != nil {
			t.Fatal(err)
		}
	}
	dev2 := parseFile(t, filepath.Join(dir, "dev2.crt"))
	res, err := certs.Revoke(dir, "dev2", nil, 0)
	if err != nil || res.Serial.Cmp(dev2.SerialNumber) != 0 {
		t.Fatalf("revoke: %v, serial %v", err, res.Serial)
	}
	if res, err := certs.Revoke(dir, "", dev2.SerialNumber, 0); err != nil || !res.AlreadyRevoked {
		t.Fatalf("revoking again by serial: %v, already %v", err, res.AlreadyRevoked)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "crl.pem"))
	lists, err := certs.ParseCRLs(data)
	if err != nil || len(lists) != 1 || len(lists[0].RevokedCertificateEntries) != 1 || lists[0].Number.Int64() != 2 {
		t.Fatalf("crl.pem: %v, %+v", err, lists)
	}
	got, info, err := certs.List(dir, dev2.NotBefore.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, l := range got {
		states[l.Name+"/"+l.File] = l.State
	}
	want := map[string]string{"iotkv CA/ca.crt": certs.StateValid, "dev1/dev1.crt": certs.StateValid, "dev2/dev2.crt": certs.StateRevoked}
	for k, v := range want {
		if states[k] != v {
			t.Errorf("%s: state %q, want %q (all: %v)", k, states[k], v, states)
		}
	}
	if !info.Present || info.Revoked != 1 {
		t.Errorf("crl info %+v", info)
	}
	if s, err := certs.ParseSerial(certs.FormatSerial(dev2.SerialNumber)); err != nil || s.Cmp(dev2.SerialNumber) != 0 {
		t.Errorf("serial round trip: %v %v", s, err)
	}
}

func parseFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := certs.ParseCertificates(data)
	if err != nil {
		t.Fatal(err)
	}
	return cs[0]
}

// FuzzCheckCSR feeds arbitrary bytes to the CSR path of 'certs sign': it
// must never panic, and whatever it accepts must verify, carry the CN it
// was asked for and a key of at least the minimum strength.
func FuzzCheckCSR(f *testing.F) {
	p256 := mustKey(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	f.Add(csrPEM(f, p256, "dev1"))
	f.Add(csrPEM(f, p256, "other"))
	f.Add(csrPEM(f, mustKey(ecdsa.GenerateKey(elliptic.P224(), rand.Reader)), "dev1"))
	f.Add(csrPEM(f, p256, "dev1", ext(f, asn1.ObjectIdentifier{2, 5, 29, 19}, struct {
		IsCA bool `asn1:"optional"`
	}{true})))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMA==\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := certs.CheckCSR(data, "dev1")
		if err != nil {
			return
		}
		if csr.Subject.CommonName != "dev1" {
			t.Fatalf("accepted CN %q", csr.Subject.CommonName)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a request whose signature fails: %v", err)
		}
		switch k := csr.PublicKey.(type) {
		case *ecdsa.PublicKey:
			if k.Curve.Params().BitSize < 256 {
				t.Fatal("accepted a weak ECDSA key")
			}
		case *rsa.PublicKey:
			if k.N.BitLen() < 2048 {
				t.Fatal("accepted a weak RSA key")
			}
		case ed25519.PublicKey:
		default:
			t.Fatalf("accepted key type %T", k)
		}
	})
}
