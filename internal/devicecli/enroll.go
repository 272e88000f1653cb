package devicecli

import (
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/cliutil"
)

// runEnroll makes the device's key and certificate request in --certs D:
// D/NAME.key (0600, never printed) and D/NAME.csr, which the operator signs
// with 'iotkv certs sign'; the signed certificate goes back to D/NAME.crt.
func runEnroll(args []string, stdout io.Writer) error {
	c, _, err := parseEnroll(args, stdout)
	if err != nil {
		return err
	}
	if err := certs.Enroll(c.Key, c.CSR, c.Name, c.Force); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	crt := certs.PathsFor(c.Dir, c.Name)
	fmt.Fprintf(stdout, "wrote %s (private key, mode 0600: it stays here) and %s\n", c.Key, c.CSR)
	fmt.Fprintf(stdout, "sign it where the CA is: iotkv certs sign --dir PKI --csr %s.csr --name %s --role device (writes PKI/%s.crt)\n", c.Name, c.Name, c.Name)
	fmt.Fprintf(stdout, "then copy PKI/%s.crt to %s and PKI/ca.crt to %s\n", c.Name, crt.Cert, crt.CA)
	return nil
}

// enrollConfig is what enroll's flags make.
type enrollConfig struct {
	Name, Dir, Key, CSR string
	Force               bool
}

// parseEnroll reads enroll's flags, and returns the flag set it used.
func parseEnroll(args []string, stdout io.Writer) (*enrollConfig, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("device enroll", flag.ContinueOnError)
	name := fs.String("name", "", "the device's name, the CN of its certificate (required)")
	dir := fs.String("certs", "", "certificate directory for NAME.key and NAME.csr (required)")
	force := fs.Bool("force", false, "replace an existing key (the old certificate stops working)")
	pos, err := cliutil.ParseConfig(fs, args, stdout)
	if err != nil {
		return nil, nil, err
	}
	if len(pos) > 0 {
		return nil, nil, cliutil.Usagef("enroll: unexpected argument %q", pos[0])
	}
	if *name == "" || *dir == "" {
		return nil, nil, cliutil.Usagef("enroll: --name and --certs are required")
	}
	if err := iotkv.ValidateName(*name); err != nil {
		return nil, nil, cliutil.Usagef("enroll: --name: %v", err)
	}
	return &enrollConfig{Name: *name, Dir: *dir, Key: certs.PathsFor(*dir, *name).Key,
		CSR: filepath.Join(*dir, *name+".csr"), Force: *force}, fs, nil
}
