package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// conn is one proxied connection. Its serve goroutine owns it: it
// classifies the client, dials the target and runs the four pumps (a
// reader and a writer per direction), and closes both sockets at the end.
type conn struct {
	p      *Proxy
	client *net.TCPConn

	// upgraded is set once the server's 101 response head has been read.
	upgraded atomic.Bool

	// Guarded by p.mu.
	kind       Kind
	classified bool
	upstream   *net.TCPConn
	doomed     bool      // to be cut right after the upgrade: forward nothing else
	cut        bool      // cut (or closing): forward nothing more
	mode       CutMode   // how it was cut
	drainUntil time.Time // when a socket cut with FIN stops being drained
	cutCh      chan struct{}
}

// chunk is a run of bytes read from one socket, to be written to the other.
type chunk struct {
	buf    *[]byte // pooled backing array, or nil
	data   []byte
	at     time.Time // when it was read
	frames int       // offset in data where WebSocket frames start, or -1
	cut    bool      // cut the connection right after writing this chunk
	mode   CutMode
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

func (ch *chunk) release() {
	if ch.buf != nil {
		bufPool.Put(ch.buf)
		ch.buf = nil
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

func (c *conn) serve() {
	defer c.p.wg.Done()
	defer c.finish()
	pre, kind, ok := c.peek()
	if !ok || !c.admit(kind) {
		c.drainIfFIN()
		return
	}
	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(c.p.ctx, "tcp", c.p.target)
	p := c.p
	p.mu.Lock()
	if err != nil {
		c.cutLocked(RST)
		p.mu.Unlock()
		return
	}
	if c.cut {
		p.mu.Unlock()
		_ = nc.Close()
		c.drainIfFIN()
		return
	}
	c.upstream = nc.(*net.TCPConn)
	p.mu.Unlock()
	c.pump(pre)
}

// peek reads the client's first bytes, up to the end of the first line,
// maxPeek bytes or peekTimeout, and classifies them. It returns false if
// the client socket failed.
func (c *conn) peek() ([]byte, Kind, bool) {
	buf := make([]byte, maxPeek)
	n := 0
	_ = c.client.SetReadDeadline(time.Now().Add(peekTimeout))
	for n < len(buf) {
		m, err := c.client.Read(buf[n:])
		newline := bytes.IndexByte(buf[n:n+m], '\n') >= 0
		n += m
		if newline {
			break
		}
		if err != nil {
			if err == io.EOF || isTimeout(err) {
				break // classify what came; the pump will see the EOF again
			}
			return nil, 0, false
		}
	}
	return buf[:n], classify(buf[:n]), true
}

// admit counts the classified connection, then refuses it, holds it while
// its kind is black-holed, or lets it through (true).
func (c *conn) admit(k Kind) bool {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.cut {
		return false
	}
	c.kind, c.classified = k, true
	p.accepted[k]++
	p.live[k]++
	_ = c.client.SetReadDeadline(time.Time{})
	p.notifyLocked()
	for {
		if c.cut {
			return false
		}
		f := p.faults[k]
		if f.refuse {
			c.cutLocked(RST)
			return false
		}
		if !f.blackHole {
			return true
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-c.cutCh:
		}
		p.mu.Lock()
	}
}

// drainIfFIN reads and discards what the client still sends after a FIN
// cut that happened before the pumps ran, so that closing the socket does
// not reset it. The cut set a read deadline.
func (c *conn) drainIfFIN() {
	c.p.mu.Lock()
	fin := c.cut && c.mode == FIN
	c.p.mu.Unlock()
	if !fin {
		return
	}
	buf := make([]byte, 4096)
	for {
		if _, err := c.client.Read(buf); err != nil {
			return
		}
	}
}

// finish unregisters the connection and closes both sockets.
func (c *conn) finish() {
	p := c.p
	p.mu.Lock()
	delete(p.conns, c)
	if c.classified {
		p.live[c.kind]--
	}
	if !c.cut {
		c.cut = true
		c.mode = cutClose
		close(c.cutCh)
	}
	c.closeSocketsLocked()
	p.notifyLocked()
	p.mu.Unlock()
}

func (c *conn) closeSocketsLocked() {
	_ = c.client.Close()
	if c.upstream != nil {
		_ = c.upstream.Close()
	}
}

// cutLocked cuts the connection with mode and reports whether it was not
// cut already. p.mu must be held.
func (c *conn) cutLocked(mode CutMode) bool {
	if c.cut {
		return false
	}
	c.cut = true
	c.mode = mode
	close(c.cutCh)
	now := time.Now()
	c.drainUntil = now.Add(finLinger)
	for _, s := range [2]*net.TCPConn{c.client, c.upstream} {
		if s == nil {
			continue
		}
		switch mode {
		case RST:
			_ = s.SetLinger(0)
			_ = s.Close()
		case FIN:
			_ = s.CloseWrite()
			_ = s.SetWriteDeadline(aLongTimeAgo)
			_ = s.SetReadDeadline(c.drainUntil)
		default:
			_ = s.Close()
		}
	}
	return true
}

func (c *conn) pump(pre []byte) {
	up := c.upstream // set before pump, never changed after
	toServer := make(chan chunk, queueLen)
	toClient := make(chan chunk, queueLen)
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); c.read(c.client, true, pre, toServer) }()
	go func() { defer wg.Done(); c.write(up, true, toServer) }()
	go func() { defer wg.Done(); c.read(up, false, nil, toClient) }()
	go func() { defer wg.Done(); c.write(c.client, false, toClient) }()
	wg.Wait()
}

// waitFlow blocks while the connection's kind is black-holed or the
// connection is doomed, unless it is cut. With reset, or after having
// waited, it clears the read deadline of src (set to wake it up).
func (c *conn) waitFlow(src *net.TCPConn, reset bool) {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if c.cut {
			return // keep the drain deadline
		}
		if !c.doomed && !p.faults[c.kind].blackHole {
			if reset {
				_ = src.SetReadDeadline(time.Time{})
			}
			return
		}
		reset = true
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-c.cutCh:
		}
		p.mu.Lock()
	}
}

