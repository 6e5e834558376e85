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

	"github.com/lkagent/lkagent/internal/wire"
)

const (
	// quickDrop: a registration the server ended this soon was dropped
	// by the server, not lost to the network.
	quickDrop = 2 * time.Second
	// quickDropsToWarn: quick drops in a row before the worker says what
	// they likely mean. One can be a server shutting down right after
	// answering; two in a row are the server refusing the registration.
	quickDropsToWarn = 2
	// statusGap is the least time between two worker status updates.
	statusGap = 50 * time.Millisecond
	// stableAfter: a connection that lived this long resets the backoff.
	stableAfter = 30 * time.Second
	// tokenTTL is the validity of the worker's connection token.
	tokenTTL = time.Hour
)

// StatusDelay is the least time between a job's assignment arriving and
// the first status the worker sends about that job.
//
// LiveKit's server writes an assignment to the worker and only then
// records the job as running on that connection; a status that arrives in
// between is dropped as a status of an unknown job, and the server shows
// the job running forever. On loopback a handler that returns at once
// lost its end about once in 60 jobs without a delay; the gap the server
// needs is a goroutine switch (microseconds), more on a loaded machine.
// Holding a job's statuses this long costs nothing else: the job's slot is
// freed as soon as it ends.
const StatusDelay = 250 * time.Millisecond

