package demorun

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotkv/iotkv/internal/testenv"
)

// syncBuffer is a bytes.Buffer safe for the demo's writer goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The demo runs the whole system, the commands it prints work when pasted
// into a shell while it runs, and it ends with a verified summary.
func TestDemoRunsAndItsPrintedCommandsWork(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "mosquitto_pub", "mosquitto_sub"} {
		testenv.RequireTool(t, tool)
	}
	var out syncBuffer
	type ran struct {
		cmd, out string
		err      error
	}
	results := make(chan []ran, 1)
	// Ctrl-C (ctx) ends the demo once the pasted commands have run.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sum, err := Run(ctx, Options{
		Dir: t.TempDir(), Duration: 2 * time.Minute, Devices: 4, Rate: 5, Out: &out,
		Ready: func(cmds []string) {
			var rs []ran
			for _, c := range cmds {
				o, err := exec.Command("bash", "-o", "pipefail", "-c", c).CombinedOutput()
				rs = append(rs, ran{c, string(o), err})
			}
			results <- rs
			stop()
		},
	})
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	if sum.Written == 0 || sum.Acked != sum.Written || sum.Lost != 0 || sum.Mismatched != 0 {
		t.Errorf("summary %+v: want writes, all acked, none lost", sum)
	}
	for _, e := range []string{"e1", "e2"} {
		if sum.BackupSeq[e] == 0 || sum.BackupSeq[e] != sum.EdgeSeq[e] {
			t.Errorf("backup of %s: master seq %d, edge seq %d", e, sum.BackupSeq[e], sum.EdgeSeq[e])
		}
	}
	var rs []ran
	select {
	case rs = <-results:
	default:
		t.Fatal("the printed commands did not finish")
	}
	if len(rs) < 7 {
		t.Fatalf("only %d commands printed", len(rs))
	}
	for _, r := range rs {
		silent := strings.HasPrefix(r.cmd, "mosquitto_pub") // prints nothing on success
		if r.err != nil || (!silent && strings.TrimSpace(r.out) == "") || strings.Contains(r.out, `"error"`) {
			t.Errorf("pasted command failed: %s\n→ %v\n%s", r.cmd, r.err, r.out)
		}
	}
	if last := rs[len(rs)-1]; !strings.Contains(last.out, `"value":"world"`) {
		t.Errorf("the key written by the pasted mosquitto_pub did not read back: %s", last.out)
	}
	if !strings.Contains(out.String(), "summary: written=") {
		t.Error("no summary line printed")
	}
}