func (c *conn) stopped() bool {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	return c.cut || c.doomed
}

// read pumps src into out until end of stream or failure, then closes
// out. Once the connection is cut it reads and discards (a FIN cut drains
// the socket until the peer closes or the linger ends).
func (c *conn) read(src *net.TCPConn, fromClient bool, pre []byte, out chan<- chunk) {
	defer close(out)
	r := reader{c: c, fromClient: fromClient, out: out}
	if len(pre) > 0 {
		r.process(chunk{data: pre, at: time.Now(), frames: -1})
	}
	reset := false
	for {
		c.waitFlow(src, reset)
		reset = false
		bp := bufPool.Get().(*[]byte)
		n, err := src.Read(*bp)
		if n > 0 && !c.stopped() {
			r.process(chunk{buf: bp, data: (*bp)[:n], at: time.Now(), frames: -1})
		} else {
			bufPool.Put(bp)
		}
		if err == nil {
			continue
		}
		if isTimeout(err) {
			c.p.mu.Lock()
			cut, until := c.cut, c.drainUntil
			c.p.mu.Unlock()
			if !cut {
				reset = true // woken for a black hole, or a stale wake-up
				continue
			}
			if time.Now().Before(until) {
				continue
			}
			return
		}
		if err != io.EOF {
			c.p.mu.Lock()
			c.cutLocked(RST) // pass a failure on as one
			c.p.mu.Unlock()
		}
		return
	}
}

