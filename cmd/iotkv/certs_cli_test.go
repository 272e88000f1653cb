package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// certs sign/revoke/crl/list and users disable/enable as a user types
// them: 0 on success, 2 on a usage error, 1 on a runtime failure.
func TestCertsLifecycleCommands(t *testing.T) {
	dir := t.TempDir()
	pki, acc := filepath.Join(dir, "pki"), filepath.Join(dir, "accounts.json")
	steps := []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"certs init", []string{"certs", "init", "--dir", pki}, 0, ""},
		{"certs issue", []string{"certs", "issue", "--dir", pki, "--name", "dev1", "--role", "device"}, 0, ""},
		{"enroll makes a key and a request", []string{"device", "enroll", "--name", "dev2", "--certs", pki}, 0, "dev2.csr"},
		{"enroll refuses to replace a key", []string{"device", "enroll", "--name", "dev2", "--certs", pki}, 1, "--force"},
		{"sign without --csr is a usage error", []string{"certs", "sign", "--dir", pki, "--name", "dev2", "--role", "device"}, 2, "--csr"},
		{"sign refuses a CN other than --name", []string{"certs", "sign", "--dir", pki, "--csr", filepath.Join(pki, "dev2.csr"), "--name", "dev3", "--role", "device"}, 1, "CN"},
		{"sign signs the request", []string{"certs", "sign", "--dir", pki, "--csr", filepath.Join(pki, "dev2.csr"), "--name", "dev2", "--role", "device"}, 0, "dev2.crt"},
		{"revoke with --name and --serial is a usage error", []string{"certs", "revoke", "--dir", pki, "--name", "dev2", "--serial", "0A"}, 2, "one of"},
		{"revoke with a serial that is not hex is a usage error", []string{"certs", "revoke", "--dir", pki, "--serial", "xyz"}, 2, "hexadecimal"},
		{"revoke of an unknown name fails", []string{"certs", "revoke", "--dir", pki, "--name", "nobody"}, 1, "nobody"},
		{"revoke writes the CRL", []string{"certs", "revoke", "--dir", pki, "--name", "dev2"}, 0, "crl.pem"},
		{"crl signs it again", []string{"certs", "crl", "--dir", pki, "--days", "7"}, 0, "next update"},
		{"list shows the revocation", []string{"certs", "list", "--dir", pki}, 0, "revoked"},
		{"users add", []string{"users", "add", "--file", acc, "--name", "dev1", "--role", "device", "--password", "pw", "--cost", "10"}, 0, ""},
		{"users disable", []string{"users", "disable", "--file", acc, "--name", "dev1"}, 0, ""},
		{"users list shows it", []string{"users", "list", "--file", acc}, 0, "disabled"},
		{"users enable", []string{"users", "enable", "--file", acc, "--name", "dev1"}, 0, ""},
		{"users disable of a missing account fails", []string{"users", "disable", "--file", acc, "--name", "ghost"}, 1, "no such account"},
	}
	for _, s := range steps {
		code, out := runCLI(t, "", s.args...)
		if code != s.code || !strings.Contains(out, s.out) {
			t.Errorf("%s: exit %d %q, want %d with %q", s.name, code, out, s.code, s.out)
		}
	}
}
