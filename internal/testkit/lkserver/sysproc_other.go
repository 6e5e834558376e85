//go:build !unix

package lkserver

import "syscall"

// sysProcAttr returns nil: process groups and parent-death signals are not
// available on this platform.
func sysProcAttr() *syscall.SysProcAttr { return nil }
