//go:build !unix

package jobproc

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// supported says whether job processes can run here: they need Unix
// socket pairs and process groups.
const supported = false

var errUnsupported = errors.New("jobproc: job processes are not supported on this platform")

func sysProcAttr() *syscall.SysProcAttr { return nil }

func defaultPath() (string, bool) {
	p, err := os.Executable()
	return p, err == nil
}

func socketPair() (parent, child *os.File, err error) { return nil, nil, errUnsupported }

func fileConn(f *os.File) (net.Conn, error) {
	f.Close()
	return nil, errUnsupported
}

func keepFromChildren(int) {}

func killGroup(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		_ = p.Kill()
	}
}

func readRSS(int) int64 { return 0 }

func waitExited(int) bool { return false }

func maxRSS(*os.ProcessState) int64 { return 0 }

func exitInfo(ps *os.ProcessState) (int, string) { return ps.ExitCode(), "" }
