package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
	"github.com/iotkv/iotkv/internal/cliutil"
)

func usersCmd(args []string) error {
	c, _, err := parseUsers(args, os.Stdin)
	if err != nil {
		return err
	}
	f, err := accounts.Load(c.File)
	if err != nil {
		return err
	}
	switch c.Sub {
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
		err = f.Add(c.Name, c.Role, c.Password, c.Cost)
	case "passwd":
		err = f.Passwd(c.Name, c.Password, c.Cost)
	case "del":
		err = f.Del(c.Name)
	case "disable", "enable":
		err = f.SetDisabled(c.Name, c.Sub == "disable")
	}
	if err != nil {
		return err
	}
	return f.Save(c.File)
}

// usersConfig is what a users subcommand's flags make.
type usersConfig struct {
	Sub, File, Name string
	Role            iotkv.Role // add
	Password        string     // add, passwd
	Cost            int        // add, passwd
}

// parseUsers reads `users SUB` and its flags (the password from stdin
// with --password-stdin), and returns the flag set it used. A flag the
// subcommand does not use is refused.
func parseUsers(args []string, stdin io.Reader) (*usersConfig, *flag.FlagSet, error) {
	if len(args) == 0 {
		return nil, nil, cliutil.Usagef("usage: iotkv users add|list|del|passwd|disable|enable --file F ...")
	}
	sub := args[0]
	switch sub {
	case "list", "add", "passwd", "del", "disable", "enable":
	default:
		return nil, nil, cliutil.Usagef("users: unknown subcommand %q (want add, list, del, passwd, disable or enable)", sub)
	}
	fs := flag.NewFlagSet("users "+sub, flag.ContinueOnError)
	file := fs.String("file", "", "accounts file (required)")
	name := fs.String("name", "", "account name")
	role := fs.String("role", "", "add: device|reader|writer|admin|master|edge")
	password := fs.String("password", "", "add, passwd: the password")
	stdinPW := fs.Bool("password-stdin", false, "add, passwd: read the password from standard input")
	cost := fs.Int("cost", accounts.DefaultCost, "add, passwd: bcrypt cost (at least 10)")
	if err := parseNoArgs(fs, args[1:]); err != nil {
		return nil, nil, err
	}
	if *file == "" {
		return nil, nil, cliutil.Usagef("users %s: --file is required", sub)
	}
	c := &usersConfig{Sub: sub, File: *file, Name: *name}
	switch sub {
	case "list":
		if err := cliutil.Refuse(fs, "not used by list", "name", "role", "password", "password-stdin", "cost"); err != nil {
			return nil, nil, err
		}
		return c, fs, nil
	case "add":
		if c.Role = iotkv.Role(*role); !c.Role.Valid() {
			return nil, nil, cliutil.Usagef("users add: --role %q: want device, reader, writer, admin, master or edge", *role)
		}
	case "passwd":
		if err := cliutil.Refuse(fs, "not used by passwd (the role stays)", "role"); err != nil {
			return nil, nil, err
		}
	default: // del, disable, enable
		if err := cliutil.Refuse(fs, "not used by "+sub, "role", "password", "password-stdin", "cost"); err != nil {
			return nil, nil, err
		}
	}
	if *name == "" {
		return nil, nil, cliutil.Usagef("users %s: --name is required", sub)
	}
	if sub == "add" || sub == "passwd" {
		if *cost < accounts.MinCost {
			return nil, nil, cliutil.Usagef("users %s: --cost %d is below the minimum of %d", sub, *cost, accounts.MinCost)
		}
		c.Cost = *cost
		switch {
		case *stdinPW:
			if err := cliutil.Refuse(fs, "give the password once: --password-stdin or --password", "password"); err != nil {
				return nil, nil, err
			}
			p, err := cliutil.FirstLine(stdin)
			if err != nil {
				return nil, nil, err
			}
			c.Password = p
		case *password == "":
			return nil, nil, cliutil.Usagef("users %s: --password P or --password-stdin is required", sub)
		default:
			c.Password = *password
		}
	}
	return c, fs, nil
}
