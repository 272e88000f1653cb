package devicecli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/device"
)

// shell runs commands from in, one per line: put K V [ttl=S], get K, del K, flush,
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
				report(errors.New("usage: put KEY VALUE [ttl=SECONDS]"))
				continue
			}
			op := iotkv.Op{Op: iotkv.OpPut, Key: key}
			value, ttl, err := cutTTL(strings.TrimSpace(value))
			if err != nil {
				report(err)
				continue
			}
			op.Value, op.TTL = ParseValue(value), ttl
			enqueue(op)
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

// cutTTL splits a trailing " ttl=SECONDS" off a put's value.
func cutTTL(value string) (string, *int64, error) {
	i := strings.LastIndex(value, " ttl=")
	if i < 0 {
		return value, nil, nil
	}
	n, err := strconv.ParseInt(value[i+len(" ttl="):], 10, 64)
	if err == nil {
		err = iotkv.ValidateTTL(n)
	}
	if err != nil {
		return "", nil, fmt.Errorf("put: ttl=%s: want an integer from %d to %d seconds", value[i+len(" ttl="):], iotkv.MinTTL, iotkv.MaxTTL)
	}
	return strings.TrimSpace(value[:i]), &n, nil
}
