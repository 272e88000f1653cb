package demorun

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/iotkv/iotkv/device/sim"
	"github.com/iotkv/iotkv/master"
)

// statusLine shows devices connected, ops/s, acked and the backup lag per
// edge once a second: in place on a TTY, as plain lines otherwise (every
// 5 s, so a log stays readable).
type statusLine struct {
	out    io.Writer
	tty    bool
	m      *master.Master
	edges  []string
	mu     sync.Mutex
	latest map[string]sim.Progress
}

func newStatusLine(out io.Writer, tty bool, m *master.Master, edges []string) *statusLine {
	return &statusLine{out: out, tty: tty, m: m, edges: edges, latest: map[string]sim.Progress{}}
}

func (s *statusLine) update(edge string, p sim.Progress) {
	s.mu.Lock()
	s.latest[edge] = p
	s.mu.Unlock()
}

// run prints until the returned stop function is called.
func (s *statusLine) run() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		every := time.Second
		if !s.tty {
			every = 5 * time.Second
		}
		t := time.NewTicker(every)
		defer t.Stop()
		var lastWritten uint64
		last := time.Now()
		for {
			select {
			case <-done:
				if s.tty {
					fmt.Fprintln(s.out)
				}
				return
			case now := <-t.C:
				line, written := s.line(lastWritten, now.Sub(last))
				lastWritten, last = written, now
				if s.tty {
					fmt.Fprintf(s.out, "\r\033[K%s", line)
				} else {
					fmt.Fprintln(s.out, line)
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func (s *statusLine) line(lastWritten uint64, since time.Duration) (string, uint64) {
	s.mu.Lock()
	var devices, connected, queued int
	var written, acked uint64
	for _, p := range s.latest {
		devices += p.Devices
		connected += p.Connected
		written += p.Written
		acked += p.Acked
		queued += p.Queued
	}
	s.mu.Unlock()
	rate := float64(written-min(lastWritten, written)) / since.Seconds()
	var lags []string
	for _, st := range s.m.Status() {
		lags = append(lags, fmt.Sprintf("%s=%d", st.Edge, st.Lag))
	}
	return fmt.Sprintf("devices %d/%d connected · %.0f ops/s · written %d · acked %d · queued %d · backup lag %s",
		connected, devices, rate, written, acked, queued, strings.Join(lags, " ")), written
}
