// Package faultproxy is a loopback TCP proxy that end-to-end tests put in
// front of a real LiveKit server to inject network faults. Clients are given
// the proxy's URL instead of the server's; the proxy classifies each
// connection by the path of its first HTTP request (a worker's /agent
// WebSocket, a room's /rtc signalling WebSocket, or anything else, such as
// Twirp calls) and, per kind, can cut connections (with FIN or RST, now or
// right after the WebSocket upgrade), black-hole, delay or refuse them, count
// them, and tap the worker's WebSocket messages. Media goes to the server's
// RTC ports directly and is not affected.
//
//	p, err := faultproxy.New(serverHostPort)
//	if err != nil {
//		t.Fatal(err)
//	}
//	defer p.Close()
//	p.CutAfterUpgrade(faultproxy.KindAgent, 1, faultproxy.RST)
//	// connect the worker to p.URL()
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is the kind of a proxied connection, decided by the request line of
// the client's first request.
type Kind int

const (
	// KindAgent is a worker connection: request path "/agent" or one ending
	// in "/agent".
	KindAgent Kind = iota
	// KindRoom is a room's signalling connection: request path starting
	// with "/rtc".
	KindRoom
	// KindOther is anything else: Twirp calls, other HTTP requests, and
	// connections whose first bytes are not an HTTP request line (or that
	// send nothing for a short while after connecting).
	KindOther

	numKinds
)

