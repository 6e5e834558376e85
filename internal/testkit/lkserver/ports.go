package lkserver

import (
	"fmt"
	"io"
	"net"
	"sync"
)

// handedOut remembers the ports this process already picked, so two servers
// started by the same test binary never get the same port even if the
// kernel hands a just-closed port out again. Ports picked by other
// processes can still collide in the short window before the child binds
// them; Start retries with new ports in that case.
var handedOut struct {
	sync.Mutex
	ports map[string]bool // "tcp/1234", "udp/1234"
}

// freePorts returns n distinct free ports of the given network ("tcp" or
// "udp"), probing the wildcard address because livekit-server binds its RTC
// TCP port on all interfaces.
func freePorts(network string, n int) ([]int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = make(map[string]bool)
	}
	var (
		ports   []int
		holders []io.Closer
	)
	defer func() {
		for _, c := range holders {
			c.Close()
		}
	}()
	for attempts := 0; len(ports) < n; attempts++ {
		if attempts > 50*n {
			return nil, fmt.Errorf("no free %s port found", network)
		}
		var (
			c    io.Closer
			port int
		)
		switch network {
		case "tcp":
			ln, err := net.Listen("tcp", ":0")
			if err != nil {
				return nil, fmt.Errorf("probe free tcp port: %w", err)
			}
			c, port = ln, ln.Addr().(*net.TCPAddr).Port
		case "udp":
			pc, err := net.ListenPacket("udp", ":0")
			if err != nil {
				return nil, fmt.Errorf("probe free udp port: %w", err)
			}
			c, port = pc, pc.LocalAddr().(*net.UDPAddr).Port
		default:
			return nil, fmt.Errorf("unknown network %q", network)
		}
		// Keep every probe open until all ports are chosen so that they are
		// distinct.
		holders = append(holders, c)
		key := fmt.Sprintf("%s/%d", network, port)
		if handedOut.ports[key] {
			continue
		}
		handedOut.ports[key] = true
		ports = append(ports, port)
	}
	return ports, nil
}
