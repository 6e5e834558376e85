// Package wire is the agent protocol's transport, for both of its ends:
// protobuf messages over a WebSocket, one frame a message. The worker dials
// with [Dial] and reads ServerMessages; the test server accepts with
// [Accept] and reads WorkerMessages. Framing, close handling and the
// classification of every error live here once, so the two ends cannot
// drift apart.
//
//	c, err := wire.Dial(ctx, wire.DialConfig{URL: "ws://127.0.0.1:7880/agent", Header: h})
//	if err != nil {
//		switch wire.KindOf(err) { ... } // Unauthorized, Misconfigured: stop; Lost, Refused: retry
//	}
//	err = c.Write(register)
//	msg, err := c.Read()
package wire

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/proto"
)

// MaxFrame bounds one inbound frame; a larger frame is malformed.
const MaxFrame = 4 << 20

// WriteTimeout bounds every write.
const WriteTimeout = 10 * time.Second

// closeGrace bounds the write of a close frame.
const closeGrace = time.Second

// Kind says what an error means for the connection's owner.
type Kind int

// Kinds of errors, from the most common to the rarest.
const (
	// Lost: the connection ended without the peer saying why (EOF, a TCP
	// close or reset without a close frame, which gorilla reports as code
	// 1006, a timeout, a refused or unreachable address, an HTTP 5xx from a
	// proxy in front of the server). Retry.
	Lost Kind = iota
	// Closed: the peer closed the connection with a close frame whose code
	// does not refuse (1000 normal, 1001 going away, 1011 internal error,
	// 1012 restart, 1013 try again later, …). Retry.
	Closed
	// Refused: the peer refused this connection: a close frame with a
	// refusing code (1002, 1003, 1007, 1008, 1009, 1010), or an HTTP 429 or
	// 503 answer to the upgrade. Retry with backoff; it counts as a
	// failure.
	Refused
	// Unauthorized: HTTP 401 or 403 to the upgrade: the API key or secret
	// is wrong. Retrying cannot help.
	Unauthorized
	// Misconfigured: the address is not a LiveKit agent endpoint (HTTP 404
	// or another answer that is no upgrade, TLS spoken to a plain server
	// or the reverse, a certificate that does not verify). Retrying cannot
	// help.
	Misconfigured
	// Malformed: the peer sent a frame that is not one binary protobuf
	// message of the expected type, or one larger than MaxFrame.
	Malformed
	// GoAway: the server asked the worker to reconnect elsewhere. Set by
	// the protocol layer, never by this package's reads.
	GoAway
	// Stopped: this side ended the connection (its context ended or it
	// closed the connection).
	Stopped
)

