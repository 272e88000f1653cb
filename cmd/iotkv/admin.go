package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/certs"
	"github.com/iotkv/iotkv/internal/cliutil"
)

func certsCmd(args []string) error {
	if len(args) == 0 {
		return cliutil.Usagef("usage: iotkv certs init|issue|sign|revoke|crl|list --dir D ...")
	}
	switch args[0] {
	case "sign", "revoke", "crl", "list":
		return certsLifecycleCmd(args[0], args[1:])
	}
	fs := flag.NewFlagSet("certs "+args[0], flag.ContinueOnError)
	dir := fs.String("dir", "", "certificate directory (required)")
	force := fs.Bool("force", false, "overwrite existing files")
	switch args[0] {
	case "init":
		if _, err := cliutil.Parse(fs, args[1:]); err != nil {
			return err
		}
		if *dir == "" {
			return cliutil.Usagef("certs init: --dir is required")
		}
		if err := certs.Init(*dir, *force); err != nil {
			return err
		}
		fmt.Printf("wrote %s/ca.crt and %s/ca.key\n", *dir, *dir)
		return nil
	case "issue":
		name := fs.String("name", "", "identity name, the certificate CN (required)")
		role := fs.String("role", "", "edge|master|device|client (required)")
		hosts := fs.String("host", "", "server SANs, comma-separated (default localhost,127.0.0.1,::1)")
		days := fs.Int("days", 825, "validity in days")
		if _, err := cliutil.Parse(fs, args[1:]); err != nil {
			return err
		}
		if *dir == "" || *name == "" || *role == "" {
			return cliutil.Usagef("certs issue: --dir, --name and --role are required")
		}
		var hl []string
		if *hosts != "" {
			hl = strings.Split(*hosts, ",")
		}
		if err := certs.Issue(*dir, certs.Request{Name: *name, Role: *role, Hosts: hl, Days: *days, Force: *force}); err != nil {
			return err
		}
		fmt.Printf("wrote %s/%s.crt and %s/%s.key\n", *dir, *name, *dir, *name)
		return nil
	}
	return cliutil.Usagef("certs: unknown subcommand %q (want init, issue, sign, revoke, crl or list)", args[0])
}

func usersCmd(args []string) error {
	if len(args) == 0 {
		return cliutil.Usagef("usage: iotkv users add|list|del|passwd|disable|enable --file F ...")
	}
	sub := args[0]
	fs := flag.NewFlagSet("users "+sub, flag.ContinueOnError)
	file := fs.String("file", "", "accounts file (required)")
	name := fs.String("name", "", "account name")
	role := fs.String("role", "", "device|reader|writer|admin|master|edge")
	password := fs.String("password", "", "the password")
	stdin := fs.Bool("password-stdin", false, "read the password from standard input")
	cost := fs.Int("cost", accounts.DefaultCost, "bcrypt cost (at least 10)")
	if _, err := cliutil.Parse(fs, args[1:]); err != nil {
		return err
	}
	if *file == "" {
		return cliutil.Usagef("users %s: --file is required", sub)
	}
	f, err := accounts.Load(*file)
	if err != nil {
		return err
	}
	pw := func() (string, error) {
		if *stdin {
			return cliutil.FirstLine(os.Stdin)
		}
		if *password == "" {
			return "", cliutil.Usagef("users %s: --password P or --password-stdin is required", sub)
		}
		return *password, nil
	}
	if sub != "list" && *name == "" {
		return cliutil.Usagef("users %s: --name is required", sub)
	}
	if (sub == "add" || sub == "passwd") && (*cost < accounts.MinCost) {
		return cliutil.Usagef("users %s: --cost %d is below the minimum of %d", sub, *cost, accounts.MinCost)
	}
	switch sub {
	case "list":
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tSTATE")
		for _, a := range f.Accounts {
			state := "enabled"
			if a.Disabled {
				state = "disabled"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", a.Name, a.Role, state)
		}
		return tw.Flush()
	case "add":
		if !iotkv.Role(*role).Valid() {
			return cliutil.Usagef("users add: --role %q: want device, reader, writer, admin, master or edge", *role)
		}
		p, err := pw()
		if err != nil {
			return err
		}
		if err := f.Add(*name, iotkv.Role(*role), p, *cost); err != nil {
			return err
		}
	case "passwd":
		p, err := pw()
		if err != nil {
			return err
		}
		if err := f.Passwd(*name, p, *cost); err != nil {
			return err
		}
	case "del":
		if err := f.Del(*name); err != nil {
			return err
		}
	case "disable", "enable":
		if err := f.SetDisabled(*name, sub == "disable"); err != nil {
			return err
		}
	default:
		return cliutil.Usagef("users: unknown subcommand %q (want add, list, del, passwd, disable or enable)", sub)
	}
	return f.Save(*file)
}
