package device_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/device"
	"github.com/iotkv/iotkv/edge"
	"github.com/iotkv/iotkv/internal/testenv"
)

// open starts a device called name against e with its queue in dir.
func open(t *testing.T, p *testenv.PKI, e *edge.Edge, name, dir string, mod func(*device.Options)) *device.Client {
	t.Helper()
	o := device.Options{
		Name: name, Password: testenv.Password(name), TLSFiles: p.Paths(name),
		Edge: e.MQTTAddr(), REST: "https://" + e.HTTPAddr(), QueueDir: dir,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 300 * time.Millisecond,
	}
	if mod != nil {
		mod(&o)
	}
	c, err := device.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func flush(t *testing.T, c *device.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func mustGet(t *testing.T, c *device.Client, key string) json.RawMessage {
	t.Helper()
	rec, err := c.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Value
}

func TestPutsAreAppliedAndReadBack(t *testing.T) {
	p := testenv.NewPKI(t)
	e := testenv.StartEdge(t, p, "edge1", nil)
	p.Identity(t, "dev1", iotkv.RoleDevice)
	c := open(t, p, e, "dev1", t.TempDir(), nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if err := c.Put(ctx, fmt.Sprintf("w%d/k%02d", w, i), json.RawMessage(fmt.Sprint(i))); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if err := c.Delete(ctx, "w0/k00"); err != nil {
		t.Fatal(err)
	}
	flush(t, c)
	if got := string(mustGet(t, c, "w3/k24")); got != "24" {
		t.Fatalf("w3/k24 = %s, want 24", got)
	}
	if _, err := c.Get(ctx, "w0/k00"); !errors.Is(err, iotkv.ErrNotFound) {
		t.Fatalf("deleted key: err = %v, want not found", err)
	}
	s := c.Stats()
	if s.QueuedOps != 0 || !s.Connected || s.Acked+s.Coalesced != 101 {
		t.Fatalf("stats after flush: %+v", s)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := c.Put(ctx, "k", json.RawMessage("1")); !errors.Is(err, device.ErrClosed) {
		t.Fatalf("Put after Close: %v", err)
	}
}

var _ = filepath.Join
