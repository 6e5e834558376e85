//go:build unix

package jobproc

import (
	"net"
	"os"
	"syscall"
)

// supported says whether job processes can run here.
const supported = true

// errUnsupported is never returned here.
var errUnsupported error

// socketPair returns the two ends of a new stream socket pair, both
// close-on-exec (exec.Cmd.ExtraFiles clears the flag on the child's copy).
func socketPair() (parent, child *os.File, err error) {
	syscall.ForkLock.RLock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	return os.NewFile(uintptr(fds[0]), "jobproc-parent"), os.NewFile(uintptr(fds[1]), "jobproc-child"), nil
}

// fileConn makes a connection of an inherited or created socket, and
// closes f (the connection holds a duplicate).
func fileConn(f *os.File) (net.Conn, error) {
	defer f.Close()
	return net.FileConn(f)
}

// keepFromChildren marks an inherited descriptor close-on-exec, so that
// processes the job starts do not inherit it.
func keepFromChildren(fd int) { syscall.CloseOnExec(fd) }

// killGroup sends SIGKILL to the process group led by pid: the job process
// and whatever it started that stayed in its group.
func killGroup(pid int) {
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// exitInfo is a process's exit code (-1 if a signal killed it) and the
// name of that signal.
func exitInfo(ps *os.ProcessState) (code int, signal string) {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, signalName(ws.Signal())
	}
	return ps.ExitCode(), ""
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGILL: "SIGILL", syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT",
	syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE", syscall.SIGKILL: "SIGKILL",
	syscall.SIGUSR1: "SIGUSR1", syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM",
	syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ", syscall.SIGSYS: "SIGSYS",
}

func signalName(s syscall.Signal) string {
	if n, ok := signalNames[s]; ok {
		return n
	}
	return "signal " + s.String()
}
