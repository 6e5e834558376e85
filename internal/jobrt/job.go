// Package jobrt is the runtime half of a job: the state behind a
// [job.Job], built and driven by the worker (in its process or in a job
// process) and by jobtest. Handler code never sees it; package job exposes
// what handlers use.
package jobrt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/sdklog"
)

// Causes with which a job's context is cancelled. Read them with
// context.Cause(ctx).
var (
	// ErrTerminated: the server asked the worker to stop the job (the
	// dispatch was deleted or the room closed).
	ErrTerminated = errors.New("job terminated by server")
	// ErrDrainTimeout: the worker was draining and the job did not end
	// within the drain timeout.
	ErrDrainTimeout = errors.New("job cancelled: worker drain timeout")
	// ErrWorkerStopped: the worker stopped without draining.
	ErrWorkerStopped = errors.New("job cancelled: worker stopped")
	// ErrRoomDisconnected: the agent was disconnected from the job's room
	// (the room was deleted or closed, or the agent was removed). The job
	// is over and counts as a success.
	ErrRoomDisconnected = errors.New("job ended: disconnected from the room")
	// ErrShutdown: the handler called [Job.Shutdown]. The cause is a
	// *ShutdownError that wraps it and carries the reason.
	ErrShutdown = errors.New("job shut down by its handler")
	// ErrParticipantLeft: the cause of the context a participant entrypoint
	// ([Job.OnParticipant]) runs with, once its participant left the room.
	ErrParticipantLeft = errors.New("participant left the room")
	// ErrNotConnected: a helper that needs the job's room was called
	// before [Job.Connect] joined it.
	ErrNotConnected = errors.New("not in the room yet: call Connect first")
	// ErrNoCredentials: [Job.API] was called on a job whose runtime gave
	// it no server API URL, key or secret.
	ErrNoCredentials = errors.New("no server API credentials")
)

// ShutdownError is the cause of a job context cancelled by [Job.Shutdown].
type ShutdownError struct{ Reason string }

func (e *ShutdownError) Error() string {
	if e.Reason == "" {
		return ErrShutdown.Error()
	}
	return ErrShutdown.Error() + ": " + e.Reason
}

// Unwrap makes errors.Is(err, ErrShutdown) true.
func (e *ShutdownError) Unwrap() error { return ErrShutdown }

// Params describe a job to [New]. Runtimes fill it from the server's
// JobAssignment; tests of a handler fill it by hand.
type Params struct {
	// Info is the job as the server sent it. Required.
	Info *livekit.Job
	// Identity is the participant identity the job was accepted with.
	Identity string
	// URL is the LiveKit URL [Job.Connect] joins (ws:// or wss://).
	URL string
	// Token is the room join token from the assignment. It is a secret:
	// it is never logged.
	Token string
	// APIURL is the base URL of the server API (http:// or https://; a
	// ws:// or wss:// URL is converted) that [Job.API] and
	// [Job.DeleteRoom] call. Empty: URL.
	APIURL string
	// APIKey and APISecret are the credentials [Job.API] signs its
	// requests with: the worker's own. Without them Job.API returns
	// ErrNoCredentials. The secret is never logged nor put in an error.
	APIKey, APISecret string
	// Logger receives the job's log lines; nil discards them. The job adds
	// job_id, room, agent_name and deployment attributes.
	Logger *slog.Logger
	// Timing carries the instants the runtime already recorded (offer
	// received, accepted, assignment received, launched).
	Timing Timing
	// Origin, if set, names what the job was created from, for errors
	// about settings it lacks ("jobtest.Options": Connect then says to set
	// jobtest.Options.URL and Token).
	Origin string
	// OnConnected, if set, is called once [Job.Connect] joined the room,
	// with the timing so far (runtimes report it to the server).
	OnConnected func(Timing)
}

// String describes p without its secrets (the token and the API
// secret), so that printing Params never leaks them.
func (p Params) String() string {
	return fmt.Sprintf("jobrt.Params{job %s, room %q, identity %q, URL %q, API URL %q, API key %q, token %s, API secret %s}",
		p.Info.GetId(), p.Info.GetRoom().GetName(), p.Identity, p.URL, p.APIURL, p.APIKey,
		redacted(p.Token), redacted(p.APISecret))
}

// GoString is String, for the %#v verb.
func (p Params) GoString() string { return p.String() }

