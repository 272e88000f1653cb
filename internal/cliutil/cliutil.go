// Package cliutil holds what every iotkv command shares: flag parsing with
// flags before or after arguments, logging flags, password files, exit
// codes and signal handling.
package cliutil

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
	"os/signal"
	"strings"
	"syscall"

	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/atomicfile"
)

// UsageError is a mistake on the command line: exit status 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef builds a UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// Exit prints err (one line) and exits: 0 for nil (and ErrConfigPrinted),
// 2 for usage errors, 1 otherwise.
func Exit(prog string, err error) {
	if err == nil || errors.Is(err, ErrConfigPrinted) {
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
	var ue *UsageError
	if errors.As(err, &ue) || errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	os.Exit(1)
}

// Log holds the logging flags every command takes.
type Log struct {
	Level, Format string
}

// Register adds --log-level and --log-format to fs.
func (l *Log) Register(fs *flag.FlagSet) {
	fs.StringVar(&l.Level, "log-level", "info", "debug|info|warn|error")
	fs.StringVar(&l.Format, "log-format", "text", "text|json")
}

// Logger builds the slog logger on standard error.
func (l *Log) Logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.Level)); err != nil {
		return nil, Usagef("--log-level %q: want debug, info, warn or error", l.Level)
	}
	o := &slog.HandlerOptions{Level: lvl}
	switch l.Format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, o)), nil
	}
	return nil, Usagef("--log-format %q: want text or json", l.Format)
}

// Parse parses args with flags allowed before, between and after the
// positional arguments, and returns the positional ones.
func Parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stderr)
				fs.PrintDefaults()
				return nil, Usagef("usage: %s [flags]", fs.Name())
			}
			return nil, Usagef("%s: %v", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// ReadPassword returns the first line of file, or $IOTKV_PASSWORD when file
// is empty.
func ReadPassword(file string) (string, error) {
	if file == "" {
		if p := os.Getenv("IOTKV_PASSWORD"); p != "" {
			return p, nil
		}
		return "", Usagef("a password is required: --password-file F or IOTKV_PASSWORD")
	}
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("read password file: %w", err)
	}
	defer f.Close()
	return FirstLine(f)
}

// FirstLine reads the first line of r without its line ending.
func FirstLine(r io.Reader) (string, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read password: %w", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("read password: empty")
	}
	return line, nil
}

// SignalContext is cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// WriteAddrFile writes the bound addresses as JSON when path is set.
func WriteAddrFile(path string, addrs map[string]string) error {
	if path == "" {
		return nil
	}
	data, err := json.Marshal(addrs)
	if err != nil {
		return fmt.Errorf("write addr file: %w", err)
	}
	if err := atomicfile.Write(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write addr file: %w", err)
	}
	return nil
}

// TLSFlags are --certs D and the --ca/--cert/--key overrides every
// command that speaks TLS takes.
type TLSFlags struct{ Dir, CA, Cert, Key string }

// Register adds the flags to fs.
func (t *TLSFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&t.Dir, "certs", "", "certificate directory holding ca.crt, NAME.crt, NAME.key")
	fs.StringVar(&t.CA, "ca", "", "CA certificate (overrides --certs)")
	fs.StringVar(&t.Cert, "cert", "", "certificate (overrides --certs)")
	fs.StringVar(&t.Key, "key", "", "private key (overrides --certs)")
}

// ServerPaths is Paths for a server, with the CRL it enforces: crl, or
// D/crl.pem of --certs D (which may not exist yet: the server picks it up
// when it appears). A crl given explicitly must exist.
func (t *TLSFlags) ServerPaths(name, crl string) (certs.Paths, error) {
	p, err := t.Paths(name)
	if err != nil {
		return p, err
	}
	if crl != "" {
		if _, err := os.Stat(crl); err != nil {
			return p, Usagef("--crl: %v", err)
		}
		p.CRL = crl
	}
	return p, nil
}

// HangupSignals delivers SIGHUP (reload the files now) until stop.
func HangupSignals() (<-chan os.Signal, func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch, func() { signal.Stop(ch) }
}

// Paths returns the files of identity name.
func (t *TLSFlags) Paths(name string) (certs.Paths, error) {
	p := certs.PathsFor(t.Dir, name)
	if t.Dir == "" {
		p.CRL = ""
	}
	if t.CA != "" {
		p.CA = t.CA
	}
	if t.Cert != "" {
		p.Cert = t.Cert
	}
	if t.Key != "" {
		p.Key = t.Key
	}
	if t.Dir == "" && (t.CA == "" || t.Cert == "" || t.Key == "") {
		return p, Usagef("--certs D (or all of --ca, --cert, --key) is required")
	}
	return p, nil
}

// Refuse is a usage error when any of names was set (on the command line,
// or by the environment or the file of ParseConfig): a flag that would be
// accepted and ignored in this combination. why ends the one-line message
// ("--max-pending: not used with --store").
func Refuse(fs *flag.FlagSet, why string, names ...string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return RefuseGiven(fs, set, why, names...)
}

// RefuseGiven is Refuse for the flags in given only: those of the command
// line, as ParseConfigCommandLine returns them, where a configuration
// shared by several subcommands may set a flag one of them does not use.
func RefuseGiven(fs *flag.FlagSet, given map[string]bool, why string, names ...string) error {
	var set []string
	for _, n := range names {
		if given[n] {
			set = append(set, "--"+n)
		}
	}
	if len(set) == 0 {
		return nil
	}
	return Usagef("%s: %s: %s", fs.Name(), strings.Join(set, ", "), why)
}