func (k Kind) String() string {
	switch k {
	case Lost:
		return "lost"
	case Closed:
		return "closed"
	case Refused:
		return "refused"
	case Unauthorized:
		return "unauthorized"
	case Misconfigured:
		return "misconfigured"
	case Malformed:
		return "malformed"
	case GoAway:
		return "go_away"
	case Stopped:
		return "stopped"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Permanent reports whether retrying cannot fix an error of this kind.
func (k Kind) Permanent() bool { return k == Unauthorized || k == Misconfigured }

// Error is every error this package returns: what failed, its kind, and
// the cause.
type Error struct {
	Kind Kind
	// Op is what failed: "dial", "read" or "write".
	Op string
	// Status is the HTTP status of a failed upgrade, else 0.
	Status int
	// Code is the close code of a close frame the peer sent, else 0.
	Code int
	// Hint says what to do about a permanent error, else "".
	Hint string
	Err  error
}

func (e *Error) Error() string {
	s := e.Op + ": " + e.Kind.String()
	if e.Status != 0 {
		s += fmt.Sprintf(" (HTTP %d)", e.Status)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an *Error of kind k for op.
func New(k Kind, op string, err error) *Error { return &Error{Kind: k, Op: op, Err: err} }

// KindOf returns the kind of err: the Kind of the first *Error in its
// chain, Stopped for a context's end, else Lost.
func KindOf(err error) Kind {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Kind
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Stopped
	}
	return Lost
}

// ErrFrame is wrapped by Malformed errors of frames that are not a
// message.
var ErrFrame = errors.New("malformed frame")

// Conn is one WebSocket connection that carries In messages one way and
// Out messages the other. Read must be called from one goroutine at a
// time; Write, Close and Abort from any.
type Conn[In, Out proto.Message] struct {
	ws    *websocket.Conn
	newIn func() In

	wmu sync.Mutex // one writer at a time
}

// Worker is the worker's end: it reads ServerMessages and writes
// WorkerMessages.
type Worker = Conn[*livekit.ServerMessage, *livekit.WorkerMessage]

// Server is the server's end: it reads WorkerMessages and writes
// ServerMessages.
type Server = Conn[*livekit.WorkerMessage, *livekit.ServerMessage]

func newConn[In, Out proto.Message](ws *websocket.Conn, newIn func() In) *Conn[In, Out] {
	ws.SetReadLimit(MaxFrame)
	return &Conn[In, Out]{ws: ws, newIn: newIn}
}

// Accept wraps the server's end of an upgraded connection.
func Accept(ws *websocket.Conn) *Server {
	return newConn[*livekit.WorkerMessage, *livekit.ServerMessage](ws, func() *livekit.WorkerMessage { return &livekit.WorkerMessage{} })
}

// DialConfig says where and how to dial.
type DialConfig struct {
	// URL is the endpoint, ws:// or wss://.
	URL string
	// Header is sent with the upgrade (the Authorization bearer token).
	Header http.Header
	// Dialer dials; nil uses a dialer with the environment's proxy.
	Dialer *websocket.Dialer
}

// Dial opens the worker's end of a connection. ctx bounds the dial only.
// A failure is an *Error whose Kind says whether to retry.
func Dial(ctx context.Context, cfg DialConfig) (*Worker, error) {
	d := websocket.Dialer{Proxy: http.ProxyFromEnvironment}
	if cfg.Dialer != nil {
		d = *cfg.Dialer
	}
	// gorilla bounds the handshake by ctx's deadline but does not stop it
	// when ctx is cancelled: end a handshake in progress by hand.
	var mu sync.Mutex
	var raw net.Conn
	netDial := d.NetDialContext
	if netDial == nil {
		netDial = (&net.Dialer{}).DialContext
	}
	d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := netDial(ctx, network, addr)
		if err == nil {
			mu.Lock()
			raw = c
			mu.Unlock()
		}
		return c, err
	}
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if raw != nil {
			_ = raw.SetDeadline(time.Now())
		}
	})
	ws, resp, err := d.DialContext(ctx, cfg.URL, cfg.Header)
	if !stop() && err == nil {
		// ctx ended as the dial completed: the connection's deadline
		// may be spent.
		_ = ws.Close()
		return nil, &Error{Kind: Stopped, Op: "dial", Err: ctx.Err()}
	}
	if err != nil {
		return nil, dialError(ctx, resp, err)
	}
	return newConn[*livekit.ServerMessage, *livekit.WorkerMessage](ws, func() *livekit.ServerMessage { return &livekit.ServerMessage{} }), nil
}

// dialError classifies a failed dial.
func dialError(ctx context.Context, resp *http.Response, err error) *Error {
	e := &Error{Kind: Lost, Op: "dial", Err: err}
	if resp != nil {
		_ = resp.Body.Close()
		e.Status = resp.StatusCode
		switch s := resp.StatusCode; {
		case s == http.StatusUnauthorized || s == http.StatusForbidden:
			e.Kind, e.Err = Unauthorized, errors.New("the server rejected the API key or secret")
			e.Hint = "check the API key and secret"
		case s == http.StatusTooManyRequests || s == http.StatusServiceUnavailable:
			e.Kind = Refused
		case s == http.StatusRequestTimeout || s >= 500:
			e.Kind = Lost
		case s == http.StatusNotFound:
			e.Kind, e.Err = Misconfigured, errors.New("no agent endpoint at this address")
			e.Hint = "the URL must be the LiveKit server's base URL, e.g. ws://host:7880 or wss://project.livekit.cloud, without a path the server does not serve"
		default:
			e.Kind, e.Err = Misconfigured, fmt.Errorf("the server answered %s instead of a WebSocket upgrade", resp.Status)
			e.Hint = "check that the URL points at a LiveKit server and that ws:// or wss:// matches what it speaks"
		}
		return e
	}
	var (
		rec  tls.RecordHeaderError
		cert *tls.CertificateVerificationError
		ua   x509.UnknownAuthorityError
		host x509.HostnameError
		inv  x509.CertificateInvalidError
	)
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		e.Kind = Stopped // a deadline that passed is a timeout: Lost
	case errors.As(err, &rec):
		e.Kind, e.Hint = Misconfigured, "the server does not speak TLS at this address: use ws:// instead of wss://"
	case errors.As(err, &cert), errors.As(err, &ua), errors.As(err, &host), errors.As(err, &inv):
		e.Kind, e.Hint = Misconfigured, "the server's TLS certificate does not verify for this host"
	case isMalformedURL(err):
		e.Kind, e.Hint = Misconfigured, "the URL must be ws://, wss://, http:// or https:// with a host"
	case errors.Is(err, websocket.ErrBadHandshake), isMalformedHTTP(err):
		e.Kind, e.Hint = Misconfigured, "the address does not answer like a LiveKit server; check the URL and whether it is ws:// or wss://"
	}
	return e
}

