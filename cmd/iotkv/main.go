// Command iotkv is every iotkv subcommand in one binary: certs, users,
// edge, master, device and demo.
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/iotkv/iotkv/internal/cliutil"
	"github.com/iotkv/iotkv/internal/devicecli"
)

const usage = `usage: iotkv COMMAND [flags]

commands:
  certs init|issue|sign|revoke|crl|list   make and keep the PKI
  users add|list|del|passwd|disable|enable   manage the accounts file
  edge                 run an edge server
  master               run the backup master
  device put|get|del|shell|simulate   act as a device
  demo                 run a whole system on loopback
  healthcheck          exit 0 when a server's /readyz answers 200
  version              print the version`

func main() {
	cliutil.Exit("iotkv", run(os.Args[1:]))
}

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, usage)
		return cliutil.Usagef("a command is required")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "certs":
		return certsCmd(rest)
	case "users":
		return usersCmd(rest)
	case "edge":
		return edgeCmd(rest)
	case "master":
		return masterCmd(rest)
	case "device":
		return devicecli.Run(rest)
	case "demo":
		return demoCmd(rest)
	case "healthcheck":
		return healthcheckCmd(rest)
	case "version", "--version":
		fmt.Printf("iotkv %s %s\n", version(), runtime.Version())
		return nil
	case "help", "-h", "--help":
		fmt.Println(usage)
		return nil
	}
	return cliutil.Usagef("unknown command %q (try 'iotkv help')", cmd)
}

// buildVersion is set by make release (-X main.buildVersion=...) from
// git describe; other builds read the module version.
var buildVersion string

func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