// connectLoop keeps the worker registered until ctx ends or an error that
// retrying cannot fix. It never ends a job.
func (w *Worker) connectLoop(ctx, jobCtx context.Context) error {
	instanceID := randomID()
	failures, goAways, quickDrops := 0, 0, 0
	for {
		w.notify(StateChange{State: StateConnecting, Attempt: failures + 1})
		res := w.runSession(ctx, jobCtx, instanceID)
		if ctx.Err() != nil {
			w.notify(StateChange{State: StateStopped})
			return nil
		}
		kind := wire.KindOf(res.err)
		err := runError(kind, res.err)
		if kind.Permanent() {
			w.log.Error("worker cannot connect; not retrying", slog.Any("error", err))
			w.notify(StateChange{State: StateStopped, Err: err})
			return err
		}
		if res.registered && res.lived >= stableAfter {
			failures, goAways, quickDrops = 0, 0, 0
			w.setHint("")
		}
		var delay time.Duration
		if kind == wire.GoAway {
			// The server's routine drain: reconnect at once, but not in
			// a tight loop if it keeps sending us away.
			if goAways++; goAways > 1 {
				delay = backoff(goAways-1, w.o.MinBackoff, w.o.MaxBackoff)
			}
		} else {
			failures++
			delay = backoff(failures, w.o.MinBackoff, w.o.MaxBackoff)
		}
		switch {
		case res.registered && res.lived < quickDrop && dropped(kind, res.err):
			if quickDrops++; quickDrops >= quickDropsToWarn {
				hint := w.quickDropHint(quickDrops)
				w.setHint(hint)
				w.log.Warn(hint, slog.Any("error", err))
			}
		case res.registered:
			quickDrops = 0
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
		w.obs.reconnect()
		w.obs.disconnected(disconnectReason(res.registered, kind, res.err))
		level := slog.LevelWarn
		if kind == wire.Refused {
			level = slog.LevelError // a server that refuses us will likely keep doing so: say it loudly
		}
		w.log.Log(context.Background(), level, "disconnected; reconnecting", slog.Any("error", err),
			slog.String("kind", kind.String()), slog.Duration("retry_in", delay), slog.Int("attempt", failures))
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

// dropped reports whether a connection's end was the server dropping it:
// neither a go-away nor a pong timeout (which is the network).
func dropped(k wire.Kind, err error) bool {
	return (k == wire.Lost || k == wire.Closed || k == wire.Refused) && !errors.Is(err, ErrPongTimeout)
}

// runError wraps err with the sentinel of its kind, for errors.Is.
func runError(k wire.Kind, err error) error {
	switch k {
	case wire.Unauthorized:
		return fmt.Errorf("worker: %w: %w", ErrUnauthorized, err)
	case wire.Misconfigured:
		return fmt.Errorf("worker: %w: %w", ErrMisconfigured, err)
	case wire.Refused:
		return fmt.Errorf("worker: %w: %w", ErrRegistrationRefused, err)
	}
	return fmt.Errorf("worker: %w", err)
}

// quickDropHint says what a registration the server keeps dropping at once
// likely means, naming the registration it may collide with.
func (w *Worker) quickDropHint(times int) string {
	hint := fmt.Sprintf("the server dropped the registration right after accepting it, %d times in a row", times)
	if other, ok := topicTwin(w.o.AgentName, w.o.Deployment); ok {
		return hint + fmt.Sprintf("; on LiveKit's server agent %q in %s and agent %q in %s share one job topic, "+
			"and the second of them to register is refused: if both run, rename one",
			w.o.AgentName, deploymentName(w.o.Deployment), other.agentName, deploymentName(other.deployment))
	}
	return hint + "; check the server's log for this agent name and deployment"
}

// registration is an agent name and deployment pair.
type registration struct{ agentName, deployment string }

// topicTwin returns the registration whose job topic on LiveKit's server
// equals that of (agentName, deployment), if there is one: the server names
// the topic agentName, plus "_" and the deployment when there is one.
func topicTwin(agentName, deployment string) (registration, bool) {
	if agentName == "" {
		return registration{}, false
	}
	if deployment != "" {
		return registration{agentName: agentName + "_" + deployment}, true
	}
	for i := len(agentName) - 1; i > 0; i-- {
		if agentName[i] == '_' {
			if d := agentName[i+1:]; d != "" && validDeployment(d) == nil {
				return registration{agentName: agentName[:i], deployment: d}, true
			}
			return registration{}, false
		}
	}
	return registration{}, false
}

func deploymentName(d string) string {
	if d == "" {
		return "production"
	}
	return "deployment " + fmt.Sprintf("%q", d)
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

// session is one connection: dialled, registered, serving, then closed.
type session struct {
	w    *Worker
	conn *wire.Worker

	out        chan *livekit.WorkerMessage // connection-bound messages
	kick       chan struct{}               // the outbox has work
	status     chan struct{}               // the worker status changed
	registered chan struct{}               // closed when the registration is answered
	done       chan struct{}               // closed when the session ends
	lastPong   atomic.Int64                // unix nanos
	reg        *livekit.RegisterWorkerResponse
	regOnce    sync.Once
	closeErr   error
	once       sync.Once

	// outbox holds the job statuses to write on this connection, in
	// order; writing counts those taken from it and being written. Guarded
	// by w.mu.
	outbox  []*livekit.UpdateJobStatus
	writing int
}

func (s *session) fail(err error) {
	s.once.Do(func() {
		s.closeErr = err
		close(s.done)
	})
}

func (s *session) isRegistered() bool {
	select {
	case <-s.registered:
		return true
	default:
		return false
	}
}

func (s *session) workerID() string { return s.reg.GetWorkerId() }

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

// sessionResult is how a session ended.
type sessionResult struct {
	registered bool          // the server answered the registration
	lived      time.Duration // from the answer to the end
	err        error
}

// errRegisterTimeout: the server accepted the connection but did not
// answer the registration in time.
var errRegisterTimeout = errors.New("no answer to the registration in time")

// runSession dials, registers and serves one connection until it fails or
// ctx ends (then it closes the connection cleanly).
func (w *Worker) runSession(ctx, jobCtx context.Context, instanceID string) sessionResult {
	token, err := auth.NewAccessToken(w.o.APIKey, w.o.APISecret).
		SetVideoGrant(&auth.VideoGrant{Agent: true}).
		SetValidFor(tokenTTL).
		ToJWT()
	if err != nil {
		return sessionResult{err: wire.New(wire.Misconfigured, "dial", fmt.Errorf("sign the worker token: %w", err))}
	}
	dctx, cancel := context.WithTimeout(ctx, w.o.RegisterTimeout)
	defer cancel()
	conn, err := wire.Dial(dctx, wire.DialConfig{
		URL:    w.agentURL,
		Header: http.Header{"Authorization": []string{"Bearer " + token}},
		Dialer: w.dialer,
	})
	if err != nil {
		return sessionResult{err: err}
	}
	s := &session{
		w:          w,
		conn:       conn,
		out:        make(chan *livekit.WorkerMessage, 256),
		kick:       make(chan struct{}, 1),
		status:     make(chan struct{}, 1),
		registered: make(chan struct{}),
		done:       make(chan struct{}),
	}
	s.out <- &livekit.WorkerMessage{Message: &livekit.WorkerMessage_Register{Register: &livekit.RegisterWorkerRequest{
		Type:               w.o.JobType,
		AgentName:          w.o.AgentName,
		Version:            w.o.Version,
		PingInterval:       uint32(w.o.PingInterval / time.Second),
		AllowedPermissions: w.o.Permissions,
		Deployment:         w.o.Deployment,
		InstanceId:         instanceID,
	}}}
	var loops sync.WaitGroup
	loops.Add(2)
	go func() { defer loops.Done(); s.readLoop(jobCtx) }()
	go func() { defer loops.Done(); s.writeLoop() }()

	select {
	case <-s.registered:
	case <-s.done:
	case <-dctx.Done():
		if ctx.Err() != nil {
			s.fail(wire.New(wire.Stopped, "register", ctx.Err()))
		} else {
			s.fail(wire.New(wire.Lost, "register", fmt.Errorf("%w (%s)", errRegisterTimeout, w.o.RegisterTimeout)))
		}
	}
	res := sessionResult{registered: s.isRegistered()}
	var registeredAt time.Time
	if res.registered {
		registeredAt = time.Now()
		w.publish(s)
		loops.Add(1)
		go func() { defer loops.Done(); s.tickLoop() }()
		select {
		case <-ctx.Done():
			s.fail(wire.New(wire.Stopped, "serve", errStopped))
		case <-s.done:
		}
		res.lived = time.Since(registeredAt)
	}
	w.unpublish(s)
	if wire.KindOf(s.closeErr) == wire.Stopped {
		// Tell the server, and give it a moment to answer our close.
		_ = conn.SendClose(websocket.CloseNormalClosure, "worker stopped")
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		waitOrAbort(&loops, time.Second, conn)
	}
	_ = conn.Abort() // unblocks the read loop, which may wait on a dead connection forever
	loops.Wait()
	res.err = s.closeErr
	return res
}

// waitOrAbort waits for wg up to d, then aborts conn.
func waitOrAbort(wg *sync.WaitGroup, d time.Duration, conn *wire.Worker) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		_ = conn.Abort()
		<-done
	}
}

// publish makes s the worker's current connection, tells the server which
// jobs outlived earlier connections, and starts reporting.
func (w *Worker) publish(s *session) {
	s.lastPong.Store(time.Now().UnixNano())
	w.mu.Lock()
	var outlived []string
	for id, a := range w.table.jobs {
		if a.line.sess != s {
			outlived = append(outlived, id)
		}
	}
	w.mu.Unlock()
	w.obs.registered(true)
	w.log.Info("registered", slog.String("worker_id", s.workerID()),
		slog.String("server_version", s.reg.GetServerInfo().GetVersion()))
	w.notify(StateChange{State: StateRegistered, WorkerID: s.workerID()})
	w.registeredOnce() // after notify: Start returns once OnStateChange knows
	if len(outlived) > 0 {
		// LiveKit Cloud moves such jobs to the new connection; the
		// open-source server (v1.13) ignores the request: there the jobs
		// stay unknown to it and end with their rooms.
		s.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_MigrateJob{
			MigrateJob: &livekit.MigrateJobRequest{JobIds: outlived}}})
		w.obs.migrated(len(outlived))
		w.log.Info("jobs outlived the previous connection; asked the server to migrate them",
			slog.Int("jobs", len(outlived)), slog.Any("job_ids", outlived))
	}
	s.kickStatus()
	s.kickOutbox()
}

