package devicecli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/iotkv/iotkv/device"
	"github.com/iotkv/iotkv/device/sim"
	"github.com/iotkv/iotkv/internal/cliutil"
)

// simulateConfig is what simulate's flags make: sim.Options but for
// Device (a function: it sets Device's queue and batching fields on every
// sensor's options) and Progress (set when standard error is a terminal).
type simulateConfig struct {
	Sim    sim.Options
	Device device.Options
}

// parseSimulate reads simulate's flags, and returns the flag set it used.
func parseSimulate(args []string, stdout io.Writer) (*simulateConfig, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("device simulate", flag.ContinueOnError)
	var f flags
	f.register(fs)
	devices := fs.Int("devices", 10, "virtual sensors, each with its own identity and connection")
	rate := fs.Float64("rate", 1, "ops per second per sensor")
	duration := fs.Duration("duration", 10*time.Second, "how long the sensors write (the first Ctrl-C or SIGTERM ends it early, then the flush and --verify run; a second one stops them)")
	verify := fs.Bool("verify", false, "read every key back over REST and count lost and mismatched ones")
	prefix := fs.String("prefix", "sim-", "sensor names are PREFIX0001, PREFIX0002, ...")
	acc := fs.String("accounts", "", "accounts file: with --certs holding ca.key, missing identities are created")
	keys := fs.Int("keys", 0, "distinct keys per sensor (0: every op writes a new key)")
	pos, given, err := cliutil.ParseConfigCommandLine(fs, args, stdout)
	if err != nil {
		return nil, nil, err
	}
	if len(pos) > 0 {
		return nil, nil, cliutil.Usagef("device simulate: unexpected argument %q", pos[0])
	}
	// Every sensor has its own identity: PREFIXNNNN, its files in --certs.
	// A device configuration file shared with put and get may name one
	// device: only the command line is refused.
	if err := cliutil.RefuseGiven(fs, given, "not used by simulate: every sensor has its own name (--prefix) and files in --certs", "name", "ca", "cert", "key"); err != nil {
		return nil, nil, err
	}
	if !*verify {
		if err := cliutil.RefuseGiven(fs, given, "only with --verify (simulate reads nothing back without it)", "rest"); err != nil {
			return nil, nil, err
		}
	}
	if f.tls.Dir == "" {
		return nil, nil, cliutil.Usagef("device simulate: --certs D is required")
	}
	if *devices < 1 || *rate <= 0 || *duration <= 0 {
		return nil, nil, cliutil.Usagef("device simulate: --devices, --rate and --duration must be positive")
	}
	log, err := f.log.Logger()
	if err != nil {
		return nil, nil, err
	}
	password := ""
	if f.passwordFile != "" || os.Getenv("IOTKV_PASSWORD") != "" {
		if password, err = cliutil.ReadPassword(f.passwordFile); err != nil {
			return nil, nil, err
		}
	}
	if f.queue == "" {
		f.queue = "iotkv-queue"
	}
	c := &simulateConfig{Sim: sim.Options{
		Devices: *devices, Rate: *rate, Duration: *duration, Prefix: *prefix,
		CertsDir: f.tls.Dir, AccountsFile: *acc, Password: password,
		Edge: f.edge, QueueDir: f.queue, Keys: *keys, Verify: *verify,
		FlushTimeout: f.flushTimeout, Logger: log,
	}}
	if *verify {
		c.Sim.REST = f.rest
	}
	f.deviceOptions(&c.Device)
	return c, fs, nil
}

func runSimulate(args []string, stdout, stderr io.Writer) error {
	c, _, err := parseSimulate(args, stdout)
	if err != nil {
		return err
	}
	// The first SIGINT or SIGTERM ends the writing early, as the end of
	// --duration would: the sensors flush and --verify still reads every
	// key back. A second one cancels the run.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	early := make(chan struct{})
	go func() { // ends with the run (cancel) at the latest
		select {
		case <-sigs:
			close(early)
		case <-ctx.Done():
			return
		}
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	opts := c.Sim
	opts.Stop = early
	opts.Device = func(o *device.Options) {
		o.QueueMaxBytes, o.Linger, o.Window = c.Device.QueueMaxBytes, c.Device.Linger, c.Device.Window
	}
	tty := isTerminal(stderr)
	if tty {
		opts.Progress = func(p sim.Progress) {
			fmt.Fprintf(stderr, "\r%6.1fs  connected %d/%d  written %d  acked %d  queued %d  failed %d ",
				p.Elapsed.Seconds(), p.Connected, p.Devices, p.Written, p.Acked, p.Queued, p.Failed)
		}
	}
	res, err := sim.Run(ctx, opts)
	if tty {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "simulate: devices=%d written=%d acked=%d rejected=%d failed=%d elapsed=%v ops/s=%.0f\n",
		res.Devices, res.Written, res.Acked, res.Rejected, res.Failed, res.Elapsed.Round(time.Millisecond),
		float64(res.Written)/res.Elapsed.Seconds())
	if opts.Verify {
		fmt.Fprintln(stdout, res.VerifyLine())
		if res.Lost+res.Mismatched > 0 {
			return fmt.Errorf("simulate: %d keys lost and %d mismatched", res.Lost, res.Mismatched)
		}
	}
	if res.Acked < res.Written {
		return fmt.Errorf("simulate: %d of %d ops not acknowledged within %v", res.Written-res.Acked, res.Written, opts.FlushTimeout)
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
