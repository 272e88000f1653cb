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

// certsLifecycleCmd is certs sign, revoke, crl and list: what a PKI needs
// after init and issue.
func certsLifecycleCmd(sub string, args []string) error {
	fs := flag.NewFlagSet("certs "+sub, flag.ContinueOnError)
	dir := fs.String("dir", "", "certificate directory holding ca.crt and ca.key (required)")
	switch sub {
	case "sign":
		csrFile := fs.String("csr", "", "certificate request (PEM) made on the device (required)")
		name := fs.String("name", "", "identity name: the request's CN must equal it (required)")
		role := fs.String("role", "", "edge|master|device|client (required)")
		hosts := fs.String("host", "", "server SANs for edge and master, comma-separated (default localhost,127.0.0.1,::1)")
		days := fs.Int("days", 825, "validity in days")
		out := fs.String("out", "", "where to write the certificate (default D/NAME.crt)")
		force := fs.Bool("force", false, "overwrite an existing certificate")
		if err := parseNoArgs(fs, args); err != nil {
			return err
		}
		if *dir == "" || *csrFile == "" || *name == "" || *role == "" {
			return cliutil.Usagef("certs sign: --dir, --csr, --name and --role are required")
		}
		csr, err := readLimited(*csrFile, certs.MaxCSRBytes)
		if err != nil {
			return err
		}
		var hl []string
		if *hosts != "" {
			hl = strings.Split(*hosts, ",")
		}
		path, err := certs.Sign(*dir, certs.SignRequest{CSR: csr, Out: *out,
			Request: certs.Request{Name: *name, Role: *role, Hosts: hl, Days: *days, Force: *force}})
		if err != nil {
			return err
		}
		fmt.Printf("wrote %s\n", path)
		return nil
	case "revoke":
		name := fs.String("name", "", "revoke D/NAME.crt")
		serial := fs.String("serial", "", "revoke the certificate with this serial (hex, as 'openssl x509 -serial' prints it)")
		days := fs.Int("days", certs.DefaultCRLDays, "the CRL's next update, in days from now")
		if err := parseNoArgs(fs, args); err != nil {
			return err
		}
		if *dir == "" || (*name == "") == (*serial == "") {
			return cliutil.Usagef("certs revoke: --dir and one of --name or --serial are required")
		}
		var n *big.Int
		if *serial != "" {
			var err error
			if n, err = certs.ParseSerial(*serial); err != nil {
				return cliutil.Usagef("certs revoke: --serial: %v", err)
			}
		}
		res, err := certs.Revoke(*dir, *name, n, *days)
		if err != nil {
			return err
		}
		what := "revoked"
		if res.AlreadyRevoked {
			what = "already revoked"
		}
		fmt.Printf("%s serial %s; wrote %s (next update %s)\n", what, certs.FormatSerial(res.Serial), res.Path, res.NextUpdate.Format(time.RFC3339))
		return nil
	case "crl":
		days := fs.Int("days", certs.DefaultCRLDays, "the CRL's next update, in days from now")
		if err := parseNoArgs(fs, args); err != nil {
			return err
		}
		if *dir == "" {
			return cliutil.Usagef("certs crl: --dir is required")
		}
		next, err := certs.RefreshCRL(*dir, *days)
		if err != nil {
			return err
		}
		fmt.Printf("wrote %s/%s (next update %s)\n", *dir, certs.CRLFile, next.Format(time.RFC3339))
		return nil
	case "list":
		if err := parseNoArgs(fs, args); err != nil {
			return err
		}
		if *dir == "" {
			return cliutil.Usagef("certs list: --dir is required")
		}
		now := time.Now()
		list, crl, err := certs.List(*dir, now)
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
			fmt.Printf("crl: none (%s/%s)\n", *dir, certs.CRLFile)
		case now.After(crl.NextUpdate):
			fmt.Printf("crl: %d revoked, next update %s: PAST, run 'iotkv certs crl --dir %s'\n", crl.Revoked, crl.NextUpdate.UTC().Format(time.RFC3339), *dir)
		default:
			fmt.Printf("crl: %d revoked, next update %s\n", crl.Revoked, crl.NextUpdate.UTC().Format(time.RFC3339))
		}
		return nil
	}
	return cliutil.Usagef("certs: unknown subcommand %q", sub)
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
