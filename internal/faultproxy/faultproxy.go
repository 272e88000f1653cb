// Package faultproxy is a TCP proxy for tests that stands between a client
// and a server on loopback and injects network faults on demand: it can
// stall traffic, cut every connection, or blackhole (accept and swallow)
// new and existing traffic. It also counts the bytes it forwards.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is what the proxy does with traffic.
type Mode int32

// Modes.
const (
	Pass      Mode = iota // forward everything
	Stall                 // hold traffic (connections stay open, nothing moves)
	Blackhole             // read and discard everything, forward nothing
	StallDown             // hold server→client traffic only; client→server flows
)

// Proxy forwards connections from its listener to Target.
type Proxy struct {
	Target string
	ln     net.Listener
	mode   atomic.Int32

	up, down atomic.Int64 // bytes client→server and server→client

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Start listens on 127.0.0.1:0 and forwards to target until Close.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{Target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetMode switches the fault mode for new and existing connections.
func (p *Proxy) SetMode(m Mode) { p.mode.Store(int32(m)) }

// Bytes returns the bytes forwarded client→server and server→client.
func (p *Proxy) Bytes() (up, down int64) { return p.up.Load(), p.down.Load() }

// Cut closes every open connection; new ones are still accepted.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

// Close stops the proxy and closes every connection. Safe to call twice.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.Cut()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.DialTimeout("tcp", p.Target, 5*time.Second)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(client) || !p.track(server) {
			_ = client.Close()
			_ = server.Close()
			return
		}
		p.wg.Add(2)
		go p.pipe(server, client, &p.up)
		go p.pipe(client, server, &p.down)
	}
}

// pipe copies src to dst honouring the mode, and closes both at the end.
func (p *Proxy) pipe(dst, src net.Conn, count *atomic.Int64) {
	defer p.wg.Done()
	defer p.untrack(dst)
	defer p.untrack(src)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for n > 0 && p.holds(count) {
			time.Sleep(10 * time.Millisecond)
			if p.isClosed() {
				return
			}
		}
		if m := Mode(p.mode.Load()); n > 0 && (m == Pass || m == StallDown) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			count.Add(int64(n))
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				return
			}
			return
		}
	}
}

// holds reports whether the direction counted by count is stalled.
func (p *Proxy) holds(count *atomic.Int64) bool {
	m := Mode(p.mode.Load())
	return m == Stall || (m == StallDown && count == &p.down)
}

func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}
