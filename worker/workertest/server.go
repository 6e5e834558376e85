package workertest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/livekit/protocol/agent"
	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/proto"

	"github.com/lkagent/lkagent/internal/wire"
)

// Protocol limits the fake applies, the same as the LiveKit server's.
const (
	// RegisterTimeout is how long a new connection may take to send its
	// registration.
	RegisterTimeout = 10 * time.Second
	// DefaultOfferTimeout is how long [Conn.Offer] waits for an answer
	// unless Options.OfferTimeout says otherwise.
	DefaultOfferTimeout = 10 * time.Second
)

// Options configure a [Server]. The zero value is a well-behaved server that
// accepts any API key and secret.
type Options struct {
	// RejectAuth answers every connection attempt with HTTP 401, as the
	// server does when the API key or secret is wrong.
	RejectAuth bool
	// APIKeys, if set, are the only API key to secret pairs accepted: the
	// worker's token must be signed with one of them. When nil, any key
	// and secret are accepted; the token must still be a JWT that carries
	// the agent grant.
	APIKeys map[string]string
	// RegisterDelay delays the answer to every registration.
	RegisterDelay time.Duration
	// CloseAfterRegister answers every registration and then closes the
	// connection at once, as a server does that cannot serve it. Such
	// connections still show up in [Server.WaitWorker].
	CloseAfterRegister bool
	// RefuseRegistration closes every connection when its registration
	// arrives, without answering it, as the server does with a
	// registration it considers invalid.
	RefuseRegistration bool
	// RefuseCloseCode, with RefuseRegistration, refuses with a close frame
	// of this code (websocket.ClosePolicyViolation, 1008, for example)
	// before closing, as a server or proxy may; LiveKit's server sends
	// none.
	RefuseCloseCode int
	// OfferTimeout bounds how long [Conn.Offer] waits for the worker's
	// answer; default DefaultOfferTimeout.
	OfferTimeout time.Duration
	// NoRecord makes the server keep none of the messages workers send,
	// and no job state per connection, so that long runs (benchmarks, soak
	// tests) hold constant memory. Without job state it cannot tell a
	// status of an unknown job from another, and [Conn.Terminate] sends a
	// termination for any job:
	// [Conn.Messages], [Conn.JobStatuses], [Conn.WorkerStatuses] and
	// [Server.JobStatuses] stay empty, and the waits for statuses end only
	// with their context or the connection. [Conn.Offer] still returns the
	// worker's answer, and OnMessage still sees every message.
	NoRecord bool
	// AssignRace reproduces a race of LiveKit's server: it writes an
	// assignment and only then records the job as running on the
	// connection, so a status that arrives in between is dropped as one
	// of an unknown job. With AssignRace set, [Conn.Assign] waits that
	// long between the two; the gap on the real server is usually
	// microseconds, more on a loaded machine.
	AssignRace time.Duration
	// OnMessage, if set, is called with every message a registered
	// connection receives after its registration, in order, on the
	// connection's read loop, before the message is recorded or an offer's
	// answer is delivered. It must be quick and must not wait for the
	// connection's own messages (Offer, the Wait methods): it would
	// wait for itself. Treat the message as read-only.
	OnMessage func(c *Conn, m *livekit.WorkerMessage)
}

// Server is a fake LiveKit server that serves only the agent worker
// endpoint. Create it with [NewServer] or [NewServerWithOptions]; it listens
// until [Server.Close]. Its methods are safe for concurrent use.
type Server struct {
	opts     Options
	hs       *httptest.Server
	upgrader websocket.Upgrader
	quit     chan struct{} // closed by Close
	wg       sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	attempts int
	live     map[*websocket.Conn]struct{}
	conns    []*Conn // registered connections, in order
	next     int     // index in conns of the next WaitWorker answer
	statuses []*livekit.UpdateJobStatus
	changed  chan struct{} // closed and replaced on every change
	workers  int           // registrations so far, for worker ids
}

