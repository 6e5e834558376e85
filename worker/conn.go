package worker

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/proto"
)

// maxFrame bounds one inbound frame; larger frames are a protocol error.
const maxFrame = 4 << 20

// quickDrop: a connection the server closed this soon after registering it
// was dropped, not lost.
const quickDrop = 2 * time.Second

// maxRefusals: registrations refused in a row before Run gives up.
const maxRefusals = 3

// statusGap is the least time between two worker status updates.
const statusGap = 50 * time.Millisecond

// stableAfter: a connection that lived this long resets the backoff.
const stableAfter = 30 * time.Second

// connectLoop keeps the worker registered until ctx ends or a fatal error.
func (w *Worker) connectLoop(ctx, jobCtx context.Context) error {
	instanceID := randomID()
	failures, quickDrops, refusals := 0, 0, 0
	for {
		start := time.Now()
		w.notify(StateChange{State: StateConnecting, Attempt: failures + 1})
		registered, err := w.runSession(ctx, jobCtx, instanceID)
		if ctx.Err() != nil {
			w.notify(StateChange{State: StateStopped})
			return nil
		}
		var fatal *fatalError
		if errors.As(err, &fatal) {
			w.log.Error("worker cannot connect", slog.Any("error", err))
			w.notify(StateChange{State: StateStopped, Err: fatal.err})
			return fatal.err
		}
		// A server that keeps closing the socket instead of answering the
		// registration will not change its mind: stop after a few tries.
		if errors.Is(err, ErrRegistrationRefused) {
			if refusals++; refusals >= maxRefusals {
				err = fmt.Errorf("%w (%d times in a row; check that the server supports agent workers and the registration's agent name, job type and deployment)", err, refusals)
				w.log.Error("worker cannot register", slog.Any("error", err))
				w.notify(StateChange{State: StateStopped, Err: err})
				return err
			}
		} else {
			refusals = 0
		}
		lived := time.Since(start)
		if registered && lived >= stableAfter {
			failures, quickDrops = 0, 0
		}
		if registered && lived < quickDrop && !errors.Is(err, ErrGoAway) {
			quickDrops++
			w.log.Warn("the server dropped the worker right after registering it; this usually means the server could not serve this registration (check its logs for the agent name, deployment and job type), or that another process keeps superseding this worker",
				slog.Int("times_in_a_row", quickDrops), slog.Any("error", err))
		}
		// A go-away is the server's routine drain, not a failure: it
		// neither counts toward MaxRetry nor waits.
		goAway := errors.Is(err, ErrGoAway)
		if !goAway {
			failures++
		}
		if w.o.MaxRetry > 0 && failures > w.o.MaxRetry {
			err = &gaveUpError{attempts: failures, last: err}
			w.mu.Lock()
			w.gaveUp = true
			w.mu.Unlock()
			w.log.Error("worker gave up reconnecting", slog.Any("error", err))
			w.notify(StateChange{State: StateStopped, Err: err})
			return err
		}
		var delay time.Duration
		if !goAway {
			delay = backoff(failures, w.o.MinBackoff, w.o.MaxBackoff)
		}
		w.obs.reconnect()
		w.obs.disconnected(disconnectReason(registered, err))
		w.log.Warn("disconnected; reconnecting", slog.Any("error", err), slog.Duration("retry_in", delay), slog.Int("attempt", failures))
		w.notify(StateChange{State: StateDisconnected, Err: err, RetryIn: delay, Attempt: failures})
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			w.notify(StateChange{State: StateStopped})
			return nil
		case <-t.C:
		}
	}
}

// backoff is the delay before attempt n (1-based): exponential from min,
// capped at max, with full jitter (uniform in [0, that]).
func backoff(n int, min, max time.Duration) time.Duration {
	d := min
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return rand.N(d + 1)
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

// session is one connection: registered, serving, then closed.
type session struct {
	w        *Worker
	ws       *websocket.Conn
	workerID string
	out      chan *livekit.WorkerMessage // connection-bound messages
	kick     chan struct{}               // outbox has work
	status   chan struct{}               // worker status changed
	done     chan struct{}               // closed when the session ends
	lastPong atomic.Int64                // unix nanos
	closeErr error
	once     sync.Once
}

func (s *session) fail(err error) {
	s.once.Do(func() {
		s.closeErr = err
		close(s.done)
	})
}

func (s *session) kickOutbox() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *session) kickStatus() {
	select {
	case s.status <- struct{}{}:
	default:
	}
}

// send queues a connection-bound message; false if the session ended.
func (s *session) send(m *livekit.WorkerMessage) bool {
	select {
	case s.out <- m:
		return true
	case <-s.done:
		return false
	}
}

