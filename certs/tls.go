package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// CAPool loads a pool holding only the CA in caFile (never the system
// roots: they cost memory and trust strangers).
func CAPool(caFile string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("read CA %s: no PEM certificate", caFile)
	}
	return pool, nil
}

// ServerConfig is the TLS configuration of a listener: our certificate,
// client certificates verified against the CA as clientAuth says, TLS 1.2+.
func ServerConfig(p Paths, clientAuth tls.ClientAuthType) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(p.Cert, p.Key)
	if err != nil {
		return nil, fmt.Errorf("load server certificate %s: %w", p.Cert, err)
	}
	pool, err := CAPool(p.CA)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientAuth:   clientAuth,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// ClientConfig is the TLS configuration of a client: our certificate, the
// server verified against the CA only, TLS 1.2+.
func ClientConfig(p Paths) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(p.Cert, p.Key)
	if err != nil {
		return nil, fmt.Errorf("load client certificate %s: %w", p.Cert, err)
	}
	pool, err := CAPool(p.CA)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// PeerCN returns the common name of the verified client certificate of a
// connection, or "" when there is none.
func PeerCN(cs tls.ConnectionState) string {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.CommonName
}
