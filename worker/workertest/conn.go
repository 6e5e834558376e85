package workertest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/livekit/protocol/livekit"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/lkagent/lkagent/internal/wire"
)

// Token is the room token [Conn.Dispatch] assigns jobs with. It is not a
// valid LiveKit token: a handler that joins the room with it fails.
const Token = "workertest-token"

// Conn is one worker connection, as the server sees it. The test plays the
// server through it. Its methods are safe for concurrent use; the messages
// it returns are the ones received, to be treated as read-only.
type Conn struct {
	srv     *Server
	wc      *wire.Server
	apiKey  string
	done    chan struct{} // closed when the connection ended
	noPongs atomic.Bool

	// Set once at registration, before the Conn is published.
	reg      *livekit.RegisterWorkerRequest
	workerID string

	mu             sync.Mutex
	msgs           []*livekit.WorkerMessage
	jobStatuses    []*livekit.UpdateJobStatus
	unknown        []*livekit.UpdateJobStatus
	workerStatuses []*livekit.UpdateWorkerStatus
	migrations     [][]string
	running        map[string]bool // jobs assigned on this connection and not ended, as the server keeps them
	offers         map[string][]chan *livekit.AvailabilityResponse
	closeCode      int
	err            error
	changed        chan struct{} // closed and replaced on every change
}

func newConn(s *Server, wc *wire.Server, apiKey string) *Conn {
	return &Conn{
		srv:     s,
		wc:      wc,
		apiKey:  apiKey,
		done:    make(chan struct{}),
		running: make(map[string]bool),
		offers:  make(map[string][]chan *livekit.AvailabilityResponse),
		changed: make(chan struct{}),
	}
}

// Registration is the worker's registration request: agent name,
// deployment, job type, version, instance id, permissions.
func (c *Conn) Registration() *livekit.RegisterWorkerRequest { return c.reg }

// WorkerID is the id the server gave this registration (AW_…).
func (c *Conn) WorkerID() string { return c.workerID }

// APIKey is the API key the worker's token was issued by.
func (c *Conn) APIKey() string { return c.apiKey }

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the connection ended (nil while it is open): the read error,
// a *websocket.CloseError when the worker closed it with a close frame, or
// a protocol violation.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// CloseCode is the status code of the close frame the worker sent
// (websocket.CloseNormalClosure, 1000, when a worker stops cleanly), or 0
// if it sent none.
func (c *Conn) CloseCode() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeCode
}

// Messages returns every message received on the connection so far, the
// registration included, in order.
func (c *Conn) Messages() []*livekit.WorkerMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*livekit.WorkerMessage(nil), c.msgs...)
}

// JobStatuses returns the job status updates the server recorded so far,
// in order: those of jobs running on this connection. Updates of jobs the
// connection does not run (never assigned on it, already ended, or
// terminated) are dropped by LiveKit's server; the fake keeps them apart,
// in [Conn.UnknownStatuses].
func (c *Conn) JobStatuses() []*livekit.UpdateJobStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*livekit.UpdateJobStatus(nil), c.jobStatuses...)
}

// UnknownStatuses returns the job status updates of jobs this connection
// did not run when they arrived, in order: LiveKit's server drops them
// ("received job update for unknown job"), so a worker that sends one has
// lost that status.
func (c *Conn) UnknownStatuses() []*livekit.UpdateJobStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*livekit.UpdateJobStatus(nil), c.unknown...)
}

// Migrations returns the job ids of every MigrateJob request received, in
// order. (LiveKit's open-source server ignores them; the fake only records
// them, and the jobs stay unknown to this connection.)
func (c *Conn) Migrations() [][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]string(nil), c.migrations...)
}

// Running returns the ids of the jobs this connection runs, as the server
// sees them: assigned and not ended.
func (c *Conn) Running() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.running))
	for id := range c.running {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// WorkerStatuses returns the worker status updates received so far, in
// order.
func (c *Conn) WorkerStatuses() []*livekit.UpdateWorkerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*livekit.UpdateWorkerStatus(nil), c.workerStatuses...)
}