// dial opens the /agent websocket and registers.
func (w *Worker) dial(ctx context.Context, instanceID string) (*websocket.Conn, *livekit.RegisterWorkerResponse, error) {
	at := auth.NewAccessToken(w.o.APIKey, w.o.APISecret).
		SetVideoGrant(&auth.VideoGrant{Agent: true}).
		SetValidFor(time.Hour)
	token, err := at.ToJWT()
	if err != nil {
		return nil, nil, &fatalError{fmt.Errorf("worker: sign worker token: %w", err)}
	}
	hdr := http.Header{"Authorization": []string{"Bearer " + token}}
	dctx, cancel := context.WithTimeout(ctx, w.o.RegisterTimeout)
	defer cancel()
	target := agentURL(w.o.URL)
	ws, resp, err := w.dialer.DialContext(dctx, target, hdr)
	if err != nil {
		if resp != nil {
			switch resp.StatusCode {
			case http.StatusUnauthorized, http.StatusForbidden:
				return nil, nil, &fatalError{fmt.Errorf("worker: connect %s: %w", target, ErrUnauthorized)}
			}
			return nil, nil, fmt.Errorf("worker: connect %s: HTTP %d: %w", target, resp.StatusCode, err)
		}
		return nil, nil, fmt.Errorf("worker: connect %s: %w", target, err)
	}
	ws.SetReadLimit(maxFrame)
	// Registration reads ignore ctx: when it ends, end the wait too.
	var regMu sync.Mutex
	regDone := false
	stop := context.AfterFunc(ctx, func() {
		regMu.Lock()
		defer regMu.Unlock()
		if !regDone {
			_ = ws.SetReadDeadline(time.Now())
		}
	})
	defer stop()
	reg := &livekit.WorkerMessage{Message: &livekit.WorkerMessage_Register{Register: &livekit.RegisterWorkerRequest{
		Type:               w.o.JobType,
		AgentName:          w.o.AgentName,
		Version:            w.o.Version,
		PingInterval:       uint32(w.o.PingInterval / time.Second),
		AllowedPermissions: w.o.Permissions,
		Deployment:         w.o.Deployment,
		InstanceId:         instanceID,
	}}}
	deadline, _ := dctx.Deadline()
	_ = ws.SetWriteDeadline(deadline)
	if err := writeMsg(ws, reg); err != nil {
		ws.Close()
		return nil, nil, fmt.Errorf("worker: send registration: %w", err)
	}
	_ = ws.SetReadDeadline(deadline)
	for {
		msg, err := readMsg(ws)
		if err != nil {
			if ctx.Err() != nil {
				_ = ws.WriteControl(websocket.CloseMessage,
					websocket.FormatCloseMessage(websocket.CloseNormalClosure, "worker stopped"), time.Now().Add(time.Second))
				ws.Close()
				return nil, nil, fmt.Errorf("worker: registration interrupted: %w", ctx.Err())
			}
			ws.Close()
			var ce *websocket.CloseError
			if errors.As(err, &ce) || errors.Is(err, errFrame) {
				return nil, nil, fmt.Errorf("worker: %w: %v", ErrRegistrationRefused, err)
			}
			return nil, nil, fmt.Errorf("worker: wait for registration: %w", err)
		}
		if r := msg.GetRegister(); r != nil {
			regMu.Lock()
			regDone = true
			regMu.Unlock()
			_ = ws.SetReadDeadline(time.Time{})
			_ = ws.SetWriteDeadline(time.Time{})
			return ws, r, nil
		}
		w.log.Debug("ignoring message before registration", slog.String("type", msgType(msg)))
	}
}

var errFrame = errors.New("malformed frame")

func writeMsg(ws *websocket.Conn, m *livekit.WorkerMessage) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return ws.WriteMessage(websocket.BinaryMessage, b)
}

func readMsg(ws *websocket.Conn) (*livekit.ServerMessage, error) {
	typ, b, err := ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	if typ != websocket.BinaryMessage {
		return nil, fmt.Errorf("%w: unexpected text frame of %d bytes", errFrame, len(b))
	}
	m := &livekit.ServerMessage{}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("%w: %v", errFrame, err)
	}
	return m, nil
}

// runSession dials, registers and serves one connection until it fails or
// ctx ends (then it closes the connection cleanly). registered reports
// whether the server accepted the registration.
func (w *Worker) runSession(ctx, jobCtx context.Context, instanceID string) (registered bool, err error) {
	ws, reg, err := w.dial(ctx, instanceID)
	if err != nil {
		return false, err
	}
	s := &session{
		w:        w,
		ws:       ws,
		workerID: reg.GetWorkerId(),
		out:      make(chan *livekit.WorkerMessage, 256),
		kick:     make(chan struct{}, 1),
		status:   make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	s.lastPong.Store(time.Now().UnixNano())
	w.mu.Lock()
	w.sess, w.workerID, w.connected = s, s.workerID, true
	w.mu.Unlock()
	w.obs.registered(true)
	w.log.Info("registered", slog.String("worker_id", s.workerID),
		slog.String("server_version", reg.GetServerInfo().GetVersion()))
	w.notify(StateChange{State: StateRegistered, WorkerID: s.workerID})

	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); s.readLoop(jobCtx) }()
	go func() { defer wg.Done(); s.writeLoop() }()
	go func() { defer wg.Done(); s.tickLoop() }()
	s.kickStatus()
	s.kickOutbox()

	select {
	case <-ctx.Done():
		s.fail(errStopped)
	case <-s.done:
	}
	w.mu.Lock()
	w.sess, w.connected = nil, false
	w.mu.Unlock()
	w.obs.registered(false)
	// Unblock the read loop, which may wait on a dead connection (no pong)
	// forever. A stopping worker first gives the server a moment to answer
	// its close frame.
	grace := time.Duration(0)
	if errors.Is(s.closeErr, errStopped) {
		grace = time.Second
	}
	_ = ws.SetReadDeadline(time.Now().Add(grace))
	wg.Wait()
	ws.Close()
	w.dropReservations()
	return true, s.closeErr
}

