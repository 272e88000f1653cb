// Package testenv builds real environments for tests: a PKI and accounts
// in a temp dir made with the project's own certs and accounts code, and
// edges started on loopback port 0 exactly as `iotkv edge` starts them.
package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/edge"
)

// PKI is a CA and an accounts file in a temp dir.
type PKI struct {
	Dir      string // certificates: ca.crt, NAME.crt, NAME.key
	Accounts string // the accounts file
	mu       sync.Mutex
}

// NewPKI makes a CA and an empty accounts file.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	root := t.TempDir()
	p := &PKI{Dir: filepath.Join(root, "certs"), Accounts: filepath.Join(root, "accounts.json")}
	if err := certs.Init(p.Dir, false); err != nil {
		t.Fatal(err)
	}
	if err := (&accounts.File{}).Save(p.Accounts); err != nil {
		t.Fatal(err)
	}
	return p
}

// Password is the password Identity gives name.
func Password(name string) string { return name + "-secret" }

// Identity issues a certificate for name (server roles get loopback SANs)
// and adds an account with role and Password(name), bcrypt cost 10.
func (p *PKI) Identity(t testing.TB, name string, role iotkv.Role) certs.Paths {
	t.Helper()
	certRole := certs.RoleDevice
	switch role {
	case iotkv.RoleEdge:
		certRole = certs.RoleEdge
	case iotkv.RoleMaster:
		certRole = certs.RoleMaster
	case iotkv.RoleDevice:
	default:
		certRole = certs.RoleClient
	}
	if err := certs.Issue(p.Dir, certs.Request{Name: name, Role: certRole}); err != nil {
		t.Fatal(err)
	}
	p.AddAccount(t, name, role, Password(name))
	return certs.PathsFor(p.Dir, name)
}

// AddAccount adds an account to the accounts file.
func (p *PKI) AddAccount(t testing.TB, name string, role iotkv.Role, password string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := accounts.Load(p.Accounts)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Add(name, role, password, accounts.MinCost); err != nil {
		t.Fatal(err)
	}
	if err := f.Save(p.Accounts); err != nil {
		t.Fatal(err)
	}
}

// Paths returns the certificate files of name.
func (p *PKI) Paths(name string) certs.Paths { return certs.PathsFor(p.Dir, name) }

// ClientTLS is the TLS config a client called name uses.
func (p *PKI) ClientTLS(t testing.TB, name string) *tls.Config {
	t.Helper()
	c, err := certs.ClientConfig(p.Paths(name))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// HTTPClient is an HTTPS client trusting the CA, presenting name's
// certificate.
func (p *PKI) HTTPClient(t testing.TB, name string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: p.ClientTLS(t, name)}}
}

// StartEdge opens an edge called id (issuing its identity if needed) on
// 127.0.0.1:0 with a temp data dir; it is closed when the test ends. mod
// may change the options.
func StartEdge(t testing.TB, p *PKI, id string, mod func(*edge.Options)) *edge.Edge {
	t.Helper()
	if _, err := os.Stat(p.Paths(id).Cert); err != nil {
		p.Identity(t, id, iotkv.RoleEdge)
	}
	o := edge.Options{
		ID: id, DataDir: filepath.Join(t.TempDir(), "data"), TLSFiles: p.Paths(id), Accounts: p.Accounts,
		MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", AccountsPoll: 100 * time.Millisecond,
	}
	if mod != nil {
		mod(&o)
	}
	e, err := edge.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.Close(ctx)
	})
	return e
}

// RequireTool skips the test when tool is not on PATH, and fails it instead
// when CI=true: CI must never skip silently.
func RequireTool(t testing.TB, tool string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required under CI=true but is not installed (apt-get install the package that has it)", tool)
		}
		t.Skipf("skipping: %s is not installed (CI installs it; see .ci/run)", tool)
	}
	return path
}

// Buffer is a bytes.Buffer that one goroutine (a child process's output
// copier, a logger) writes while the test reads it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
