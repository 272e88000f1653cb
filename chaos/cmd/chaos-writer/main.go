// Command chaos-writer is the device process of the chaos harness: it runs
// one or more devices through the real device library (durable queue,
// batching, acks) and prints, on standard output, every promise it makes,
// so that a harness that kills it with SIGKILL still knows what was
// promised:
//
//	put DEVICE KEY N TS   Put returned nil: op N is durable in the queue
//	ack DEVICE SEQ        the edge acknowledged batches up to SEQ
//	reconnects DEVICE N   sessions lost since the writer started
//	flushed DEVICE        every queued op is acknowledged (clean exit only)
//
// Each value is {"n":N,"d":DEVICE}; N grows across runs (--base), so a
// later op on a key always carries a larger N. A line is printed only after
// the Put it names returned; a line cut by a kill is ignored by the reader.
//
// SIGTERM (or --count ops per device) stops the writing; the writer then
// flushes for up to --flush-timeout and exits 0 when every device flushed.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/device"
	"github.com/iotkv/iotkv/internal/cliutil"
)

type config struct {
	edge, certsDir, queue string
	devices               []string
	base                  int64
	rate                  float64
	keys, chunk, count    int
	skews                 []time.Duration
	keepalive, flushWait  time.Duration
	reconnectMax          time.Duration
	flushOnly             bool
}

func main() {
	cliutil.Exit("chaos-writer", run(os.Args[1:]))
}

func run(args []string) error {
	fs := flag.NewFlagSet("chaos-writer", flag.ContinueOnError)
	var c config
	var lf cliutil.Log
	lf.Register(fs)
	var devices, skews string
	fs.StringVar(&c.edge, "edge", "", "the edge's MQTT/TLS host:port")
	fs.StringVar(&c.certsDir, "certs", "", "ca.crt, NAME.crt, NAME.key and NAME.password")
	fs.StringVar(&c.queue, "queue", "", "queue root: each device's queue is QUEUE/NAME")
	fs.StringVar(&devices, "devices", "", "device names, comma separated")
	fs.Int64Var(&c.base, "base", 0, "first op number; a multiple of --keys")
	fs.Float64Var(&c.rate, "rate", 50, "ops per second per device")
	fs.IntVar(&c.keys, "keys", 0, "distinct keys per device (0: a new key per op)")
	fs.IntVar(&c.chunk, "chunk", 5, "ops queued before waiting for their fsync")
	fs.IntVar(&c.count, "count", 0, "ops per device, then flush and exit (0: until SIGTERM)")
	fs.StringVar(&skews, "skew", "", "device clock offsets, comma separated, used in turn per op (e.g. 5h,-3h)")
	fs.DurationVar(&c.keepalive, "keepalive", 5*time.Second, "MQTT keepalive")
	fs.DurationVar(&c.reconnectMax, "reconnect-max", time.Second, "longest reconnect delay")
	fs.DurationVar(&c.flushWait, "flush-timeout", 60*time.Second, "how long the final flush may take")
	fs.BoolVar(&c.flushOnly, "flush-only", false, "write nothing: flush what the queues hold and exit")
	if _, err := cliutil.Parse(fs, args); err != nil {
		return err
	}
	for _, d := range strings.Split(devices, ",") {
		if d = strings.TrimSpace(d); d != "" {
			c.devices = append(c.devices, d)
		}
	}
	for _, s := range strings.Split(skews, ",") {
		if s = strings.TrimSpace(s); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				return cliutil.Usagef("--skew %q: %v", s, err)
			}
			c.skews = append(c.skews, d)
		}
	}
	if c.edge == "" || c.certsDir == "" || c.queue == "" || len(c.devices) == 0 || c.rate <= 0 || c.chunk <= 0 {
		return cliutil.Usagef("--edge, --certs, --queue and --devices are required; --rate and --chunk positive")
	}
	if c.keys > 0 && c.base%int64(c.keys) != 0 {
		return cliutil.Usagef("--base must be a multiple of --keys")
	}
	log, err := lf.Logger()
	if err != nil {
		return err
	}
	ctx, stop := cliutil.SignalContext()
	defer stop()
	out := &lineWriter{w: bufio.NewWriter(os.Stdout)}
	var wg sync.WaitGroup
	errs := make([]error, len(c.devices))
	for i, name := range c.devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = runDevice(ctx, c, name, out, log)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// lineWriter serialises whole lines from the devices' goroutines and
