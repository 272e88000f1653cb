package faultproxy

import (
	"bufio"
	"net"
	"testing"
	"time"
)

func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1024)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					c.Write(buf[:n])
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestProxyPassesStallsBlackholesAndCuts(t *testing.T) {
	p, err := Start(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	roundTrip := func(msg string, wait time.Duration) (string, error) {
		c.SetDeadline(time.Now().Add(wait))
		if _, err := c.Write([]byte(msg + "\n")); err != nil {
			return "", err
		}
		return r.ReadString('\n')
	}
	if got, err := roundTrip("hello", 5*time.Second); err != nil || got != "hello\n" {
		t.Fatalf("pass: %q %v", got, err)
	}
	p.SetMode(Stall)
	if got, err := roundTrip("stalled", 200*time.Millisecond); err == nil {
		t.Fatalf("stall let %q through", got)
	}
	p.SetMode(Pass)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "stalled\n" {
		t.Fatalf("after the stall the held bytes must arrive: %q %v", got, err)
	}
	if up, down := p.Bytes(); up == 0 || down == 0 {
		t.Errorf("bytes counted: up %d down %d", up, down)
	}
	p.SetMode(Blackhole)
	if got, err := roundTrip("lost", 200*time.Millisecond); err == nil {
		t.Fatalf("blackhole let %q through", got)
	}
	p.SetMode(Pass)
	p.Cut()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("a cut connection still reads")
	}
}