// readLoop dispatches inbound messages; it never blocks on user code.
func (s *session) readLoop(jobCtx context.Context) {
	for {
		msg, err := readMsg(s.ws)
		if err != nil {
			select {
			case <-s.done:
			default:
				if errors.Is(err, errFrame) {
					s.w.log.Warn("malformed message from server; reconnecting", slog.Any("error", err))
				}
				s.fail(fmt.Errorf("read: %w", err))
			}
			return
		}
		s.w.handleMessage(s, jobCtx, msg, time.Now())
	}
}

// writeLoop is the only writer of the socket.
func (s *session) writeLoop() {
	write := func(m *livekit.WorkerMessage) bool {
		_ = s.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := writeMsg(s.ws, m); err != nil {
			s.fail(fmt.Errorf("write: %w", err))
			return false
		}
		return true
	}
	var lastStatus time.Time
	var statusLater <-chan time.Time
	sendStatus := func() bool {
		lastStatus, statusLater = time.Now(), nil
		return write(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_UpdateWorker{UpdateWorker: s.w.workerStatus()}})
	}
	for {
		select {
		case <-s.done:
			if errors.Is(s.closeErr, errStopped) {
				_ = s.ws.SetWriteDeadline(time.Now().Add(time.Second))
				_ = s.ws.WriteMessage(websocket.CloseMessage,
					websocket.FormatCloseMessage(websocket.CloseNormalClosure, "worker stopped"))
			}
			return
		case m := <-s.out:
			if !write(m) {
				return
			}
		case <-s.status:
			// Throttle: job churn must not turn into a status write per job.
			if wait := statusGap - time.Since(lastStatus); wait > 0 {
				if statusLater == nil {
					statusLater = time.After(wait)
				}
				continue
			}
			if !sendStatus() {
				return
			}
		case <-statusLater:
			if !sendStatus() {
				return
			}
		case <-s.kick:
			for {
				s.w.mu.Lock()
				var head *livekit.UpdateJobStatus
				if len(s.w.outbox) > 0 {
					head = s.w.outbox[0]
				}
				s.w.mu.Unlock()
				if head == nil {
					break
				}
				if !write(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_UpdateJob{UpdateJob: head}}) {
					return
				}
				s.w.mu.Lock()
				s.w.outbox[0] = nil // the array must not keep sent statuses alive
				s.w.outbox = s.w.outbox[1:]
				s.w.mu.Unlock()
			}
		}
	}
}

// tickLoop pings, checks pongs and reports load periodically.
func (s *session) tickLoop() {
	ping := time.NewTicker(s.w.o.PingInterval)
	defer ping.Stop()
	status := time.NewTicker(s.w.o.StatusInterval)
	defer status.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-status.C:
			s.w.touch()
			s.kickStatus()
		case now := <-ping.C:
			last := time.Unix(0, s.lastPong.Load())
			if now.Sub(last) > s.w.o.PingInterval+s.w.o.PongTimeout {
				s.fail(fmt.Errorf("%w (last pong %s ago)", ErrPongTimeout, now.Sub(last).Round(time.Millisecond)))
				return
			}
			s.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Ping{Ping: &livekit.WorkerPing{Timestamp: now.UnixMilli()}}})
		}
	}
}

func msgType(m *livekit.ServerMessage) string {
	switch m.GetMessage().(type) {
	case *livekit.ServerMessage_Register:
		return "register"
	case *livekit.ServerMessage_Availability:
		return "availability"
	case *livekit.ServerMessage_Assignment:
		return "assignment"
	case *livekit.ServerMessage_Termination:
		return "termination"
	case *livekit.ServerMessage_Pong:
		return "pong"
	case *livekit.ServerMessage_GoAway:
		return "go_away"
	case nil:
		return "empty"
	}
	return "unknown"
}

// disconnectReason is a bounded label for why a connection ended.
func disconnectReason(registered bool, err error) string {
	var ce *websocket.CloseError
	switch {
	case errors.Is(err, ErrPongTimeout):
		return "pong_timeout"
	case errors.Is(err, ErrGoAway):
		return "go_away"
	case errors.Is(err, errFrame):
		return "malformed_frame"
	case errors.Is(err, ErrRegistrationRefused):
		return "registration_refused"
	case !registered:
		return "connect_failed"
	case errors.As(err, &ce):
		return "closed_by_server"
	}
	return "connection_lost"
}
