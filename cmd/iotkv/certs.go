package main

import (
	"flag"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/cliutil"
)

func certsCmd(args []string) error {
	c, _, err := parseCerts(args)
	if err != nil {
		return err
	}
	switch c.Sub {
	case "init":
		if err := certs.Init(c.Dir, c.Request.Force); err != nil {
			return err
		}
		fmt.Printf("wrote %s/ca.crt and %s/ca.key\n", c.Dir, c.Dir)
	case "issue":
		if err := certs.Issue(c.Dir, c.Request); err != nil {
			return err
		}
		fmt.Printf("wrote %s/%s.crt and %s/%s.key\n", c.Dir, c.Request.Name, c.Dir, c.Request.Name)
	case "sign":
		path, err := certs.Sign(c.Dir, certs.SignRequest{CSR: c.CSR, Out: c.Out, Request: c.Request})
		if err != nil {
			return err
		}
		fmt.Printf("wrote %s\n", path)
	case "revoke":
		res, err := certs.Revoke(c.Dir, c.RevokeName, c.Serial, c.CRLDays)
		if err != nil {
			return err
		}
		what := "revoked"
		if res.AlreadyRevoked {
			what = "already revoked"
		}
		fmt.Printf("%s serial %s; wrote %s (next update %s)\n", what, certs.FormatSerial(res.Serial), res.Path, res.NextUpdate.Format(time.RFC3339))
	case "crl":
		next, err := certs.RefreshCRL(c.Dir, c.CRLDays)
		if err != nil {
			return err
		}
		fmt.Printf("wrote %s/%s (next update %s)\n", c.Dir, certs.CRLFile, next.Format(time.RFC3339))
	case "list":
		return certsList(c.Dir)
	}
	return nil
}

// certsConfig is what a certs subcommand's flags make.
type certsConfig struct {
	Sub     string
	Dir     string
	Request certs.Request // init: Force; issue and sign: all of it
	CSR     []byte        // sign
	Out     string        // sign
	// revoke: one of RevokeName or Serial; revoke and crl: CRLDays.
	RevokeName string
	Serial     *big.Int
	CRLDays    int
}

// parseCerts reads `certs SUB` and its flags, and returns the flag set it
// used.
func parseCerts(args []string) (*certsConfig, *flag.FlagSet, error) {
	if len(args) == 0 {
		return nil, nil, cliutil.Usagef("usage: iotkv certs init|issue|sign|revoke|crl|list --dir D ...")
	}
	sub := args[0]
	c := &certsConfig{Sub: sub}
	fs := flag.NewFlagSet("certs "+sub, flag.ContinueOnError)
	fs.StringVar(&c.Dir, "dir", "", "certificate directory holding ca.crt and ca.key (required)")
	var csrFile, hosts string
	var serial string
	switch sub {
	case "init":
		fs.BoolVar(&c.Request.Force, "force", false, "overwrite existing files")
	case "issue", "sign":
		fs.StringVar(&c.Request.Name, "name", "", "identity name, the certificate CN (required)")
		fs.StringVar(&c.Request.Role, "role", "", "edge|master|device|client (required)")
		fs.StringVar(&hosts, "host", "", "server SANs for edge and master, comma-separated (default localhost,127.0.0.1,::1)")
		fs.IntVar(&c.Request.Days, "days", 825, "validity in days")
		fs.BoolVar(&c.Request.Force, "force", false, "overwrite an existing certificate")
		if sub == "sign" {
			fs.StringVar(&csrFile, "csr", "", "certificate request (PEM) made on the device (required); its CN must equal --name")
			fs.StringVar(&c.Out, "out", "", "where to write the certificate (default D/NAME.crt)")
		}
	case "revoke":
		fs.StringVar(&c.RevokeName, "name", "", "revoke D/NAME.crt")
		fs.StringVar(&serial, "serial", "", "revoke the certificate with this serial (hex, as 'openssl x509 -serial' prints it)")
		fs.IntVar(&c.CRLDays, "days", certs.DefaultCRLDays, "the CRL's next update, in days from now")
	case "crl":
		fs.IntVar(&c.CRLDays, "days", certs.DefaultCRLDays, "the CRL's next update, in days from now")
	case "list":
	default:
		return nil, nil, cliutil.Usagef("certs: unknown subcommand %q (want init, issue, sign, revoke, crl or list)", sub)
	}
	if err := parseNoArgs(fs, args[1:]); err != nil {
		return nil, nil, err
	}
	if c.Dir == "" {
		return nil, nil, cliutil.Usagef("certs %s: --dir is required", sub)
	}
	if hosts != "" {
		c.Request.Hosts = strings.Split(hosts, ",")
	}
	switch sub {
	case "issue", "sign":
		if c.Request.Name == "" || c.Request.Role == "" || (sub == "sign" && csrFile == "") {
			return nil, nil, cliutil.Usagef("certs %s: --dir, --name and --role are required (and --csr for sign)", sub)
		}
		if sub == "sign" {
			var err error
			if c.CSR, err = readLimited(csrFile, certs.MaxCSRBytes); err != nil {
				return nil, nil, err
			}
		}
	case "revoke":
		if (c.RevokeName == "") == (serial == "") {
			return nil, nil, cliutil.Usagef("certs revoke: --dir and one of --name or --serial are required")
		}
		if serial != "" {
			var err error
			if c.Serial, err = certs.ParseSerial(serial); err != nil {
				return nil, nil, cliutil.Usagef("certs revoke: --serial: %v", err)
			}
		}
	}
	return c, fs, nil
}

// certsList prints the certificates of dir and the state of its CRL.
func certsList(dir string) error {
	now := time.Now()
	list, crl, err := certs.List(dir, now)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tNAME\tROLE\tSERIAL\tNOT AFTER\tDAYS LEFT\tSTATE")
	for _, c := range list {
		if c.Name == "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t%s\n", c.File, c.State)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", c.File, c.Name, c.Role, c.Serial,
			c.NotAfter.UTC().Format(time.RFC3339), int(c.NotAfter.Sub(now).Hours()/24), c.State)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	switch {
	case !crl.Present:
		fmt.Printf("crl: none (%s/%s)\n", dir, certs.CRLFile)
	case now.After(crl.NextUpdate):
		fmt.Printf("crl: %d revoked, next update %s: PAST, run 'iotkv certs crl --dir %s'\n", crl.Revoked, crl.NextUpdate.UTC().Format(time.RFC3339), dir)
	default:
		fmt.Printf("crl: %d revoked, next update %s\n", crl.Revoked, crl.NextUpdate.UTC().Format(time.RFC3339))
	}
	return nil
}

func parseNoArgs(fs *flag.FlagSet, args []string) error {
	pos, err := cliutil.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return cliutil.Usagef("%s: unexpected argument %q", fs.Name(), pos[0])
	}
	return nil
}

// readLimited reads a file the user names, refusing one above limit bytes.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: more than %d bytes", path, limit)
	}
	return data, nil
}
