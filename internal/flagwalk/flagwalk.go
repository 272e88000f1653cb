// Package flagwalk proves, in a command's tests, that every flag it
// accepts does something: each flag of the command's flag set needs a row,
// and each row shows that the flag either changes the configuration the
// command runs with or is refused as a usage error.
package flagwalk

import (
	"errors"
	"flag"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/iotkv/iotkv/internal/cliutil"
)

// Parse is a command's flag parsing: args in, the configuration its run
// step uses out, with the flag set it parsed. The configuration must be
// comparable with reflect.DeepEqual: two parses of the same arguments are
// equal.
type Parse func(args []string) (cfg any, fs *flag.FlagSet, err error)

// Row is what one flag is tried with.
type Row struct {
	// Value is the flag's value; "" gives a boolean flag alone (--force).
	Value string
	// Base replaces the command's base arguments for this row (a flag
	// that needs another mode, such as --store instead of --data).
	Base []string
	// With are flags the row needs beside it (--restore-from for --force).
	With []string
	// Refused: the flag must be refused, a one-line usage error naming it.
	Refused bool
	// Err: the parse must return this error (errors.Is), as
	// --print-config returns cliutil.ErrConfigPrinted.
	Err error
}

// Command is one flag set under test.
type Command struct {
	Name  string   // "edge", "device put"
	Base  []string // arguments that parse: required flags and positionals
	Parse Parse
	Rows  map[string]Row
}

// Walk fails for every flag of c's flag set without a row, for every row
// naming no flag, and for every row whose flag is accepted without
// changing the configuration (against the same arguments without it) or
// not refused as the row says.
func Walk(t *testing.T, c Command) {
	t.Helper()
	cfg0, fs, err := c.Parse(c.Base)
	if err != nil {
		t.Fatalf("%s %s: %v", c.Name, strings.Join(c.Base, " "), err)
	}
	if again, _, err := c.Parse(c.Base); err != nil || !reflect.DeepEqual(cfg0, again) {
		t.Fatalf("%s: two parses of the same arguments differ (err %v): the configuration cannot be compared", c.Name, err)
	}
	known := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) {
		known[f.Name] = true
		if _, ok := c.Rows[f.Name]; !ok {
			t.Errorf("%s --%s has no row: show that it changes the configuration or is refused", c.Name, f.Name)
		}
	})
	names := make([]string, 0, len(c.Rows))
	for n := range c.Rows {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		row := c.Rows[name]
		if !known[name] {
			t.Errorf("%s: a row for --%s, which the command does not take", c.Name, name)
			continue
		}
		base := c.Base
		if row.Base != nil {
			base = row.Base
		}
		base = append(append([]string(nil), base...), row.With...)
		arg := "--" + name
		if row.Value != "" {
			arg += "=" + row.Value
		}
		args := append(append([]string(nil), base...), arg)
		line := c.Name + " " + strings.Join(args, " ")
		cfg, _, err := c.Parse(args)
		switch {
		case row.Refused:
			var ue *cliutil.UsageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--"+name) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s: %v; want a one-line usage error naming --%s", line, err, name)
			}
		case row.Err != nil:
			if !errors.Is(err, row.Err) {
				t.Errorf("%s: %v; want %v", line, err, row.Err)
			}
		case err != nil:
			t.Errorf("%s: %v", line, err)
		default:
			// The same arguments without the flag; when those do not
			// parse alone (--password-stdin without --password), the
			// command's base.
			want, _, err := c.Parse(base)
			if err != nil {
				want = cfg0
			}
			if reflect.DeepEqual(cfg, want) {
				t.Errorf("%s: the same configuration as without --%s: accepted and ignored", line, name)
			}
		}
	}
}
