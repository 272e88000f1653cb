//go:build linux

package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

var bins Bins

// TestMain builds iotkv and chaos-writer once for the package.
func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "iotkv-chaos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins = Bins{IOTKV: filepath.Join(dir, "iotkv"), Writer: filepath.Join(dir, "chaos-writer")}
	for bin, pkg := range map[string]string{bins.IOTKV: "github.com/iotkv/iotkv/cmd/iotkv", bins.Writer: "github.com/iotkv/iotkv/chaos/cmd/chaos-writer"} {
		build := exec.Command("go", "build", "-o", bin, pkg)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n", pkg, err)
			return 1
		}
	}
	return m.Run()
}

// full is the `make chaos` version: IOTKV_CHAOS=full.
func full() bool { return os.Getenv("IOTKV_CHAOS") == "full" }

// TestChaos runs every scenario; each ends in its verification. The short
// version (2-3 cycles each) runs in `make test`; IOTKV_CHAOS=full runs the
// full cycles and writes bench/results/chaos.md.
func TestChaos(t *testing.T) {
	cy := Short
	if full() {
		cy = Full
	}
	start := time.Now()
	var mu sync.Mutex
	var rows []Row
	run := func(name string, fn func(*testing.T, Bins, int) Row, cycles int) {
		t.Run(name, func(t *testing.T) {
			r := fn(t, bins, cycles)
			mu.Lock()
			rows = append(rows, r)
			mu.Unlock()
		})
	}
	run("EdgeKills", EdgeKills, cy.EdgeKills)
	run("DeviceKills", DeviceKills, cy.DeviceKills)
	run("MasterKills", MasterKills, cy.MasterKills)
	run("NetFaults", NetFaults, cy.NetFaults)
	run("DiskFaults", DiskFaults, cy.DiskFaults)
	run("ClockSkew", ClockSkew, cy.ClockSkew)
	run("DiskLost", DiskLost, cy.DiskLost)
	table := Table(rows)
	t.Logf("chaos (%v):\n%s", time.Since(start).Round(time.Second), table)
	if out := os.Getenv("IOTKV_CHAOS_OUT"); out != "" {
		doc := fmt.Sprintf("# Chaos results\n\n`make chaos` (IOTKV_CHAOS=full go test ./chaos), %s, %v in all.\n"+
			"ops acked: Puts that returned nil (durable in the device queue). lost: keys whose newest promised op is not on the edge\n"+
			"(scenario 3 adds latest.json reads that did not parse). applied twice: ops found twice in the edge's change log, or\n"+
			"records whose batch seq runs against their change seq. Recovery: see notes, p50 / max over the cycles.\n\n%s",
			time.Now().UTC().Format("2006-01-02 15:04 UTC"), time.Since(start).Round(time.Second), table)
		if err := os.WriteFile(out, []byte(doc), 0o644); err != nil {
			t.Error(err)
		}
		fmt.Print(table)
	}
}
