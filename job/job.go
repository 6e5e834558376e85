package job

import (
	"context"
	"log/slog"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/jobrt"
)

// Handler runs one job. The job lasts as long as the handler: when it
// returns, the worker leaves the room, runs the shutdown hooks and reports
// the job's end to the server. A handler that greets the caller and
// returns at once hangs up on them; a handler that serves a call returns
// when ctx is done or the call is over.
//
// A nil error reports the job as successful, an error as failed (with the
// error's text shown by the server), except that an error caused by the
// server terminating the job, by the room going away or by [Job.Shutdown]
// still counts as success.
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
)

// ShutdownError is the cause of a job context cancelled by [Job.Shutdown].
type ShutdownError = jobrt.ShutdownError

// Job is one running agent job: what the server dispatched, the room to
// join, and the job's lifetime. Its methods are safe for concurrent use.
// A runtime (package worker) creates it; tests create one with package
// jobtest.
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

// Logger returns a logger whose lines carry the job's id, room, agent name
// and deployment.
func (j *Job) Logger() *slog.Logger { return j.rt().Logger() }

// Connect joins the job's room as the accepted identity with the
// assignment's token, and returns the room. Calling it again returns the
// room already joined. The room is left when the job ends; if the agent is
// disconnected from the room first (the room was deleted or closed, or the
// agent removed), the job's context is cancelled with ErrRoomDisconnected.
// cb's own callbacks still run.
func (j *Job) Connect(ctx context.Context, cb *lksdk.RoomCallback, opts ...lksdk.ConnectOption) (*lksdk.Room, error) {
	return j.rt().Connect(ctx, cb, opts...)
}

// Room returns the room joined by [Job.Connect], or nil before it.
func (j *Job) Room() *lksdk.Room { return j.rt().Room() }

// Shutdown ends the job from inside: it cancels the job's context with a
// *ShutdownError carrying reason. The handler should then return.
func (j *Job) Shutdown(reason string) { j.rt().Shutdown(reason) }

// OnShutdown registers fn to run once when the job ends, after the handler
// returned and before the room is left and the end is reported. Hooks run in
// the order they were added, with a context bounded by the runtime's
// shutdown timeout; reason is why the job ended: the cause its context was
// cancelled with, else the handler's error (nil when the handler returned
// nil on its own).
func (j *Job) OnShutdown(fn func(ctx context.Context, reason error)) { j.rt().OnShutdown(fn) }
