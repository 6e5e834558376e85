//go:build unix && !linux

package jobproc

import (
	"os"
	"runtime"
	"syscall"
)

// sysProcAttr puts a job process in a process group of its own, so that
// the signals a terminal or an orchestrator sends to the parent's group do
// not reach it. Parent-death signals are Linux-only: elsewhere a parent
// killed outright leaves its job processes behind, until they notice their
// channel closed.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

func defaultPath() (string, bool) {
	p, err := os.Executable()
	return p, err == nil
}

// readRSS is 0: there is no cheap way to read another process's resident
// set here.
func readRSS(int) int64 { return 0 }

// waitExited cannot wait without reaping here.
func waitExited(int) bool { return false }

func maxRSS(ps *os.ProcessState) int64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		if runtime.GOOS == "darwin" || runtime.GOOS == "ios" {
			return ru.Maxrss // bytes
		}
		return ru.Maxrss * 1024
	}
	return 0
}
