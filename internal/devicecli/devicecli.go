// Package devicecli is the device subcommands, shared by iotkv and the
// slim iotkv-device binary: put, get, del, shell, simulate and enroll.
package devicecli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/device"
	"github.com/iotkv/iotkv/internal/cliutil"
)

const usage = `usage: device put [--ttl S] KEY VALUE | get KEY | del KEY | history KEY [--since 1h] | shell | simulate | enroll [flags]

flags (before or after the arguments):
  --name N --password-file F --certs D [--ca F --cert F --key F]
  --edge host:8883 --rest https://host:8443 --queue DIR
  --queue-max-bytes B --flush-timeout T --log-level L --log-format F
simulate: --devices N --rate R --duration T [--verify] [--prefix sim-] [--accounts F] [--keys K]
enroll: --name N --certs D [--force]  (makes D/N.key and D/N.csr for 'iotkv certs sign')`

// Run runs `device SUBCOMMAND ...` with the process's standard streams.
func Run(args []string) error {
	return RunIO(args, os.Stdin, os.Stdout, os.Stderr)
}

// RunIO is Run with explicit streams.
func RunIO(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return cliutil.Usagef("device: a subcommand is required")
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "put", "del", "get", "shell", "history":
		return runDevice(sub, rest, stdin, stdout)
	case "simulate":
		return runSimulate(rest, stdout, stderr)
	case "enroll":
		return runEnroll(rest, stdout)
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	return cliutil.Usagef("device: unknown subcommand %q (want put, get, del, history, shell, simulate or enroll)", sub)
}

// flags are what every device subcommand takes.
type flags struct {
	log                  cliutil.Log
	name, passwordFile   string
	tls                  cliutil.TLSFlags
	edge, rest, queue    string
	queueMax             int64
	flushTimeout, linger time.Duration
	window               int
}

func (f *flags) register(fs *flag.FlagSet) {
	f.log.Register(fs)
	fs.StringVar(&f.name, "name", "", "device name: the account and the certificate CN")
	fs.StringVar(&f.passwordFile, "password-file", "", "password file (first line); IOTKV_PASSWORD as fallback")
	f.tls.Register(fs)
	fs.StringVar(&f.edge, "edge", "localhost:8883", "the edge's MQTT/TLS address")
	fs.StringVar(&f.rest, "rest", "https://localhost:8443", "the edge's HTTPS address")
	fs.StringVar(&f.queue, "queue", "", "durable queue directory (default ./iotkv-queue/NAME)")
	fs.Int64Var(&f.queueMax, "queue-max-bytes", 64<<20, "bytes of unacknowledged ops the queue holds before puts fail")
	fs.DurationVar(&f.flushTimeout, "flush-timeout", 30*time.Second, "how long to wait for the edge's acknowledgements before exiting")
	fs.DurationVar(&f.linger, "linger", 5*time.Millisecond, "how long ops wait to fill a batch while others are in flight")
	fs.IntVar(&f.window, "window", 8, "batches in flight")
}

// deviceOptions sets what the queue and batching flags feed: the same for
// one device and for every simulated sensor.
func (f *flags) deviceOptions(o *device.Options) {
	o.QueueMaxBytes, o.Linger, o.Window = f.queueMax, f.linger, f.window
}

// deviceConfig is what the flags of put, get, del, history and shell make.
type deviceConfig struct {
	Sub  string
	Args []string
	// Options opens the client of put, del and shell; get and history
	// use its Name, Password, TLSFiles, REST and Logger.
	Options      device.Options
	FlushTimeout time.Duration // put, del, shell
	Since        time.Duration // history
	TTL          int64         // put; 0: never expires
}

// readOnly are the subcommands that read over REST and open no queue.
func readOnly(sub string) bool { return sub == "get" || sub == "history" }