// NewServer starts a fake server with default options. If tb is not nil the
// server is closed when the test ends; otherwise call [Server.Close].
func NewServer(tb testing.TB) *Server {
	if tb != nil {
		tb.Helper()
	}
	return NewServerWithOptions(tb, Options{})
}

// NewServerWithOptions starts a fake server configured by o. If tb is not
// nil the server is closed when the test ends; otherwise call
// [Server.Close].
func NewServerWithOptions(tb testing.TB, o Options) *Server {
	if o.OfferTimeout <= 0 {
		o.OfferTimeout = DefaultOfferTimeout
	}
	s := &Server{
		opts:     o,
		upgrader: websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }},
		quit:     make(chan struct{}),
		live:     make(map[*websocket.Conn]struct{}),
		changed:  make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/agent", s.serveAgent)
	s.hs = httptest.NewServer(mux)
	if tb != nil {
		tb.Helper()
		tb.Cleanup(s.Close)
	}
	return s
}

// URL is the server's WebSocket base URL (ws://127.0.0.1:port), the value
// for a worker's Options.URL.
func (s *Server) URL() string { return "ws://" + strings.TrimPrefix(s.hs.URL, "http://") }

// HTTPURL is the server's base URL as http://127.0.0.1:port.
func (s *Server) HTTPURL() string { return s.hs.URL }

// Attempts is the number of connection attempts the server has seen,
// including those it rejected.
func (s *Server) Attempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts
}

// Workers returns every registered connection so far, in the order the
// registrations were answered, closed ones included.
func (s *Server) Workers() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Conn(nil), s.conns...)
}

// WaitWorker waits for the next registered connection: the first call
// returns the first registration, the next call the second, and so on. It
// returns ctx's error if ctx ends first, or [ErrServerClosed].
func (s *Server) WaitWorker(ctx context.Context) (*Conn, error) {
	for {
		s.mu.Lock()
		if s.next < len(s.conns) {
			c := s.conns[s.next]
			s.next++
			s.mu.Unlock()
			return c, nil
		}
		ch, closed := s.changed, s.closed
		s.mu.Unlock()
		if closed {
			return nil, ErrServerClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("workertest: wait for a worker: %w", ctx.Err())
		}
	}
}

// JobStatuses returns every job status received on any connection so far,
// in the order they arrived.
func (s *Server) JobStatuses() []*livekit.UpdateJobStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*livekit.UpdateJobStatus(nil), s.statuses...)
}

// WaitJobStatus waits until some connection reported status for jobID, and
// returns that report (the first one if there are several). It returns
// ctx's error if ctx ends first, or [ErrServerClosed].
func (s *Server) WaitJobStatus(ctx context.Context, jobID string, status livekit.JobStatus) (*livekit.UpdateJobStatus, error) {
	for {
		s.mu.Lock()
		for _, u := range s.statuses {
			if u.GetJobId() == jobID && u.GetStatus() == status {
				s.mu.Unlock()
				return u, nil
			}
		}
		ch, closed := s.changed, s.closed
		s.mu.Unlock()
		if closed {
			return nil, ErrServerClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("workertest: wait for job %s to report %s: %w", jobID, status, ctx.Err())
		}
	}
}

// Close closes every connection abruptly, stops the server and waits until
// all its goroutines ended. Close is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.quit)
	live := make([]*websocket.Conn, 0, len(s.live))
	for ws := range s.live {
		live = append(live, ws)
	}
	s.bumpLocked()
	s.mu.Unlock()
	for _, ws := range live {
		_ = ws.NetConn().Close()
	}
	s.hs.Close()
	s.wg.Wait()
}

// ErrServerClosed is returned by waits on a closed [Server].
var ErrServerClosed = errors.New("workertest: server closed")

// ErrClosed is returned by operations on a [Conn] whose connection ended.
var ErrClosed = errors.New("workertest: connection closed")

