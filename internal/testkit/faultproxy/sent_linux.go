package faultproxy

import (
	"net"
	"syscall"
	"time"
	"unsafe"
)

// waitSent waits, at most limit or until done is closed, until the send
// queue of c is empty (every byte written has been acknowledged).
func waitSent(c *net.TCPConn, limit time.Duration, done <-chan struct{}) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	deadline := time.Now().Add(limit)
	for {
		var queued int32
		var errno syscall.Errno
		err := rc.Control(func(fd uintptr) {
			_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&queued)))
		})
		if err != nil || errno != 0 || queued <= 0 || time.Now().After(deadline) {
			return
		}
		select {
		case <-done:
			return
		case <-time.After(time.Millisecond):
		}
	}
}
