package lkserver

import "syscall"

// sysProcAttr puts the child in its own process group, so terminal signals
// aimed at the test process do not hit it directly, and asks the kernel to
// SIGKILL it when the thread that started it dies (see startProcess, which
// keeps that thread alive for the child's lifetime).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
