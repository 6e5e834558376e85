//go:build !linux

package faultproxy

import (
	"net"
	"time"
)

// waitSent gives bytes just written to c a moment to leave before a
// reset (which discards them) on systems where the send queue cannot be
// inspected.
func waitSent(c *net.TCPConn, limit time.Duration, done <-chan struct{}) {
	select {
	case <-done:
	case <-time.After(min(limit, 20*time.Millisecond)):
	}
}
