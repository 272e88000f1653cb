//go:build linux

package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is a child process in its own process group that dies with the
// test binary (Pdeathsig) and is killed when the test ends.
type proc struct {
	name   string
	cmd    *exec.Cmd
	tail   *tailBuffer
	exited chan struct{}
	err    error // valid once exited is closed
}

// startProc runs bin with args; stdout goes to lines (one call per
// complete line) when given, else with stderr to the tail kept for logs.
func startProc(t testing.TB, name string, lines func(string), bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, tail: &tailBuffer{max: 32 << 10}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.cmd.Stderr = p.tail
	p.cmd.Stdout = p.tail
	if lines != nil {
		p.cmd.Stdout = &lineSplitter{fn: lines}
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s (pid %d) output, last %d bytes:\n%s", name, p.cmd.Process.Pid, p.tail.max, p.tail)
		}
	})
	return p
}

// kill is kill -9 of the process group; it returns once the process is
// reaped. Safe to call on an exited process.
func (p *proc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// stop sends SIGTERM and waits up to within for a clean exit; it kills the
// process after that. It returns the exit error (nil: exit 0).
func (p *proc) stop(within time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.err
	case <-time.After(within):
		p.kill()
		return fmt.Errorf("%s did not exit within %v of SIGTERM", p.name, within)
	}
}

// wait waits up to within for the process to exit by itself.
func (p *proc) wait(within time.Duration) error {
	select {
	case <-p.exited:
		return p.err
	case <-time.After(within):
		p.kill()
		return fmt.Errorf("%s did not exit within %v", p.name, within)
	}
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// lineSplitter calls fn for each complete line; a cut last line (the
// process was killed while writing it) is never delivered.
type lineSplitter struct {
	fn      func(string)
	partial []byte
}

func (l *lineSplitter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.partial = append(l.partial, p...)
			break
		}
		l.fn(string(append(l.partial, p[:i]...)))
		l.partial = l.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

var _ io.Writer = (*lineSplitter)(nil)

// exitCode is 0 for nil, the exit status for an *exec.ExitError, -1 else.
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}