// parseDevice reads `device SUB` flags and arguments, and returns the
// flag set it used. A write-path flag given to get or history on the
// command line is refused; from a configuration file (shared by every
// subcommand) it is left alone.
func parseDevice(sub string, args []string, stdout io.Writer) (*deviceConfig, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("device "+sub, flag.ContinueOnError)
	var f flags
	f.register(fs)
	c := &deviceConfig{Sub: sub}
	if sub == "history" {
		fs.DurationVar(&c.Since, "since", 0, "history: only ops of the last DURATION (e.g. 1h, 30m); default all the edge keeps")
	}
	if sub == "put" {
		fs.Int64Var(&c.TTL, "ttl", 0, "make the key expire this many seconds after the edge commits it (1 s to 10 years; 0: never)")
	}
	pos, given, err := cliutil.ParseConfigCommandLine(fs, args, stdout)
	if err != nil {
		return nil, nil, err
	}
	if c.Since < 0 {
		return nil, nil, cliutil.Usagef("device history: --since must not be negative")
	}
	want := map[string]int{"put": 2, "del": 1, "get": 1, "history": 1, "shell": 0}[sub]
	if len(pos) != want {
		return nil, nil, cliutil.Usagef("device %s: want %d argument(s), got %d\n%s", sub, want, len(pos), usage)
	}
	c.Args = pos
	if readOnly(sub) {
		if err := cliutil.RefuseGiven(fs, given, "not used by "+sub+" (it reads over --rest and queues nothing)", "edge", "queue", "queue-max-bytes", "flush-timeout", "linger", "window"); err != nil {
			return nil, nil, err
		}
	}
	if sub == "put" || sub == "del" {
		if err := cliutil.RefuseGiven(fs, given, "not used by "+sub+" (it writes over --edge and reads nothing)", "rest"); err != nil {
			return nil, nil, err
		}
	}
	if f.name == "" {
		return nil, nil, cliutil.Usagef("device %s: --name is required", sub)
	}
	if c.TTL != 0 {
		if err := iotkv.ValidateTTL(c.TTL); err != nil {
			return nil, nil, cliutil.Usagef("device put: --ttl: %v", err)
		}
	}
	if err := iotkv.ValidateName(f.name); err != nil {
		return nil, nil, cliutil.Usagef("device %s: --name: %v", sub, err)
	}
	log, err := f.log.Logger()
	if err != nil {
		return nil, nil, err
	}
	paths, err := f.tls.Paths(f.name)
	if err != nil {
		return nil, nil, err
	}
	password, err := cliutil.ReadPassword(f.passwordFile)
	if err != nil {
		return nil, nil, err
	}
	c.Options = device.Options{Name: f.name, Password: password, TLSFiles: paths, REST: f.rest, Logger: log}
	if !readOnly(sub) {
		c.FlushTimeout = f.flushTimeout
		if f.queue == "" {
			f.queue = filepath.Join("iotkv-queue", f.name)
		}
		c.Options.Edge, c.Options.QueueDir = f.edge, f.queue
		f.deviceOptions(&c.Options)
	}
	return c, fs, nil
}

func runDevice(sub string, args []string, stdin io.Reader, stdout io.Writer) error {
	c, _, err := parseDevice(sub, args, stdout)
	if err != nil {
		return err
	}
	o, pos, log := c.Options, c.Args, c.Options.Logger
	ctx, stop := cliutil.SignalContext()
	defer stop()
	if readOnly(sub) {
		tc, err := certs.ClientConfig(o.TLSFiles)
		if err != nil {
			return err
		}
		log.Debug("reading over REST", "rest", o.REST, "name", o.Name, "key", pos[0], "since", c.Since)
		r := device.NewReader(o.REST, o.Name, o.Password, tc)
		defer r.CloseIdleConnections()
		if sub == "history" {
			return printHistory(ctx, r, pos[0], c.Since, stdout)
		}
		rec, err := r.Get(ctx, pos[0])
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, display(rec.Value))
		return nil
	}
	cl, err := device.Open(o)
	if err != nil {
		return err
	}
	defer cl.Close()
	switch sub {
	case "put":
		op := iotkv.Op{Op: iotkv.OpPut, Key: pos[0], Value: ParseValue(pos[1])}
		if c.TTL != 0 {
			ttl := c.TTL
			op.TTL = &ttl
		}
		wait, err := cl.Enqueue(ctx, op)
		if err == nil {
			err = wait()
		}
		if err != nil {
			return err
		}
	case "del":
		if err := cl.Delete(ctx, pos[0]); err != nil {
			return err
		}
	case "shell":
		return shell(ctx, cl, c.FlushTimeout, stdin, stdout, log)
	}
	return flushAll(ctx, cl, c.FlushTimeout)
}

// printHistory prints one op a line: the edge's commit time (UTC), the
// op, and the value for a put.
func printHistory(ctx context.Context, r *device.Reader, key string, since time.Duration, out io.Writer) error {
	var from int64
	if since > 0 {
		from = time.Now().Add(-since).UnixMilli()
	}
	items, err := r.History(ctx, key, from)
	if err != nil {
		return err
	}
	for _, it := range items {
		line := time.UnixMilli(it.At).UTC().Format("2006-01-02T15:04:05.000Z") + " " + it.Op
		if it.Op == iotkv.OpPut {
			line += " " + string(it.Value)
		}
		fmt.Fprintln(out, line)
	}
	return nil
}

// flushAll waits up to timeout for every queued op to be acknowledged.
func flushAll(ctx context.Context, c *device.Client, timeout time.Duration) error {
	if c.Stats().QueuedOps == 0 {
		return c.Flush(ctx) // returns at once: no timer to arm
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.Flush(fctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%d ops not acknowledged by the edge within %v (they stay queued for the next run): %w", c.Stats().QueuedOps, timeout, err)
		}
		return err
	}
	return nil
}

// ParseValue turns a command-line value into JSON: valid JSON is taken as
// it is, anything else becomes a JSON string.
func ParseValue(s string) json.RawMessage {
	if t := strings.TrimSpace(s); t != "" && json.Valid([]byte(t)) {
		return json.RawMessage(t)
	}
	v, _ := json.Marshal(s)
	return v
}

// display prints a value as the seed's /get does: a string as itself,
// anything else as its JSON text.
func display(v json.RawMessage) string {
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s
	}
	return string(v)
}