// Offer offers j to the worker (an AvailabilityRequest) and returns its
// answer. It fails if no answer comes within Options.OfferTimeout, if ctx
// ends, or if the connection ends first. Concurrent offers of one job id
// are answered in the order they were sent.
func (c *Conn) Offer(ctx context.Context, j *livekit.Job) (*livekit.AvailabilityResponse, error) {
	id := j.GetId()
	ch := make(chan *livekit.AvailabilityResponse, 1)
	c.mu.Lock()
	c.offers[id] = append(c.offers[id], ch)
	c.mu.Unlock()
	defer c.dropOffer(id, ch)

	if err := c.Send(ctx, &livekit.ServerMessage{Message: &livekit.ServerMessage_Availability{
		Availability: &livekit.AvailabilityRequest{Job: j},
	}}); err != nil {
		return nil, err
	}
	t := time.NewTimer(c.srv.opts.OfferTimeout)
	defer t.Stop()
	select {
	case res := <-ch:
		return res, nil
	case <-t.C:
		return nil, fmt.Errorf("workertest: offer of job %s: no answer within %s", id, c.srv.opts.OfferTimeout)
	case <-ctx.Done():
		return nil, fmt.Errorf("workertest: offer of job %s: %w", id, ctx.Err())
	case <-c.done:
		return nil, fmt.Errorf("workertest: offer of job %s: %w", id, ErrClosed)
	}
}

func (c *Conn) dropOffer(id string, ch chan *livekit.AvailabilityResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.offers[id]
	for i, x := range q {
		if x == ch {
			q = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(c.offers, id)
	} else {
		c.offers[id] = q
	}
}

// Assign assigns j to the worker (a JobAssignment with token and no URL,
// which means the URL the worker connected to), and records the job as
// running on this connection, as the server does: after writing the
// assignment (after Options.AssignRace more, if set).
func (c *Conn) Assign(ctx context.Context, j *livekit.Job, token string) error {
	return c.SendAssignment(ctx, &livekit.JobAssignment{Job: j, Token: token})
}

// SendAssignment sends a, an assignment of any form (with a URL, say),
// and records its job as running on this connection as [Conn.Assign] does.
func (c *Conn) SendAssignment(ctx context.Context, a *livekit.JobAssignment) error {
	if err := c.Send(ctx, &livekit.ServerMessage{Message: &livekit.ServerMessage_Assignment{Assignment: a}}); err != nil {
		return err
	}
	if d := c.srv.opts.AssignRace; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-c.done:
			t.Stop()
		}
	}
	if c.srv.opts.NoRecord {
		return nil
	}
	c.mu.Lock()
	c.running[a.GetJob().GetId()] = true
	c.bumpLocked()
	c.mu.Unlock()
	return nil
}

// Dispatch offers j and, if the worker accepts, assigns it with [Token]. It
// returns the worker's answer to the offer; the job runs if
// res.GetAvailable() is true and err is nil.
func (c *Conn) Dispatch(ctx context.Context, j *livekit.Job) (res *livekit.AvailabilityResponse, err error) {
	res, err = c.Offer(ctx, j)
	if err != nil || !res.GetAvailable() || res.GetTerminate() {
		return res, err
	}
	return res, c.Assign(ctx, j, Token)
}

// ErrJobNotFound is returned by [Conn.Terminate] for a job the connection
// does not run.
var ErrJobNotFound = errors.New("workertest: job not running on this connection")

// Terminate ends job jobID as the server does when its dispatch is
// deleted or its room closes: it sends a JobTermination and records the
// job as ended (successfully) at once, so the worker's own final status
// for it will be an unknown job's. A job the connection does not run gets
// no message and ErrJobNotFound, as on the server. (To send a termination
// regardless, use [Conn.Send].)
func (c *Conn) Terminate(jobID string) error {
	c.mu.Lock()
	running := c.running[jobID] || c.srv.opts.NoRecord
	c.mu.Unlock()
	if !running {
		return fmt.Errorf("workertest: terminate %s: %w", jobID, ErrJobNotFound)
	}
	err := c.Send(context.Background(), &livekit.ServerMessage{Message: &livekit.ServerMessage_Termination{
		Termination: &livekit.JobTermination{JobId: jobID},
	}})
	c.mu.Lock()
	delete(c.running, jobID)
	c.bumpLocked()
	c.mu.Unlock()
	return err
}

// SendGoAway tells the worker that the server is draining this connection.
func (c *Conn) SendGoAway() error {
	return c.Send(context.Background(), &livekit.ServerMessage{Message: &livekit.ServerMessage_GoAway{
		GoAway: &livekit.AgentHttp_GoAway{Reason: "workertest"},
	}})
}