// LogValue logs p as String does.
func (p Params) LogValue() slog.Value { return slog.StringValue(p.String()) }

func redacted(secret string) string {
	if secret == "" {
		return "(none)"
	}
	return "(set)"
}

// Timing records the instants of a job's start, the ones the server's
// JobJoinTiming reports. Zero values were not recorded.
type Timing struct {
	OfferReceived      time.Time
	Accepted           time.Time
	AssignmentReceived time.Time
	Launched           time.Time
	EntrypointStarted  time.Time
	ConnectCalled      time.Time
	Connected          time.Time
}

// Proto converts t to the protocol's JobJoinTiming: microseconds since base
// on the monotonic clock (base and the instants must come from time.Now in
// one process). Unrecorded instants stay zero.
func (t Timing) Proto(base time.Time) *livekit.JobJoinTiming {
	us := func(v time.Time) int64 {
		if v.IsZero() {
			return 0
		}
		return v.Sub(base).Microseconds()
	}
	return &livekit.JobJoinTiming{
		OfferReceivedUs:      us(t.OfferReceived),
		AcceptedUs:           us(t.Accepted),
		AssignmentReceivedUs: us(t.AssignmentReceived),
		LaunchedUs:           us(t.Launched),
		LaunchWarm:           true,
		EntrypointStartedUs:  us(t.EntrypointStarted),
		ConnectCalledUs:      us(t.ConnectCalled),
		ConnectedUs:          us(t.Connected),
	}
}

// Job is one running agent job. Its methods are safe for concurrent use.
type Job struct {
	info     *livekit.Job
	identity string
	url      string
	apiURL   string
	apiKey   string
	secrets  *secrets // behind a pointer: printing a Job shows an address
	log      *slog.Logger
	ctx      context.Context // the handler's context
	cancel   context.CancelCauseFunc
	onConn   func(Timing)
	origin   string

	connMu sync.Mutex // serializes Connect

	mu         sync.Mutex // guards what follows; never held while calling out
	room       *lksdk.Room
	hooks      []func(ctx context.Context, reason error)
	timing     Timing
	ended      bool
	pending    []func(*lksdk.Room) // participant entrypoints waiting for Connect
	goroutines goroutines          // started with Go

	watchers watchers // wakes the participant helpers on room events

	chat    *Chat                      // guarded by mu; see Job.Chat
	chatOn  atomic.Pointer[Chat]       // chat, for the SDK's callbacks
	joining atomic.Pointer[lksdk.Room] // the room Connect created; set under mu

	apiOnce sync.Once
	api     *API
	apiErr  error
}

// secrets are a job's credentials.
type secrets struct {
	token     string
	apiSecret string
}

// New creates a job and the context its handler runs with, derived from
// parent. The returned [Control] is the runtime's side of the job.
func New(parent context.Context, p Params) (*Job, *Control) {
	if p.Info == nil {
		p.Info = &livekit.Job{}
	}
	log := p.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(
		slog.String("job_id", p.Info.GetId()),
		slog.String("room", p.Info.GetRoom().GetName()),
		slog.String("agent_name", p.Info.GetAgentName()),
		slog.String("deployment", p.Info.GetDeployment()),
	)
	ctx, cancel := context.WithCancelCause(parent)
	apiURL := p.APIURL
	if apiURL == "" {
		apiURL = p.URL
	}
	j := &Job{
		info:     p.Info,
		identity: p.Identity,
		url:      p.URL,
		apiURL:   apiURL,
		apiKey:   p.APIKey,
		secrets:  &secrets{token: p.Token, apiSecret: p.APISecret},
		log:      log,
		ctx:      ctx,
		cancel:   cancel,
		onConn:   p.OnConnected,
		origin:   p.Origin,
		timing:   p.Timing,
	}
	return j, &Control{job: j, ctx: ctx}
}

// ID is the server's job id (AJ_…).
func (j *Job) ID() string { return j.info.GetId() }

// AgentName is the agent name the job was dispatched to.
func (j *Job) AgentName() string { return j.info.GetAgentName() }

// Deployment is the deployment the job was dispatched to; "" is production.
func (j *Job) Deployment() string { return j.info.GetDeployment() }

// RoomName is the name of the job's room.
func (j *Job) RoomName() string { return j.info.GetRoom().GetName() }

// Metadata is the dispatch's metadata.
func (j *Job) Metadata() string { return j.info.GetMetadata() }

