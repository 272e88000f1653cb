// Command iotkv-device is the slim device binary: the `iotkv device`
// subcommands (put, get, del, shell, simulate) without the broker, the
// store or the master linked in.
package main

import (
	"os"

	"github.com/iotkv/iotkv/internal/cliutil"
	"github.com/iotkv/iotkv/internal/devicecli"
)

func main() {
	cliutil.Exit("iotkv-device", devicecli.Run(os.Args[1:]))
}