// unpublish ends s as the current connection: its unsent statuses and its
// accepted but unassigned offers are dropped (they belong to it).
func (w *Worker) unpublish(s *session) {
	w.mu.Lock()
	wasCurrent := w.sess == s
	if wasCurrent {
		w.sess, w.connected = nil, false
	}
	dropped := len(s.outbox)
	s.outbox = nil
	w.table.releaseSession(s)
	w.mu.Unlock()
	if wasCurrent {
		w.obs.registered(false)
	}
	if dropped > 0 {
		w.obs.statusesDropped(dropped)
	}
}

// readLoop dispatches inbound messages. It runs no user code and logs
// nothing: whatever may block runs on goroutines of its own.
func (s *session) readLoop(jobCtx context.Context) {
	for {
		msg, err := s.conn.Read()
		if err != nil {
			s.fail(err)
			return
		}
		s.w.dispatch(s, jobCtx, msg, time.Now())
	}
}

// dispatch routes one server message.
func (w *Worker) dispatch(s *session, jobCtx context.Context, msg *livekit.ServerMessage, at time.Time) {
	w.touch()
	switch m := msg.GetMessage().(type) {
	case *livekit.ServerMessage_Register:
		s.regOnce.Do(func() {
			s.reg = m.Register
			// The connection is current before the next message is
			// read: a job assigned at once reports on it.
			w.mu.Lock()
			w.sess, w.workerID, w.connected = s, s.workerID(), true
			w.mu.Unlock()
			close(s.registered)
		})
	case *livekit.ServerMessage_Availability:
		if !s.isRegistered() {
			return // the server offers nothing before it registered us
		}
		w.bg.Add(1)
		go func() {
			defer w.bg.Done()
			w.handleOffer(s, m.Availability, at)
		}()
	case *livekit.ServerMessage_Assignment:
		w.handleAssignment(s, jobCtx, m.Assignment, at)
	case *livekit.ServerMessage_Termination:
		w.handleTermination(m.Termination.GetJobId())
	case *livekit.ServerMessage_Pong:
		s.lastPong.Store(at.UnixNano())
	case *livekit.ServerMessage_GoAway:
		s.fail(&wire.Error{Kind: wire.GoAway, Op: "read", Err: ErrGoAway})
	default:
		// A message of a newer protocol: ignored.
	}
}

