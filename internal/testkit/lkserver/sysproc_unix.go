//go:build unix && !linux

package lkserver

import "syscall"

// sysProcAttr puts the child in its own process group. Parent-death signals
// are Linux-only, so elsewhere a killed test process can leave a child behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