// Identity is the participant identity the job was accepted with.
func (j *Job) Identity() string { return j.identity }

// Info is the job as the server sent it. Treat it as read-only.
func (j *Job) Info() *livekit.Job { return j.info }

// Logger returns a logger whose lines carry the job's id, room, agent name
// and deployment.
func (j *Job) Logger() *slog.Logger { return j.log }

// Connect joins the job's room as the accepted identity with the
// assignment's token, and returns the room. Calling it again returns the
// room already joined. The room is left when the job ends; if the agent is
// disconnected from the room first (the room was deleted or closed, or the
// agent removed), the job's context is cancelled with ErrRoomDisconnected.
//
// cb's callbacks all run, as the SDK calls them; the job adds its own
// handling of participant events (for [Job.WaitForParticipant] and
// [Job.OnParticipant]) next to them. A panic in one of cb's callbacks is
// recovered and fails the job, as one in a goroutine started with
// [Job.Go] does.
func (j *Job) Connect(ctx context.Context, cb *lksdk.RoomCallback, opts ...lksdk.ConnectOption) (*lksdk.Room, error) {
	// connMu makes concurrent calls join once; j.mu is never held while
	// joining (which waits for the ICE handshake), nor while calling back.
	j.connMu.Lock()
	defer j.connMu.Unlock()
	j.mu.Lock()
	if j.room != nil {
		room := j.room
		j.mu.Unlock()
		return room, nil
	}
	if j.ended {
		j.mu.Unlock()
		return nil, errors.New("job: Connect after the job ended")
	}
	if j.url == "" || j.secrets.token == "" {
		j.mu.Unlock()
		if j.origin != "" {
			return nil, fmt.Errorf("job: Connect needs a URL and a token: set %s.URL and %s.Token (a LiveKit URL, and a join token for the job's identity and room)", j.origin, j.origin)
		}
		return nil, errors.New("job: Connect needs a URL and a token; this job was created without them")
	}
	j.timing.ConnectCalled = time.Now()
	j.mu.Unlock()

	room := lksdk.NewRoom(j.wrapCallback(cb))
	j.mu.Lock()
	j.joining.Store(room)
	if j.chat != nil {
		j.registerChat(room) // before joining: no message is missed
	}
	j.mu.Unlock()
	// The SDK (and pion, for the room's peer connection) logs through the
	// job's logger, at levels that suit a worker, unless opts say otherwise.
	opts = append([]lksdk.ConnectOption{lksdk.WithLogger(sdklog.New(j.log))}, opts...)
	if err := room.JoinWithContextAndToken(ctx, j.url, j.secrets.token, opts...); err != nil {
		return nil, fmt.Errorf("job %s: join room %q: %w", j.ID(), j.RoomName(), err)
	}
	j.mu.Lock()
	if j.ended {
		j.mu.Unlock()
		room.Disconnect()
		return nil, errors.New("job: the job ended while joining its room")
	}
	j.timing.Connected = time.Now()
	j.room = room
	t := j.timing
	pending := j.pending
	j.pending = nil
	j.mu.Unlock()
	for _, start := range pending {
		start(room)
	}
	j.log.Debug("joined room", slog.String("identity", j.identity),
		slog.Duration("took", t.Connected.Sub(t.ConnectCalled)))
	if j.onConn != nil {
		j.onConn(t)
	}
	return room, nil
}

// Room returns the room joined by [Job.Connect], or nil before it.
func (j *Job) Room() *lksdk.Room {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.room
}

// Shutdown ends the job from inside: it cancels the job's context with a
// *ShutdownError carrying reason. The handler should then return.
func (j *Job) Shutdown(reason string) {
	j.cancel(&ShutdownError{Reason: reason})
}

// OnShutdown registers fn to run once when the job ends, after the handler
// returned and the goroutines started with [Job.Go] ended, and before the
// room is left and the end is reported. Hooks run in the order they were
// added, with a context bounded by the runtime's shutdown timeout (what is
// left of it); reason is why the job ended: the cause its context was
// cancelled with, else the handler's error, else the failure of a
// goroutine started with Go (nil when the job ended well on its own).
func (j *Job) OnShutdown(fn func(ctx context.Context, reason error)) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.hooks = append(j.hooks, fn)
}

// Control is the runtime's side of a [Job]: it owns the job's context and
// ends the job. Handler code never needs it; tests of a handler use it to
// play the runtime.
type Control struct {
	job *Job
	ctx context.Context
}

