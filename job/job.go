package job

import (
	"context"
	"log/slog"
	"strconv"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/jobrt"
)

// Handler runs one job.
//
// Returning ends the job. The job lasts as long as the handler: when it
// returns, the job's context is cancelled, the goroutines started with
// [Job.Go] are waited for, the shutdown hooks run, the worker leaves the
// room and reports the job's end to the server. A handler that greets the
// caller and returns at once hangs up on them before the greeting arrives;
// a handler that serves a call returns when the call is over (the caller
// left: see [Job.OnParticipant]) or when ctx is done.
//
// A nil error reports the job as successful, an error as failed (with the
// error's text shown by the server), except that an error caused by the
// server terminating the job, by the room going away or by [Job.Shutdown]
// still counts as success. A goroutine started with [Job.Go] that panicked
// or failed makes the job fail whatever the handler returns.
type Handler func(ctx context.Context, j *Job) error

// Causes with which a job's context is cancelled. Read them with
// context.Cause(ctx).
var (
	// ErrTerminated: the server asked the worker to stop the job (the
	// dispatch was deleted or the room closed).
	ErrTerminated = jobrt.ErrTerminated
	// ErrDrainTimeout: the worker was draining and the job did not end
	// within the drain timeout.
	ErrDrainTimeout = jobrt.ErrDrainTimeout
	// ErrWorkerStopped: the worker stopped without draining.
	ErrWorkerStopped = jobrt.ErrWorkerStopped
	// ErrRoomDisconnected: the agent was disconnected from the job's room
	// (the room was deleted or closed, or the agent was removed). The job
	// is over and counts as a success.
	ErrRoomDisconnected = jobrt.ErrRoomDisconnected
	// ErrShutdown: the handler called [Job.Shutdown]. The cause is a
	// *ShutdownError that wraps it and carries the reason.
	ErrShutdown = jobrt.ErrShutdown
	// ErrParticipantLeft: the cause of a participant entrypoint's context
	// ([Job.OnParticipant]) once its participant left the room.
	ErrParticipantLeft = jobrt.ErrParticipantLeft
)

// Errors of the job's helpers.
var (
	// ErrNotConnected: [Job.WaitForParticipant] was called before
	// [Job.Connect] joined the room.
	ErrNotConnected = jobrt.ErrNotConnected
	// ErrNoCredentials: [Job.API] or [Job.DeleteRoom] on a job that has no
	// server API credentials (a job of package jobtest, unless given
	// some).
	ErrNoCredentials = jobrt.ErrNoCredentials
)

// ShutdownError is the cause of a job context cancelled by [Job.Shutdown].
type ShutdownError = jobrt.ShutdownError

// PanicError is what a job fails with when its handler panicked (the
// handler's result), or when a goroutine started with [Job.Go], a
// participant entrypoint or a room callback panicked (then the cause of
// the job's context too). Its fields: Value, what was passed to panic;
// Stack, the stack of the goroutine that panicked; Where, "" for the
// handler, else what panicked ("job goroutine", "participant entrypoint",
// "room callback OnDataPacket", ...).
type PanicError = jobrt.PanicError

// Job is one running agent job: what the server dispatched, the room to
// join, and the job's lifetime, which is the handler's: returning from the
// [Handler] ends the job (see there). Its methods are safe for concurrent
// use. A runtime (package worker) creates it; tests create one with
// package jobtest.
type Job jobrt.Job

func (j *Job) rt() *jobrt.Job { return (*jobrt.Job)(j) }

// ID is the server's job id (AJ_…).
func (j *Job) ID() string { return j.rt().ID() }

// AgentName is the agent name the job was dispatched to.
func (j *Job) AgentName() string { return j.rt().AgentName() }

// Deployment is the deployment the job was dispatched to; "" is production.
func (j *Job) Deployment() string { return j.rt().Deployment() }

// RoomName is the name of the job's room.
func (j *Job) RoomName() string { return j.rt().RoomName() }

// Metadata is the dispatch's metadata.
func (j *Job) Metadata() string { return j.rt().Metadata() }

// Identity is the participant identity the job was accepted with.
func (j *Job) Identity() string { return j.rt().Identity() }

// Info is the job as the server sent it. Treat it as read-only.
func (j *Job) Info() *livekit.Job { return j.rt().Info() }

// AttrRestarts is the dispatch attribute in which a restarted agent's
// dispatch carries how many times it was restarted (by the worker or by
// package guard) in the current restart window. Read it with
// [Job.Restarts].
const AttrRestarts = "lkagent.restarts"

