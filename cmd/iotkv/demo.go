package main

import "errors"

func demoCmd(args []string) error {
	return errors.New("demo: not built yet")
}
