package main

import (
	"flag"
	"io"
	"os"

	"github.com/iotkv/iotkv/internal/cliutil"
	"github.com/iotkv/iotkv/internal/demorun"
)

func demoCmd(args []string) error {
	o, _, err := parseDemo(args, os.Stdout)
	if err != nil {
		return err
	}
	ctx, stop := cliutil.SignalContext()
	defer stop()
	_, err = demorun.Run(ctx, *o)
	return err
}

// parseDemo reads the demo's flags into the options it runs with, and
// returns the flag set it used.
func parseDemo(args []string, stdout *os.File) (*demorun.Options, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	lf := cliutil.Log{}
	lf.Register(fs)
	_ = fs.Set("log-level", "warn") // the demo's own lines are the interface
	dir := fs.String("dir", "demo", "directory for the PKI, accounts and data")
	duration := fs.Duration("duration", 0, "how long the devices write; 0: until Ctrl-C")
	devices := fs.Int("devices", 10, "simulated devices, split over two edges")
	rate := fs.Float64("rate", 5, "ops per second per device")
	if pos, err := cliutil.Parse(fs, args); err != nil {
		return nil, nil, err
	} else if len(pos) > 0 {
		return nil, nil, cliutil.Usagef("demo: unexpected argument %q", pos[0])
	}
	if *devices < 1 || *duration < 0 || *rate <= 0 {
		return nil, nil, cliutil.Usagef("demo: --devices must be at least 1, --duration not negative, --rate positive")
	}
	log, err := lf.Logger()
	if err != nil {
		return nil, nil, err
	}
	st, _ := stdout.Stat()
	var out io.Writer = stdout
	return &demorun.Options{
		Dir: *dir, Duration: *duration, Devices: *devices, Rate: *rate,
		Out: out, TTY: st != nil && st.Mode()&os.ModeCharDevice != 0, Logger: log,
	}, fs, nil
}