// Restarts is how many times this job's agent was restarted in its room
// (in the current restart window) because an earlier job of it failed: 0
// for a first dispatch. A handler can greet a caller differently after a
// crash ("sorry, where were we?").
func (j *Job) Restarts() int {
	n, err := strconv.Atoi(j.Info().GetAttributes()[AttrRestarts])
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// Logger returns a logger whose lines carry the job's id, room, agent name
// and deployment.
func (j *Job) Logger() *slog.Logger { return j.rt().Logger() }

// Connect joins the job's room as the accepted identity with the
// assignment's token, and returns the room. Calling it again returns the
// room already joined. The room is left when the job ends; if the agent is
// disconnected from the room first (the room was deleted or closed, or the
// agent removed), the job's context is cancelled with ErrRoomDisconnected.
//
// cb's callbacks all run (nil: none); the job handles participant events
// next to them for [Job.WaitForParticipant] and [Job.OnParticipant]. The
// SDK calls callbacks on its own goroutines, some on the one that reads
// the room's signalling: a callback must hand work off (a non-blocking send
// on a buffered channel, or [Job.Go]) rather than block. A panic in one of
// cb's callbacks fails the job, as one in [Job.Go] does.
func (j *Job) Connect(ctx context.Context, cb *lksdk.RoomCallback, opts ...lksdk.ConnectOption) (*lksdk.Room, error) {
	return j.rt().Connect(ctx, cb, opts...)
}

// Room returns the room joined by [Job.Connect], or nil before it.
func (j *Job) Room() *lksdk.Room { return j.rt().Room() }

// Shutdown ends the job from inside: it cancels the job's context with a
// *ShutdownError carrying reason. The handler should then return.
func (j *Job) Shutdown(reason string) { j.rt().Shutdown(reason) }

// OnShutdown registers fn to run once when the job ends, after the handler
// returned and the goroutines started with [Job.Go] ended, and before the
// room is left and the end is reported. Hooks run in the order they were
// added, with a context bounded by the runtime's shutdown timeout (what is
// left of it); reason is why the job ended: the cause its context was
// cancelled with, else the handler's error, else the failure of a
// goroutine started with Go (nil when the job ended well on its own).
func (j *Job) OnShutdown(fn func(ctx context.Context, reason error)) { j.rt().OnShutdown(fn) }

// Go runs fn on a goroutine owned by the job, with the job's context.
//
// A panic in fn, or a non-nil error it returns other than one caused by
// the job's context ending, fails the job: the job's context is cancelled
// with the failure as its cause (a *[PanicError] carrying the stack, or
// the error wrapped), so that the handler returns, and the worker reports
// the job failed with it, whatever the handler returns. The job's end
// waits for fn to return, for at most the worker's shutdown timeout: fn
// should return soon after ctx is done. Go after the job's end has begun
// does not run fn.
//
// In process (the worker's default), Go contains panics of the goroutines
// it starts, and the job's room callbacks are guarded too. It cannot
// contain what kills the process: fatal runtime errors (concurrent map
// writes, running out of memory), os.Exit, a panic on a goroutine not
// started with Go (nor by the helpers), a crash in cgo code. Running each
// job in a process of its own (worker.Processes) contains those.
func (j *Job) Go(fn func(ctx context.Context) error) { j.rt().Go(fn) }

// ParticipantOption narrows the participants [Job.WaitForParticipant] and
// [Job.OnParticipant] match. Without options they match every remote
// participant that is not an agent.
type ParticipantOption = jobrt.ParticipantOption

// WithIdentity matches the participant of that identity only, whatever its
// kind (unless [WithKind] narrows it too).
func WithIdentity(identity string) ParticipantOption { return jobrt.WithIdentity(identity) }

// WithKind matches participants of the given kinds only, for example
// livekit.ParticipantInfo_SIP for phone callers (agents too, if asked
// for). Several WithKind options add up.
func WithKind(kinds ...livekit.ParticipantInfo_Kind) ParticipantOption {
	return jobrt.WithKind(kinds...)
}

// WaitForParticipant returns the first remote participant of the job's
// room that opts match (by default: any participant that is not an agent),
// whether it joined before the call or joins while it waits. It needs the
// room: called before [Job.Connect], it returns an error wrapping
// ErrNotConnected at once. It returns an error when ctx ends (wrapping
// ctx's error) or when the job ends.
//
// Another agent's participant does not count by default; the agent does
// not see itself among the remote participants.
func (j *Job) WaitForParticipant(ctx context.Context, opts ...ParticipantOption) (*lksdk.RemoteParticipant, error) {
	return j.rt().WaitForParticipant(ctx, opts...)
}

// OnParticipant is a participant entrypoint: it runs fn, on a goroutine of
// its own (started with [Job.Go]), for each remote participant that opts
// match (by default: any participant that is not an agent), whether in
// the room already or joining later. fn runs once per participant session:
// one who leaves and joins again is served again. fn's context ends when
// that participant leaves the room (its cause is then ErrParticipantLeft)
// or when the job ends. A panic in fn fails the job.
//
// Called before [Job.Connect], OnParticipant takes effect once Connect has
// joined the room; called after the job ended, it does nothing.
func (j *Job) OnParticipant(fn func(ctx context.Context, p *lksdk.RemoteParticipant), opts ...ParticipantOption) {
	j.rt().OnParticipant(fn, opts...)
}

// API holds clients of the LiveKit server API, authorized with the
// worker's API key and secret.
type API struct {
	// Room is the room service: list participants, remove or mute
	// them, send data, delete rooms.
	Room *lksdk.RoomServiceClient
	// Dispatch is the agent dispatch service: dispatch agents (of any
	// deployment) to rooms, list and delete dispatches.
	Dispatch *lksdk.AgentDispatchClient
	// Egress is the egress service: record or stream the room.
	Egress *lksdk.EgressClient
}

// API returns clients of the LiveKit server API built from the worker's
// URL, API key and secret. A job without credentials (one of package
// jobtest, unless given some) gets an error wrapping ErrNoCredentials.
func (j *Job) API() (*API, error) {
	a, err := j.rt().API()
	if err != nil {
		return nil, err
	}
	api := API(*a)
	return &api, nil
}

// DeleteRoom deletes the job's room on the server, which ends the call for
// everyone: every participant is disconnected. The agent is disconnected
// too, so the job's context is then cancelled with ErrRoomDisconnected (a
// successful end) and the handler should return.
func (j *Job) DeleteRoom(ctx context.Context) error { return j.rt().DeleteRoom(ctx) }