// isMalformedURL reports a URL the dialer cannot use at all (a scheme it
// does not speak, no host): no retry can fix it. The dialer's error for it
// is unexported, hence its text.
func isMalformedURL(err error) bool {
	var ue *url.Error
	return strings.Contains(err.Error(), "malformed ws or wss URL") || (errors.As(err, &ue) && ue.Op == "parse")
}

// isMalformedHTTP reports an answer that was not HTTP at all (a plain
// client talking to a TLS port reads the TLS alert as garbage).
func isMalformedHTTP(err error) bool {
	return strings.Contains(err.Error(), "malformed HTTP")
}

// Read reads the next message. Its errors are *Error: Malformed for a
// frame that is not a message (the connection must then be closed), else
// the kind of the connection's end.
func (c *Conn[In, Out]) Read() (In, error) {
	var zero In
	typ, b, err := c.ws.ReadMessage()
	if err != nil {
		return zero, readError(err)
	}
	if typ != websocket.BinaryMessage {
		return zero, &Error{Kind: Malformed, Op: "read", Err: fmt.Errorf("%w: text frame of %d bytes", ErrFrame, len(b))}
	}
	m := c.newIn()
	if err := proto.Unmarshal(b, m); err != nil {
		return zero, &Error{Kind: Malformed, Op: "read", Err: fmt.Errorf("%w: %v", ErrFrame, err)}
	}
	return m, nil
}

// refusing are the close codes with which a peer refuses a connection.
var refusing = map[int]bool{
	websocket.CloseProtocolError:           true,
	websocket.CloseUnsupportedData:         true,
	websocket.CloseInvalidFramePayloadData: true,
	websocket.ClosePolicyViolation:         true,
	websocket.CloseMessageTooBig:           true,
	websocket.CloseMandatoryExtension:      true,
}

// readError classifies the error of a read.
func readError(err error) *Error {
	e := &Error{Kind: Lost, Op: "read", Err: err}
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce):
		// 1006 is gorilla's name for a connection that ended without a
		// close frame: nobody said anything, the connection is just gone.
		if ce.Code != websocket.CloseAbnormalClosure {
			e.Code = ce.Code
			e.Kind = Closed
			if refusing[ce.Code] {
				e.Kind = Refused
			}
		}
	case errors.Is(err, websocket.ErrReadLimit):
		e.Kind, e.Err = Malformed, fmt.Errorf("%w: frame larger than %d bytes", ErrFrame, MaxFrame)
	case errors.Is(err, net.ErrClosed):
		e.Kind = Stopped
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		e.Kind = Lost
	}
	return e
}

// Write sends m as one binary frame, within WriteTimeout.
func (c *Conn[In, Out]) Write(m Out) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return &Error{Kind: Malformed, Op: "write", Err: err}
	}
	return c.WriteFrame(websocket.BinaryMessage, b)
}

// WriteFrame sends data as one frame of type typ as it is (the test
// server uses it for text, garbage and oversized frames).
func (c *Conn[In, Out]) WriteFrame(typ int, data []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(WriteTimeout))
	if err := c.ws.WriteMessage(typ, data); err != nil {
		e := readError(err)
		e.Op = "write"
		return e
	}
	return nil
}

// SetReadDeadline sets the deadline of reads; a read past it fails with
// a Lost error (a timeout). The zero time removes it.
func (c *Conn[In, Out]) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// Close sends a close frame with code and reason (bounded by a second),
// then closes the connection.
func (c *Conn[In, Out]) Close(code int, reason string) error {
	c.wmu.Lock()
	err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(closeGrace))
	c.wmu.Unlock()
	_ = c.ws.Close()
	return err
}

// SendClose sends a close frame with code and reason (bounded by a
// second) and leaves the connection open, so that the peer's answering
// close frame can still be read.
func (c *Conn[In, Out]) SendClose(code int, reason string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(closeGrace))
}

// Abort closes the connection without a close frame, as a lost network or
// a crashed peer does (and as a side ends a connection after SendClose).
// Reads on this side then fail with a Stopped error.
func (c *Conn[In, Out]) Abort() error { return c.ws.Close() }