// UnknownMessage returns the frame [Conn.SendUnknown] sends: a well-formed
// ServerMessage whose only field has a number no version of the protocol
// defines, as a newer server's new kind of message looks to an older
// worker.
func UnknownMessage() []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, 4242, protowire.BytesType), []byte("from the future"))
}

// SendUnknown sends [UnknownMessage]. A worker should ignore it.
func (c *Conn) SendUnknown() error {
	return c.SendRaw(websocket.BinaryMessage, UnknownMessage())
}

// Send sends m to the worker, for messages the other methods do not cover
// (an assignment with a URL, a resuming offer, an offer not waited for).
// It records nothing: a job assigned this way is not running on the
// connection as far as the fake is concerned.
func (c *Conn) Send(ctx context.Context, m *livekit.ServerMessage) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("workertest: marshal: %w", err)
	}
	return c.SendRaw(websocket.BinaryMessage, b)
}

// SendRaw sends data as one frame of type msgType (websocket.BinaryMessage,
// websocket.TextMessage, …) as it is: garbage, text, oversized frames.
func (c *Conn) SendRaw(msgType int, data []byte) error {
	if err := c.wc.WriteFrame(msgType, data); err != nil {
		select {
		case <-c.done:
			return fmt.Errorf("workertest: send: %w: %v", ErrClosed, err)
		default:
			return fmt.Errorf("workertest: send: %w", err)
		}
	}
	return nil
}

// Drop closes the connection abruptly, without a close frame, as a lost
// network or a crashed server does.
func (c *Conn) Drop() {
	_ = c.wc.Abort()
}

// CloseWith closes the connection with a close frame of code and reason,
// as a server that refuses a connection may (1008, policy violation, for
// example).
func (c *Conn) CloseWith(code int, reason string) {
	_ = c.wc.Close(code, reason)
}

// StopPongs makes the server stop answering the worker's pings.
func (c *Conn) StopPongs() { c.noPongs.Store(true) }

// ResumePongs makes the server answer the worker's pings again.
func (c *Conn) ResumePongs() { c.noPongs.Store(false) }

// WaitJobStatus waits until the worker reported status for jobID on this
// connection and returns that report (the first if there are several). It
// fails if ctx ends, or if the connection ended without such a report.
func (c *Conn) WaitJobStatus(ctx context.Context, jobID string, status livekit.JobStatus) (*livekit.UpdateJobStatus, error) {
	var found *livekit.UpdateJobStatus
	err := c.waitFor(ctx, func() bool {
		for _, u := range c.jobStatuses {
			if u.GetJobId() == jobID && u.GetStatus() == status {
				found = u
				return true
			}
		}
		return false
	})
	if err != nil {
		return nil, fmt.Errorf("workertest: wait for job %s to report %s: %w", jobID, status, err)
	}
	return found, nil
}

// WaitWorkerStatus waits until the worker sent a status update on this
// connection for which match returns true, and returns it. It fails if ctx
// ends, or if the connection ended without such an update.
func (c *Conn) WaitWorkerStatus(ctx context.Context, match func(*livekit.UpdateWorkerStatus) bool) (*livekit.UpdateWorkerStatus, error) {
	var found *livekit.UpdateWorkerStatus
	err := c.waitFor(ctx, func() bool {
		for _, u := range c.workerStatuses {
			if match(u) {
				found = u
				return true
			}
		}
		return false
	})
	if err != nil {
		return nil, fmt.Errorf("workertest: wait for a worker status: %w", err)
	}
	return found, nil
}

