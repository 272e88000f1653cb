package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/iotkv/iotkv/accounts"
)

// runCLI runs the iotkv binary and returns its exit code and output.
func runCLI(t *testing.T, stdin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(iotkvBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String()
}

// The PKI and accounts commands, as a user types them: exit 0 on success,
// 2 on a usage error, 1 on a runtime failure; key files 0600; the accounts
// file holds bcrypt hashes only.
func TestCertsAndUsersCommands(t *testing.T) {
	dir := t.TempDir()
	certsDir, acc := filepath.Join(dir, "certs"), filepath.Join(dir, "accounts.json")
	steps := []struct {
		name  string
		stdin string
		args  []string
		code  int
		out   string
	}{
		{"certs init makes a CA", "", []string{"certs", "init", "--dir", certsDir}, 0, "ca.crt"},
		{"certs init refuses to overwrite the CA", "", []string{"certs", "init", "--dir", certsDir}, 1, "--force"},
		{"certs init --force overwrites it", "", []string{"certs", "init", "--dir", certsDir, "--force"}, 0, ""},
		{"certs issue makes an edge certificate", "", []string{"certs", "issue", "--dir", certsDir, "--name", "edge1", "--role", "edge", "--host", "edge.example,10.0.0.1"}, 0, "edge1.crt"},
		{"certs issue makes a device certificate", "", []string{"certs", "issue", "--dir", certsDir, "--name", "dev1", "--role", "device"}, 0, ""},
		{"certs issue refuses an unknown role", "", []string{"certs", "issue", "--dir", certsDir, "--name", "x", "--role", "king"}, 1, "unknown role"},
		{"certs issue without --name is a usage error", "", []string{"certs", "issue", "--dir", certsDir, "--role", "device"}, 2, "--name"},
		{"users add with a password", "", []string{"users", "add", "--file", acc, "--name", "dev1", "--role", "device", "--password", "pw1", "--cost", "10"}, 0, ""},
		{"users add reads the password from stdin", "pw2\n", []string{"users", "add", "--file", acc, "--name", "admin", "--role", "admin", "--password-stdin", "--cost", "10"}, 0, ""},
		{"users add refuses a cost below 10", "", []string{"users", "add", "--file", acc, "--name", "weak", "--role", "device", "--password", "p", "--cost", "9"}, 2, "minimum"},
		{"users add refuses an unknown role", "", []string{"users", "add", "--file", acc, "--name", "x", "--role", "king", "--password", "p", "--cost", "10"}, 2, "role"},
		{"users add refuses a duplicate", "", []string{"users", "add", "--file", acc, "--name", "dev1", "--role", "device", "--password", "p", "--cost", "10"}, 1, "exists"},
		{"users list shows names and roles", "", []string{"users", "list", "--file", acc}, 0, "dev1"},
		{"users passwd changes a password", "", []string{"users", "passwd", "--file", acc, "--name", "dev1", "--password", "pw3", "--cost", "10"}, 0, ""},
		{"users del removes an account", "", []string{"users", "del", "--file", acc, "--name", "admin"}, 0, ""},
		{"users del of a missing account fails", "", []string{"users", "del", "--file", acc, "--name", "admin"}, 1, "no such account"},
		{"an unknown command is a usage error", "", []string{"frobnicate"}, 2, "unknown command"},
		{"version prints the Go version", "", []string{"version"}, 0, "go1."},
	}
	for _, s := range steps {
		code, out := runCLI(t, s.stdin, s.args...)
		if code != s.code || !strings.Contains(out, s.out) {
			t.Errorf("%s: exit %d %q, want %d with %q", s.name, code, out, s.code, s.out)
		}
	}
	for _, f := range []string{"ca.key", "edge1.key", "dev1.key"} {
		if st, err := os.Stat(filepath.Join(certsDir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v (%v), want 0600", f, st.Mode().Perm(), err)
		}
	}
	if st, err := os.Stat(acc); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("accounts file mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	data, _ := os.ReadFile(filepath.Join(certsDir, "edge1.crt"))
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("edge1.crt is not PEM")
	}
	crt, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if crt.Subject.CommonName != "edge1" || len(crt.DNSNames) != 1 || crt.DNSNames[0] != "edge.example" || len(crt.IPAddresses) != 1 {
		t.Errorf("edge1.crt: CN %q, DNS %v, IPs %v", crt.Subject.CommonName, crt.DNSNames, crt.IPAddresses)
	}
	raw, _ := os.ReadFile(acc)
	if strings.Contains(string(raw), "pw1") || strings.Contains(string(raw), "pw3") {
		t.Error("the accounts file holds a plaintext password")
	}
	f, err := accounts.Load(acc)
	if err != nil {
		t.Fatal(err)
	}
	a, ok := f.Get("dev1")
	if !ok || len(f.Accounts) != 1 {
		t.Fatalf("accounts after the steps: %+v", f.Accounts)
	}
	if err := bcrypt.CompareHashAndPassword([]byte(a.Hash), []byte("pw3")); err != nil {
		t.Errorf("dev1's hash does not match the password users passwd set: %v", err)
	}
}
