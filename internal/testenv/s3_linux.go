package testenv

import "syscall"

// childAttr kills a child the test starts when the test process dies.
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