// bumpLocked wakes every waiter; s.mu is held.
func (s *Server) bumpLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Server) addStatus(u *livekit.UpdateJobStatus) {
	if s.opts.NoRecord {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statuses = append(s.statuses, u)
	s.bumpLocked()
}

func (s *Server) serveAgent(rw http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.attempts++
	if s.closed {
		s.mu.Unlock()
		http.Error(rw, "server closed", http.StatusServiceUnavailable)
		return
	}
	s.wg.Add(1)
	s.bumpLocked()
	s.mu.Unlock()
	defer s.wg.Done()

	if !websocket.IsWebSocketUpgrade(r) {
		http.NotFound(rw, r)
		return
	}
	if s.opts.RejectAuth {
		http.Error(rw, "invalid API key or secret", http.StatusUnauthorized)
		return
	}
	apiKey, err := s.authorize(r)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusUnauthorized)
		return
	}
	ws, err := s.upgrader.Upgrade(rw, r, nil)
	if err != nil {
		return // the upgrader answered the request
	}
	c := newConn(s, wire.Accept(ws), apiKey)
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.live[ws] = struct{}{}
	}
	s.mu.Unlock()
	defer func() {
		_ = ws.Close()
		s.mu.Lock()
		delete(s.live, ws)
		s.mu.Unlock()
		c.end()
	}()
	if closed || !c.handshake() {
		return
	}
	if s.opts.CloseAfterRegister {
		return // closed by the deferred ws.Close, right after the answer
	}
	c.readLoop()
}

// authorize checks the request's bearer token and returns its API key.
func (s *Server) authorize(r *http.Request) (string, error) {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || raw == "" {
		return "", errors.New("missing bearer token")
	}
	v, err := auth.ParseAPIToken(raw)
	if err != nil {
		return "", fmt.Errorf("malformed token: %w", err)
	}
	if s.opts.APIKeys != nil {
		secret, ok := s.opts.APIKeys[v.APIKey()]
		if !ok {
			return "", errors.New("unknown API key")
		}
		_, grants, err := v.Verify(secret)
		if err != nil {
			return "", fmt.Errorf("invalid token: %w", err)
		}
		if grants.Video == nil || !grants.Video.Agent {
			return "", errors.New("token lacks the agent grant")
		}
		return v.APIKey(), nil
	}
	if !hasAgentGrant(raw) {
		return "", errors.New("token lacks the agent grant")
	}
	return v.APIKey(), nil
}

// hasAgentGrant reads the claims of a JWT, without checking its signature,
// and reports whether it grants the agent permission.
func hasAgentGrant(raw string) bool {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return false
	}
	var claims struct {
		Video *struct {
			Agent bool `json:"agent"`
		} `json:"video"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return false
	}
	return claims.Video != nil && claims.Video.Agent
}

// register validates a registration as the server does, publishes the
// connection and answers it. False if the connection must be closed.
func (s *Server) register(c *Conn, req *livekit.RegisterWorkerRequest) bool {
	if s.opts.RefuseRegistration || !livekit.IsJobType(req.GetType()) || agent.ValidateDeployment(req.GetDeployment()) != nil {
		return false
	}
	if d := s.opts.RegisterDelay; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-s.quit:
			t.Stop()
			return false
		}
	}
	s.mu.Lock()
	s.workers++
	c.reg = proto.CloneOf(req)
	c.workerID = fmt.Sprintf("AW_workertest%d", s.workers)
	s.mu.Unlock()
	err := c.wc.Write(&livekit.ServerMessage{Message: &livekit.ServerMessage_Register{
		Register: &livekit.RegisterWorkerResponse{
			WorkerId: c.workerID,
			ServerInfo: &livekit.ServerInfo{
				Edition:       livekit.ServerInfo_Standard,
				Version:       "workertest",
				AgentProtocol: 1,
				NodeId:        "ND_workertest",
			},
		},
	}})
	if err != nil {
		return false
	}
	// Published only once answered: whatever the test sends next comes
	// after the answer, as on the real server.
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.bumpLocked()
	s.mu.Unlock()
	return true
}