// Job returns the controlled job.
func (c *Control) Job() *Job { return c.job }

// Context is the context the handler runs with.
func (c *Control) Context() context.Context { return c.ctx }

// Cancel cancels the job's context with cause (for example ErrTerminated).
// The first cause wins.
func (c *Control) Cancel(cause error) { c.job.cancel(cause) }

// Run calls h with the job's context, turning a panic into an error that
// carries the stack. It records when the entrypoint started.
func (c *Control) Run(h func(ctx context.Context) error) (err error) {
	c.job.mu.Lock()
	c.job.timing.EntrypointStarted = time.Now()
	c.job.mu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return h(c.ctx)
}

// Finish ends the job after its handler returned with err: it cancels the
// job's context, waits for the goroutines started with [Job.Go], runs the
// shutdown hooks (panics recovered and logged) and leaves the room, all
// bounded by ctx (the runtime's shutdown timeout). It returns the job's
// outcome: nil for success, or the error to report; a goroutine started
// with Go that failed makes the job fail even if the handler returned nil.
// Finish is idempotent.
func (c *Control) Finish(ctx context.Context, err error) error {
	return c.FinishReporting(ctx, err, nil)
}

// FinishReporting is Finish, calling report with the job's outcome after
// its goroutines and shutdown hooks are done and before it leaves the
// room. The LiveKit server records a job's end itself, as "agent worker
// left the room", when the agent of a job whose launch it completed
// leaves its room: the job's end must reach the server first.
func (c *Control) FinishReporting(ctx context.Context, err error, report func(outcome error)) error {
	j := c.job
	j.mu.Lock()
	if j.ended {
		j.mu.Unlock()
		return j.withFailure(Outcome(c.ctx, err))
	}
	j.ended = true
	j.pending = nil
	j.mu.Unlock()

	// What the handler's return means is decided before the job's own
	// cancellation below, which is not a cause.
	outcome := Outcome(c.ctx, err)
	reason := err
	if cause := context.Cause(c.ctx); cause != nil {
		reason = cause
	}
	j.cancel(errJobEnded)
	j.waitGoroutines(ctx)

	j.mu.Lock()
	hooks := j.hooks
	room := j.room
	j.mu.Unlock()
	if reason == nil {
		reason = j.failure()
	}
	for _, fn := range hooks {
		func() {
			defer func() {
				if r := recover(); r != nil {
					j.log.Error("shutdown hook panicked", slog.Any("panic", r), slog.String("stack", string(debug.Stack())))
				}
			}()
			fn(ctx, reason)
		}()
	}
	outcome = j.withFailure(outcome)
	if report != nil {
		report(outcome)
	}
	if room != nil {
		room.Disconnect()
	}
	return outcome
}

// Timing returns the instants recorded so far.
func (c *Control) Timing() Timing {
	c.job.mu.Lock()
	defer c.job.mu.Unlock()
	return c.job.timing
}

var errJobEnded = errors.New("job ended")

// Outcome maps a handler's return value to the job's result: nil for
// success, the error otherwise. An error that only reports the context being
// cancelled because the server terminated the job, the room went away or
// the handler shut it down is a success; one caused by a drain timeout or a stopping worker is a
// failure that names that cause.
func Outcome(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	cause := context.Cause(ctx)
	cancelled := errors.Is(err, context.Canceled) || (cause != nil && errors.Is(err, cause))
	if !cancelled {
		return err
	}
	switch {
	case errors.Is(cause, ErrTerminated), errors.Is(cause, ErrShutdown), errors.Is(cause, ErrRoomDisconnected):
		return nil
	case cause != nil && !errors.Is(cause, context.Canceled):
		return cause
	}
	return err
}

// PanicError is the error a job ends with when its handler, a goroutine
// started with [Job.Go] (a participant entrypoint among them) or one of
// its room callbacks panicked.
type PanicError struct {
	// Value is what was passed to panic.
	Value any
	// Stack is the stack of the goroutine that panicked, as
	// runtime/debug.Stack formats it.
	Stack []byte
	// Where says what panicked: "" for the handler, else for example
	// "job goroutine" or "room callback OnDataPacket".
	Where string
}

func (e *PanicError) Error() string {
	if e.Where == "" {
		return fmt.Sprintf("job handler panicked: %v", e.Value)
	}
	return fmt.Sprintf("%s panicked: %v", e.Where, e.Value)
}
