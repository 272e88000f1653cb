package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procs is every child process the harness started and has not stopped; the
// main stops them all on exit, on failure and on a signal.
var procs = struct {
	sync.Mutex
	m map[*Proc]struct{}
}{m: map[*Proc]struct{}{}}

// Proc is a child process: a broker, a baseline server or a tool.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	Log  string // its stdout and stderr
	done chan struct{}
	err  error
	once sync.Once
}

// Start runs name with args in its own process group, its output in
// dir/<label>.log.
func Start(label, dir, name string, args ...string) (*Proc, error) {
	return StartEnv(label, dir, nil, name, args...)
}

// StartEnv is Start with env added to the harness's environment.
func StartEnv(label, dir string, env []string, name string, args ...string) (*Proc, error) {
	logPath := filepath.Join(dir, label+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	p := &Proc{Name: label, cmd: cmd, Log: logPath, done: make(chan struct{})}
	procs.Lock()
	procs.m[p] = struct{}{}
	procs.Unlock()
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process group, waits up to grace, then kills it.
func (p *Proc) Stop(grace time.Duration) {
	p.once.Do(func() {
		pgid := -p.cmd.Process.Pid
		_ = syscall.Kill(pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(pgid, syscall.SIGKILL)
			<-p.done
		}
		procs.Lock()
		delete(procs.m, p)
		procs.Unlock()
	})
}

// Kill is kill -9 of the process group.
func (p *Proc) Kill() {
	p.once.Do(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		procs.Lock()
		delete(procs.m, p)
		procs.Unlock()
	})
}

// Interrupt sends SIGINT to the process (not its group).
func (p *Proc) Interrupt() error {
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		return fmt.Errorf("interrupt %s: %w", p.Name, err)
	}
	return nil
}

// Wait waits up to timeout for the process to end by itself and returns
// its exit error (nil for exit 0); after timeout it is killed and that is
// an error.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s still running after %s: killed", p.Name, timeout)
	}
	procs.Lock()
	delete(procs.m, p)
	procs.Unlock()
	if p.err != nil {
		return fmt.Errorf("%s: %w: %s", p.Name, p.err, p.Tail())
	}
	return nil
}

// StopAll stops every child still running.
func StopAll() {
	procs.Lock()
	all := make([]*Proc, 0, len(procs.m))
	for p := range procs.m {
		all = append(all, p)
	}
	procs.Unlock()
	for _, p := range all {
		p.Stop(3 * time.Second)
	}
}

// Tail is the end of the process's log, for error messages.
func (p *Proc) Tail() string {
	b, _ := os.ReadFile(p.Log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Mem is a process's resident memory from /proc: current and peak, bytes.
type Mem struct {
	RSS, HWM int64
}

// ReadMem reads VmRSS and VmHWM of pid.
func ReadMem(pid int) (Mem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Mem{}, fmt.Errorf("read memory of %d: %w", pid, err)
	}
	var m Mem
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.RSS = v << 10
		case "VmHWM:":
			m.HWM = v << 10
		}
	}
	return m, nil
}

// CPUTime is the user+system CPU a process has used so far.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu of %d: %w", pid, err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil // USER_HZ = 100
}

// FreePort returns a loopback address with a port free right now.
func FreePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr, nil
}

// WaitTCP waits until addr accepts connections or p exits.
func WaitTCP(ctx context.Context, addr string, p *Proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited: %s", p.Name, p.Tail())
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: %s not listening after %s", p.Name, addr, timeout)
}

// WaitFile waits until path exists and is not empty, or p exits.
func WaitFile(ctx context.Context, path string, p *Proc, timeout time.Duration) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return b, nil
		}
		if p.Exited() {
			return nil, fmt.Errorf("%s exited: %s", p.Name, p.Tail())
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	slog.Warn("no address file", "proc", p.Name, "log", p.Tail())
	return nil, fmt.Errorf("%s: no %s after %s", p.Name, path, timeout)
}
