// Package devicecli is the device subcommands, shared by iotkv and the
// slim iotkv-device binary.
package devicecli

import "errors"

// Run runs `device SUBCOMMAND ...`.
func Run(args []string) error {
	return errors.New("device: not built yet")
}