// waitFor waits until check (called with c.mu held) is true.
func (c *Conn) waitFor(ctx context.Context, check func() bool) error {
	for {
		c.mu.Lock()
		ok, ch := check(), c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-c.done:
			c.mu.Lock()
			ok := check()
			c.mu.Unlock()
			if ok {
				return nil
			}
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// handshake waits for the registration and answers it; false if the
// connection must be closed. As on the server, only a registration and
// pings may come first: anything else ends the connection.
func (c *Conn) handshake() bool {
	_ = c.wc.SetReadDeadline(time.Now().Add(RegisterTimeout))
	for {
		m, ok := c.read()
		if !ok {
			return false
		}
		switch x := m.GetMessage().(type) {
		case *livekit.WorkerMessage_Register:
			if !c.srv.register(c, x.Register) {
				c.fail(errors.New("workertest: registration refused"))
				if code := c.srv.opts.RefuseCloseCode; code != 0 && c.srv.opts.RefuseRegistration {
					_ = c.wc.Close(code, "registration refused")
				}
				return false
			}
			_ = c.wc.SetReadDeadline(time.Time{})
			return true
		case *livekit.WorkerMessage_Ping:
			c.pong(x.Ping)
		default:
			c.fail(fmt.Errorf("workertest: protocol violation: %T before the registration", m.GetMessage()))
			return false
		}
	}
}

// readLoop serves the registered connection until it ends.
func (c *Conn) readLoop() {
	for {
		m, ok := c.read()
		if !ok {
			return
		}
		if f := c.srv.opts.OnMessage; f != nil {
			f(c, m)
		}
		record := !c.srv.opts.NoRecord
		switch x := m.GetMessage().(type) {
		case *livekit.WorkerMessage_Ping:
			c.pong(x.Ping)
		case *livekit.WorkerMessage_Availability:
			id := x.Availability.GetJobId()
			c.mu.Lock()
			if q := c.offers[id]; len(q) > 0 {
				q[0] <- x.Availability
				c.offers[id] = q[1:]
			}
			c.mu.Unlock()
		case *livekit.WorkerMessage_UpdateJob:
			c.updateJob(x.UpdateJob, record)
		case *livekit.WorkerMessage_UpdateWorker:
			if record {
				c.mu.Lock()
				c.workerStatuses = append(c.workerStatuses, x.UpdateWorker)
				c.bumpLocked()
				c.mu.Unlock()
			}
		case *livekit.WorkerMessage_MigrateJob:
			c.mu.Lock()
			c.migrations = append(c.migrations, append([]string(nil), x.MigrateJob.GetJobIds()...))
			c.bumpLocked()
			c.mu.Unlock()
		case *livekit.WorkerMessage_SimulateJob:
			// The fake offers only what the test offers.
		case *livekit.WorkerMessage_Register:
			c.fail(errors.New("workertest: protocol violation: a second registration"))
			return
		default:
			// The server ends the connection on a message it cannot
			// dispatch.
			c.fail(fmt.Errorf("workertest: protocol violation: unknown worker message %T", m.GetMessage()))
			return
		}
	}
}

// updateJob records a job status as the server does: the status of a job
// running on this connection is taken (and an end forgets the job); any
// other is an unknown job's.
func (c *Conn) updateJob(u *livekit.UpdateJobStatus, record bool) {
	c.mu.Lock()
	known := c.running[u.GetJobId()]
	if known && (u.GetStatus() == livekit.JobStatus_JS_SUCCESS || u.GetStatus() == livekit.JobStatus_JS_FAILED) {
		delete(c.running, u.GetJobId())
	}
	if record {
		if known {
			c.jobStatuses = append(c.jobStatuses, u)
		} else {
			c.unknown = append(c.unknown, u)
		}
	}
	c.bumpLocked()
	c.mu.Unlock()
	if known {
		c.srv.addStatus(u)
	}
}

// read reads and records one message. A read error or a frame that is not
// a binary WorkerMessage ends the connection, as on the real server.
func (c *Conn) read() (*livekit.WorkerMessage, bool) {
	m, err := c.wc.Read()
	if err != nil {
		if wire.KindOf(err) == wire.Malformed {
			err = fmt.Errorf("workertest: protocol violation: %w", err)
		}
		c.fail(err)
		return nil, false
	}
	if !c.srv.opts.NoRecord {
		c.mu.Lock()
		c.msgs = append(c.msgs, m)
		c.bumpLocked()
		c.mu.Unlock()
	}
	return m, true
}

func (c *Conn) pong(p *livekit.WorkerPing) {
	if c.noPongs.Load() {
		return
	}
	_ = c.Send(context.Background(), &livekit.ServerMessage{Message: &livekit.ServerMessage_Pong{
		Pong: &livekit.WorkerPong{LastTimestamp: p.GetTimestamp(), Timestamp: time.Now().UnixMilli()},
	}})
}

// fail records why the connection ends (the first reason wins).
func (c *Conn) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	var we *wire.Error
	if errors.As(err, &we) {
		c.closeCode = we.Code
	}
}

// end marks the connection ended; called once, after the socket closed.
func (c *Conn) end() {
	c.mu.Lock()
	if c.err == nil {
		c.err = ErrClosed
	}
	close(c.done)
	c.bumpLocked()
	c.mu.Unlock()
}

func (c *Conn) bumpLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}