// flushes them at once: a line on stdout is a promise kept.
type lineWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (l *lineWriter) lines(ls []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range ls {
		_, _ = io.WriteString(l.w, s)
		_ = l.w.WriteByte('\n')
	}
	_ = l.w.Flush()
}

func runDevice(ctx context.Context, c config, name string, out *lineWriter, log *slog.Logger) error {
	pw, err := cliutil.ReadPassword(filepath.Join(c.certsDir, name+".password"))
	if err != nil {
		return err
	}
	cl, err := device.Open(device.Options{
		Name: name, Password: pw, TLSFiles: certs.PathsFor(c.certsDir, name), Edge: c.edge,
		QueueDir: filepath.Join(c.queue, name), KeepAlive: c.keepalive, AckTimeout: 3 * time.Second,
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: c.reconnectMax, ConnectTimeout: 3 * time.Second, Logger: log,
	})
	if err != nil {
		return err
	}
	defer cl.Close()
	ackDone := make(chan struct{})
	stopAcks := make(chan struct{})
	go func() { // report acknowledged seqs as they move
		defer close(ackDone)
		var last, lastRe uint64
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-stopAcks:
				return
			}
			st := cl.Stats()
			if st.AckedSeq != last {
				last = st.AckedSeq
				out.lines([]string{fmt.Sprintf("ack %s %d", name, last)})
			}
			if st.Reconnects != lastRe {
				lastRe = st.Reconnects
				out.lines([]string{fmt.Sprintf("reconnects %s %d", name, lastRe)})
			}
		}
	}()
	if !c.flushOnly {
		write(ctx, c, cl, name, out)
	}
	fctx, cancel := context.WithTimeout(context.Background(), c.flushWait)
	defer cancel()
	err = cl.Flush(fctx)
	close(stopAcks)
	<-ackDone
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	out.lines([]string{fmt.Sprintf("ack %s %d", name, cl.Stats().AckedSeq), "flushed " + name})
	return nil
}

// write queues ops at c.rate, chunk by chunk, and prints each chunk once
// its last op is durable (the queue is a log: the earlier ones are too).
func write(ctx context.Context, c config, cl *device.Client, name string, out *lineWriter) {
	interval := time.Duration(float64(time.Second) * float64(c.chunk) / c.rate)
	t := time.NewTicker(interval)
	defer t.Stop()
	n := c.base
	for done := 0; c.count == 0 || done < c.count; {
		var lines []string
		var wait func() error
		k := c.chunk
		if c.count > 0 {
			k = min(k, c.count-done)
		}
		for range k {
			key := fmt.Sprintf("k%07d", n)
			if c.keys > 0 {
				key = fmt.Sprintf("k%05d", n%int64(c.keys))
			}
			ts := time.Now()
			if len(c.skews) > 0 {
				ts = ts.Add(c.skews[int(n)%len(c.skews)])
			}
			ms := ts.UnixMilli()
			value, _ := json.Marshal(struct {
				N int64  `json:"n"`
				D string `json:"d"`
			}{n, name})
			w, err := cl.Enqueue(ctx, iotkv.Op{Op: iotkv.OpPut, Key: key, Value: value, TS: &ms})
			if err != nil {
				break // queue full or stopping: this op was not promised
			}
			wait = w
			lines = append(lines, fmt.Sprintf("put %s %s %d %d", name, key, n, ms))
			n++
			done++
		}
		if wait != nil && wait() == nil {
			out.lines(lines)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}
