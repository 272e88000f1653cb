package devicecli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/device"
)

// shell runs commands from in, one per line: put K V, get K, del K, flush,
// quit; and the seed's menu form: w / key / value, r / key, d / key, q.
// Puts and deletes are queued without waiting for each fsync (they are
// made durable together); get and flush wait for everything before them.
// At the end of input or quit it flushes and fails unless every op is
// acknowledged within flushTimeout.
func shell(ctx context.Context, c *device.Client, flushTimeout time.Duration, in io.Reader, out io.Writer, log *slog.Logger) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 4<<10), 1<<20) // grows for long lines
	next := func() (string, bool) {
		if !sc.Scan() {
			return "", false
		}
		return strings.TrimRight(sc.Text(), "\r"), true
	}
	var wait func() error // durability of the last queued op
	failed := 0
	report := func(err error) {
		failed++
		fmt.Fprintln(out, "error:", err)
	}
	enqueue := func(o iotkv.Op) {
		w, err := c.Enqueue(ctx, o)
		if err != nil {
			report(err)
			return
		}
		wait = w
	}
	durable := func() {
		if wait != nil {
			if err := wait(); err != nil {
				report(err)
			}
			wait = nil
		}
	}
	get := func(key string) {
		durable()
		// Read your own writes: what was queued before is on the edge first.
		if err := flushAll(ctx, c, flushTimeout); err != nil {
			log.Warn("get: earlier writes are not acknowledged yet; the value may be older", "err", err)
		}
		rec, err := c.Get(ctx, key)
		switch {
		case errors.Is(err, iotkv.ErrNotFound):
			fmt.Fprintln(out, "(not found)")
		case err != nil:
			report(err)
		default:
			fmt.Fprintln(out, display(rec.Value))
		}
	}
loop:
	for ctx.Err() == nil {
		line, ok := next()
		if !ok {
			break
		}
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		arg = strings.TrimSpace(arg)
		switch cmd {
		case "":
		case "w":
			key, ok1 := next()
			value, ok2 := next()
			if !ok1 || !ok2 {
				report(errors.New("w: the input ended before the key and value"))
				break loop
			}
			enqueue(iotkv.Op{Op: iotkv.OpPut, Key: key, Value: ParseValue(value)})
		case "r":
			key, ok := next()
			if !ok {
				report(errors.New("r: the input ended before the key"))
				break loop
			}
			get(key)
		case "d":
			key, ok := next()
			if !ok {
				report(errors.New("d: the input ended before the key"))
				break loop
			}
			enqueue(iotkv.Op{Op: iotkv.OpDel, Key: key})
		case "put":
			key, value, ok := strings.Cut(arg, " ")
			if !ok {
				report(errors.New("usage: put KEY VALUE"))
				continue
			}
			enqueue(iotkv.Op{Op: iotkv.OpPut, Key: key, Value: ParseValue(strings.TrimSpace(value))})
		case "get":
			if arg == "" {
				report(errors.New("usage: get KEY"))
				continue
			}
			get(arg)
		case "del":
			if arg == "" {
				report(errors.New("usage: del KEY"))
				continue
			}
			enqueue(iotkv.Op{Op: iotkv.OpDel, Key: arg})
		case "flush":
			durable()
			if err := flushAll(ctx, c, flushTimeout); err != nil {
				report(err)
			} else {
				fmt.Fprintln(out, "ok")
			}
		case "q", "quit", "exit":
			break loop
		default:
			report(fmt.Errorf("unknown command %q (put K V, get K, del K, flush, quit; or w, r, d, q)", cmd))
		}
	}
	if err := sc.Err(); err != nil {
		report(fmt.Errorf("read input: %w", err))
	}
	durable()
	if err := flushAll(ctx, c, flushTimeout); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("shell: %d command(s) failed", failed)
	}
	return nil
}
