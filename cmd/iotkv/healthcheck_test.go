package main

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/internal/testenv"
)

// `iotkv healthcheck` is the container's HEALTHCHECK and the operator's
// probe: exit 0 on a ready edge; exit 1 with the reason on a server that
// answers /readyz 503 (a master whose edge is down), on a stopped edge and
// on a certificate the CA did not sign.
func TestHealthcheck(t *testing.T) {
	p := testenv.NewPKI(t)
	p.Identity(t, "edge1", iotkv.RoleEdge)
	p.Identity(t, "admin", iotkv.RoleAdmin)
	pw := masterIdentity(t, p, "master")
	client := p.HTTPClient(t, "admin")
	edge := startServerProc(t, client, "edge", "edge", "--id", "edge1", "--data", filepath.Join(t.TempDir(), "edge"),
		"--certs", p.Dir, "--accounts", p.Accounts, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	ca := filepath.Join(p.Dir, "ca.crt")
	readyz := "https://" + edge.addrs["https"] + "/readyz"

	code, out := runCLI(t, "", "healthcheck", "--ca", ca, "--url", readyz)
	if code != 0 || !strings.Contains(out, "200 OK") {
		t.Fatalf("healthcheck of a ready edge: exit %d, want 0 and 200 OK:\n%s", code, out)
	}

	other := testenv.NewPKI(t)
	code, out = runCLI(t, "", "healthcheck", "--ca", filepath.Join(other.Dir, "ca.crt"), "--url", readyz)
	if code != 1 || !strings.Contains(out, "certificate") {
		t.Errorf("healthcheck with another CA: exit %d, want 1 naming the certificate:\n%s", code, out)
	}

	// A master that dials an edge nobody runs answers /readyz 503 (it is
	// launched without waiting for a 200, and probed until it answers).
	m, addrFile := launchServerProc(t, "master", nil, "master", "--data", filepath.Join(t.TempDir(), "backups"),
		"--certs", p.Dir, "--accounts", p.Accounts, "--password-file", pw, "--edges", "edge9=127.0.0.1:1",
		"--http-addr", "127.0.0.1:0")
	deadline := time.Now().Add(60 * time.Second)
	for {
		if m.addrs == nil {
			m.readAddrs(t, addrFile)
		}
		if m.addrs != nil {
			code, out = runCLI(t, "", "healthcheck", "--ca", ca, "--url", "https://"+m.addrs["https"]+"/readyz")
			if code != 0 && strings.Contains(out, "503") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the master's healthcheck never reported 503 (last exit %d):\n%s", code, out)
		}
		time.Sleep(50 * time.Millisecond) // polling: the child tells us nothing else
	}
	if code != 1 || !strings.Contains(out, "edge9 is not connected") {
		t.Errorf("healthcheck of an unready master: exit %d, want 1 and the reason:\n%s", code, out)
	}

	if err := edge.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-edge.exited
	code, out = runCLI(t, "", "healthcheck", "--ca", ca, "--url", readyz)
	if code != 1 || !strings.Contains(out, "connection refused") {
		t.Errorf("healthcheck of a stopped edge: exit %d, want 1 and connection refused:\n%s", code, out)
	}
	code, out = runCLI(t, "", "healthcheck", "--ca", ca, "--url", "ftp://x/readyz")
	if code != 2 {
		t.Errorf("healthcheck --url ftp://: exit %d, want 2 (usage):\n%s", code, out)
	}
}