// writeLoop is the only writer of the socket.
func (s *session) writeLoop() {
	write := func(m *livekit.WorkerMessage) bool {
		if err := s.conn.Write(m); err != nil {
			s.fail(err)
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
			return
		case m := <-s.out:
			if !write(m) {
				return
			}
		case <-s.status:
			if !s.isRegistered() {
				continue
			}
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
				if len(s.outbox) > 0 {
					head = s.outbox[0]
					s.outbox[0] = nil // the array must not keep sent statuses alive
					s.outbox = s.outbox[1:]
					s.writing++
				}
				s.w.mu.Unlock()
				if head == nil {
					break
				}
				ok := write(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_UpdateJob{UpdateJob: head}})
				s.w.mu.Lock()
				s.writing--
				s.w.mu.Unlock()
				if !ok {
					s.w.obs.statusesDropped(1)
					return
				}
			}
		}
	}
}

// tickLoop pings, checks pongs and reports load periodically. A
// connection is dead once no pong came for PingInterval+PongTimeout: the
// check runs at that instant after the last pong, not at the next ping.
func (s *session) tickLoop() {
	ping := time.NewTicker(s.w.o.PingInterval)
	defer ping.Stop()
	status := time.NewTicker(s.w.o.StatusInterval)
	defer status.Stop()
	silence := s.w.o.PingInterval + s.w.o.PongTimeout
	dead := time.NewTimer(silence)
	defer dead.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-status.C:
			s.w.touch()
			s.kickStatus()
		case now := <-dead.C:
			last := time.Unix(0, s.lastPong.Load())
			if wait := silence - now.Sub(last); wait > 0 {
				dead.Reset(wait)
				continue
			}
			s.fail(wire.New(wire.Lost, "read", fmt.Errorf("%w (last pong %s ago)", ErrPongTimeout, now.Sub(last).Round(time.Millisecond))))
			return
		case now := <-ping.C:
			s.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Ping{Ping: &livekit.WorkerPing{Timestamp: now.UnixMilli()}}})
		}
	}
}

// disconnectReason is a bounded label for why a connection ended.
func disconnectReason(registered bool, k wire.Kind, err error) string {
	switch {
	case errors.Is(err, ErrPongTimeout):
		return "pong_timeout"
	case errors.Is(err, errRegisterTimeout):
		return "registration_timeout"
	case k == wire.GoAway:
		return "go_away"
	case k == wire.Malformed:
		return "malformed_frame"
	case k == wire.Refused:
		return "refused"
	case !registered:
		return "connect_failed"
	case k == wire.Closed:
		return "closed_by_server"
	}
	return "connection_lost"
}