// write pumps in to dst. When in is closed (the other side's end of
// stream) it shuts dst down for writing.
func (c *conn) write(dst *net.TCPConn, fromClient bool, in <-chan chunk) {
	p := c.p
	var fp *frameParser
	if c.kind == KindAgent {
		fp = &frameParser{fromClient: fromClient, emit: p.emitFrame}
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for ch := range in {
		if !c.waitSend(&ch, &timer) {
			ch.release()
			return
		}
		if _, err := dst.Write(ch.data); err != nil {
			ch.release()
			p.mu.Lock()
			c.cutLocked(RST)
			p.mu.Unlock()
			return
		}
		if fp != nil && ch.frames >= 0 {
			fp.feed(ch.data[ch.frames:])
		}
		ch.release()
		if ch.cut {
			if ch.mode == RST {
				// A reset discards what is still in the send queue: let
				// the response head leave first.
				waitSent(dst, rstFlushWait, c.cutCh)
			}
			p.mu.Lock()
			c.cutLocked(ch.mode)
			p.mu.Unlock()
			return
		}
	}
	p.mu.Lock()
	cut := c.cut
	p.mu.Unlock()
	if !cut {
		_ = dst.CloseWrite()
	}
}

// waitSend waits until ch may be written: no black hole and its delay
// elapsed. It returns false if the connection is cut (or doomed, unless ch
// is the chunk to cut after).
func (c *conn) waitSend(ch *chunk, timer **time.Timer) bool {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if c.cut || (c.doomed && !ch.cut) {
			return false
		}
		f := p.faults[c.kind]
		wake := p.changed
		var tc <-chan time.Time
		if !f.blackHole {
			wait := time.Until(ch.at.Add(f.delay))
			if f.delay <= 0 || wait <= 0 {
				return true
			}
			if *timer == nil {
				*timer = time.NewTimer(wait)
			} else {
				(*timer).Reset(wait)
			}
			tc = (*timer).C
		}
		p.mu.Unlock()
		select {
		case <-tc:
		case <-wake:
		case <-c.cutCh:
		}
		p.mu.Lock()
	}
}

// reader holds what one direction's reader knows of the HTTP exchange
// that opens the stream.
type reader struct {
	c          *conn
	fromClient bool
	out        chan<- chunk
	head       headScanner
	decided    bool // client side: whether bytes after the request head are frames
	frames     bool // bytes after the head are WebSocket frames
}

// process annotates ch and queues it for the writer (or drops it if the
// connection is cut meanwhile).
func (r *reader) process(ch chunk) {
	if r.fromClient {
		r.clientChunk(&ch)
	} else {
		r.serverChunk(&ch)
	}
	select {
	case r.out <- ch:
	case <-r.c.cutCh:
		ch.release()
	}
}

// clientChunk finds where WebSocket frames start in the client's stream:
// after the request head, if the server upgraded the connection. Only
// KindAgent connections are tapped.
func (r *reader) clientChunk(ch *chunk) {
	if r.c.kind != KindAgent {
		return
	}
	off := 0
	switch r.head.state {
	case headScanning:
		if off = r.head.feed(ch.data); off < 0 {
			return
		}
	case headGaveUp:
		return
	}
	if !r.decided {
		if off == len(ch.data) {
			return
		}
		// A WebSocket client sends nothing after its request before it has
		// read the 101, which the server's reader sees first.
		r.decided = true
		r.frames = r.c.upgraded.Load()
	}
	if r.frames {
		ch.frames = off
	}
}

// serverChunk watches the server's stream for the head of the response
// (skipping 1xx other than 101). On a 101 it marks the connection upgraded
// and, if a cut after upgrade is pending for its kind, truncates ch just
// after the head and marks it to cut.
func (r *reader) serverChunk(ch *chunk) {
	switch r.head.state {
	case headDone:
		if r.frames {
			ch.frames = 0
		}
		return
	case headGaveUp:
		return
	}
	base := 0
	for {
		off := r.head.feed(ch.data[base:])
		if off < 0 {
			return
		}
		end := base + off
		code := r.head.status()
		if code >= 100 && code < 200 && code != 101 {
			r.head.reset()
			base = end
			continue
		}
		if code != 101 {
			return
		}
		r.c.upgraded.Store(true)
		if mode, ok := r.c.claimCutAfterUpgrade(); ok {
			ch.data = ch.data[:end]
			ch.cut, ch.mode = true, mode
			return
		}
		r.frames = true
		ch.frames = end
		return
	}
}

// claimCutAfterUpgrade takes one pending cut after upgrade for the
// connection's kind, if any, and dooms the connection.
func (c *conn) claimCutAfterUpgrade() (CutMode, bool) {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	f := &p.faults[c.kind]
	if c.cut || len(f.cuts) == 0 {
		return 0, false
	}
	mode := f.cuts[0]
	f.cuts = f.cuts[1:]
	c.doomed = true
	return mode, true
}
