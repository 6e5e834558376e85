//go:build linux

package jobproc

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

// sysProcAttr puts a job process in a process group of its own, so that
// the signals a terminal or an orchestrator sends to the parent's group do
// not reach it, and has the kernel kill it if the thread that started it
// ends (the parent died: see Proc.waiter, which keeps that thread for the
// process's lifetime).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// defaultPath is the parent's own executable: /proc/self/exe stays the
// binary the parent runs even if its file was replaced since.
func defaultPath() (path string, ok bool) { return "/proc/self/exe", true }

// readRSS is a process's resident set in bytes, or 0.
func readRSS(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}

// waitExited blocks until the child pid has exited, without reaping it:
// until it is reaped its pid (and process group id) cannot be reused, so
// signals sent before then reach no other process. It reports whether it
// could wait.
func waitExited(pid int) bool {
	const (
		pPID    = 1
		wExited = 0x4
		wNoWait = 0x1000000
	)
	var info [128]byte // siginfo_t
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid),
			uintptr(unsafe.Pointer(&info[0])), wExited|wNoWait, 0, 0)
		if errno != syscall.EINTR {
			return errno == 0
		}
	}
}

// maxRSS is the peak resident set in bytes from a process's rusage.
func maxRSS(ps *os.ProcessState) int64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss * 1024 // KiB on Linux
	}
	return 0
}