// String returns "agent", "room" or "other".
func (k Kind) String() string {
	switch k {
	case KindAgent:
		return "agent"
	case KindRoom:
		return "room"
	case KindOther:
		return "other"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

func (k Kind) check() {
	if k < 0 || k >= numKinds {
		panic(fmt.Sprintf("faultproxy: invalid %v", k))
	}
}

// CutMode is how a connection is cut.
type CutMode int

const (
	// FIN closes both sockets in order (shutdown for writing, then close
	// once the peer has closed or after a short linger): each peer reads
	// end of stream.
	FIN CutMode = iota
	// RST resets both sockets (SO_LINGER 0, then close): each peer's next
	// read fails with ECONNRESET.
	RST

	// cutClose closes both sockets without ceremony; used by Close.
	cutClose CutMode = -1
)

// String returns "FIN" or "RST".
func (m CutMode) String() string {
	switch m {
	case FIN:
		return "FIN"
	case RST:
		return "RST"
	}
	return "CutMode(" + strconv.Itoa(int(m)) + ")"
}

func (m CutMode) check() {
	if m != FIN && m != RST {
		panic(fmt.Sprintf("faultproxy: invalid %v", m))
	}
}

const (
	// peekTimeout bounds the wait for a new client's request line.
	peekTimeout = time.Second
	// maxPeek bounds the bytes read to find the request line.
	maxPeek = 8 << 10
	// finLinger bounds how long a socket cut with FIN is drained before it
	// is closed.
	finLinger = 2 * time.Second
	// rstFlushWait bounds how long the proxy waits for bytes it wrote to
	// leave the socket before resetting it after an upgrade.
	rstFlushWait = time.Second
	dialTimeout  = 10 * time.Second
	chunkSize    = 32 << 10
	// queueLen is how many chunks may wait (for a delay or a black hole)
	// between reading one socket and writing the other.
	queueLen = 8
)

// aLongTimeAgo is a deadline in the past, to wake blocked reads and writes.
var aLongTimeAgo = time.Unix(1, 0)

// faults are the faults applied to one Kind.
type faults struct {
	cuts      []CutMode // how to cut each of the next connections after their upgrade
	blackHole bool
	delay     time.Duration
	refuse    bool
}

// Proxy is a loopback TCP proxy in front of one target address. Its
// methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every connection's goroutine

	tapMu sync.Mutex // serialises calls of the tap
	tap   atomic.Pointer[func(fromClient bool, opcode int, payload []byte)]

	mu       sync.Mutex
	closed   bool
	changed  chan struct{} // closed and replaced on every change below
	faults   [numKinds]faults
	accepted [numKinds]int
	live     [numKinds]int
	conns    map[*conn]struct{}
}

// New starts a proxy listening on 127.0.0.1 (on a free port) that forwards
// every connection to target ("host:port").
func New(target string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("faultproxy: target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target:  target,
		ln:      ln,
		ctx:     ctx,
		cancel:  cancel,
		changed: make(chan struct{}),
		conns:   make(map[*conn]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the proxy's "host:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL returns "ws://" + Addr().
func (p *Proxy) URL() string { return "ws://" + p.Addr() }

// HTTPURL returns "http://" + Addr().
func (p *Proxy) HTTPURL() string { return "http://" + p.Addr() }

// Close stops listening, closes every connection and returns once every
// goroutine of the proxy has exited. Calling it again does nothing.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	err := p.ln.Close()
	p.cancel()
	for c := range p.conns {
		c.cutLocked(cutClose)
		c.closeSocketsLocked() // also those already cut and draining
	}
	p.notifyLocked()
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// CutAfterUpgrade makes the next n connections of kind k whose server
// answers "101 Switching Protocols" be cut with mode right after that
// response's head has been forwarded to the client: the client sees a
// completed upgrade and then the end of the connection, with no close
// frame. Bytes the server sends after the head are not forwarded. Other
// responses (a 401, say) are forwarded as usual and do not count. A later
// call replaces the pending cuts; n <= 0 cancels.
func (p *Proxy) CutAfterUpgrade(k Kind, n int, mode CutMode) {
	modes := make([]CutMode, max(n, 0))
	for i := range modes {
		modes[i] = mode
	}
	p.CutAfterUpgradeSeq(k, modes...)
}

// CutAfterUpgradeSeq is CutAfterUpgrade with a mode for each of the next
// connections, in order: CutAfterUpgradeSeq(KindAgent, FIN, FIN, RST) cuts
// the next three upgraded agent connections, the last one with a reset.
// A later call replaces the pending cuts; no modes cancels.
func (p *Proxy) CutAfterUpgradeSeq(k Kind, modes ...CutMode) {
	k.check()
	for _, m := range modes {
		m.check()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults[k].cuts = append([]CutMode(nil), modes...)
}

// Cut cuts every open connection of kind k now, with mode, and returns how
// many it cut.
func (p *Proxy) Cut(k Kind, mode CutMode) int {
	k.check()
	mode.check()
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		if c.classified && c.kind == k && c.cutLocked(mode) {
			n++
		}
	}
	return n
}

// BlackHole makes connections of kind k, open ones and new ones, pass no
// bytes in either direction until Heal, while their TCP connections stay
// open. Bytes the peers write stay unread in the kernel's buffers (or, for
// bytes read just before, in the proxy), to be forwarded after Heal. New
// connections are accepted and held without dialling the target.
func (p *Proxy) BlackHole(k Kind) {
	k.check()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.faults[k].blackHole {
		return
	}
	p.faults[k].blackHole = true
	// Wake readers blocked in Read so that they stop reading.
	for c := range p.conns {
		if c.classified && c.kind == k && !c.cut {
			_ = c.client.SetReadDeadline(aLongTimeAgo)
			if c.upstream != nil {
				_ = c.upstream.SetReadDeadline(aLongTimeAgo)
			}
		}
	}
	p.notifyLocked()
}

// Delay adds d of latency to every chunk of bytes forwarded in either
// direction on connections of kind k: a chunk read at time t is written no
// sooner than t+d. Zero (or less) removes the delay.
func (p *Proxy) Delay(k Kind, d time.Duration) {
	k.check()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults[k].delay = max(d, 0)
	p.notifyLocked()
}

// Refuse, when on, makes new connections of kind k be reset as soon as
// their kind is known (once their request line has arrived), much as a
// port with nothing listening looks to the client.
func (p *Proxy) Refuse(k Kind, on bool) {
	k.check()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults[k].refuse = on
	p.notifyLocked()
}

// Heal clears every fault of every kind: black-holed connections forward
// what was held and carry on (held new connections are dialled now),
// delays are removed, pending CutAfterUpgrade counts are cleared and
// Refuse is off. Connections already cut stay cut.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = [numKinds]faults{}
	p.notifyLocked()
}

// Accepted returns how many connections of kind k have been accepted so
// far (including refused ones). A connection is counted once its kind is
// known.
func (p *Proxy) Accepted(k Kind) int {
	k.check()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted[k]
}

// Live returns how many connections of kind k are open now, including
// held ones and ones cut with FIN that the proxy is still draining (until
// the peers close them, or a couple of seconds).
func (p *Proxy) Live(k Kind) int {
	k.check()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.live[k]
}

// WaitAccepted waits until Accepted(k) >= n. It returns ctx.Err() if ctx
// ends first, or net.ErrClosed if the proxy is closed first.
func (p *Proxy) WaitAccepted(ctx context.Context, k Kind, n int) error {
	k.check()
	for {
		p.mu.Lock()
		ok, closed, ch := p.accepted[k] >= n, p.closed, p.changed
		p.mu.Unlock()
		switch {
		case ok:
			return nil
		case closed:
			return net.ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// OnAgentFrame sets fn to be called for every complete WebSocket message
// forwarded, after the upgrade, on KindAgent connections: data messages
// are reassembled across continuation frames and reported with the opcode
// of their first frame; control frames (close, ping, pong) are reported as
// they come, even in the middle of a fragmented message. Calls follow the
// order of the stream in each direction; client-to-server payloads are
// unmasked; compressed payloads are reported as they are on the wire. fn
// owns payload.
//
// The parse works on a copy of the bytes after they have been forwarded,
// and never changes them; a stream that does not parse stops being tapped
// and keeps being forwarded. Calls are serialised across connections; fn
// must return promptly and must not call OnAgentFrame. Once OnAgentFrame
// returns, the previous fn is not running and is not called again. A nil
// fn removes the tap.
func (p *Proxy) OnAgentFrame(fn func(fromClient bool, opcode int, payload []byte)) {
	p.tapMu.Lock()
	defer p.tapMu.Unlock()
	if fn == nil {
		p.tap.Store(nil)
		return
	}
	p.tap.Store(&fn)
}

func (p *Proxy) emitFrame(fromClient bool, opcode int, payload []byte) {
	if p.tap.Load() == nil {
		return
	}
	p.tapMu.Lock()
	defer p.tapMu.Unlock()
	if fn := p.tap.Load(); fn != nil {
		(*fn)(fromClient, opcode, payload)
	}
}

// notifyLocked wakes everything waiting for a change. p.mu must be held.
func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient failure (out of file descriptors, say).
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		c := &conn{p: p, client: nc.(*net.TCPConn), cutCh: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = nc.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go c.serve()
	}
}
