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
	fs := flag.NewFlagSet("device enroll", flag.ContinueOnError)
	name := fs.String("name", "", "the device's name, the CN of its certificate (required)")
	dir := fs.String("certs", "", "certificate directory for NAME.key and NAME.csr (required)")
	force := fs.Bool("force", false, "replace an existing key (the old certificate stops working)")
	pos, err := cliutil.ParseConfig(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return cliutil.Usagef("enroll: unexpected argument %q", pos[0])
	}
	if *name == "" || *dir == "" {
		return cliutil.Usagef("enroll: --name and --certs are required")
	}
	if err := iotkv.ValidateName(*name); err != nil {
		return cliutil.Usagef("enroll: --name: %v", err)
	}
	p := certs.PathsFor(*dir, *name)
	csr := filepath.Join(*dir, *name+".csr")
	if err := certs.Enroll(p.Key, csr, *name, *force); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s (private key, mode 0600: it stays here) and %s\n", p.Key, csr)
	fmt.Fprintf(stdout, "sign it where the CA is: iotkv certs sign --dir PKI --csr %s.csr --name %s --role device (writes PKI/%s.crt)\n", *name, *name, *name)
	fmt.Fprintf(stdout, "then copy PKI/%s.crt to %s and PKI/ca.crt to %s\n", *name, p.Cert, p.CA)
	return nil
}
