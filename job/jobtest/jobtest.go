// Package jobtest runs a job handler, or an OnRequest function, without a
// LiveKit server: a test creates a [Job] with the metadata it wants, runs
// the handler on it as the worker would (panics recovered, shutdown hooks
// run, the outcome decided), and plays the server's and the worker's part:
// terminating the job, draining, or letting it run.
//
//	tj := jobtest.New(jobtest.Options{Metadata: `{"lang":"fr"}`})
//	res := tj.Run(myHandler)
//	if res.Outcome != nil { // what the worker would report as JS_FAILED
//		t.Fatal(res.Outcome)
//	}
//
// Connect fails on a test job unless Options.URL and Options.Token are set,
// and so do the helpers that need the room (WaitForParticipant returns
// job.ErrNotConnected); API and DeleteRoom need Options.APIKey and
// APISecret. Goroutines started with Job.Go run as under the worker: a
// panic in one fails the job, and Run returns once they ended (or the
// shutdown timeout passed). Keep the logic a unit test covers apart from
// the room's media, and test the whole agent against a real server with
// package livekittest.
package jobtest

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/jobrt"
	"github.com/lkagent/lkagent/job"
)

// Options describe the job of a test. Every field is optional.
type Options struct {
	// ID, AgentName, Deployment, Room and Metadata describe the job as a
	// dispatch would. Defaults: "AJ_test", "", "" (production),
	// "room-test", "".
	ID, AgentName, Deployment, Room, Metadata string
	// Identity is the agent's participant identity; default
	// "agent-<ID>".
	Identity string
	// Info, if set, is the job as the server would send it, and the fields
	// above are ignored.
	Info *livekit.Job
	// Logger receives the job's log lines; nil discards them.
	Logger *slog.Logger
	// URL and Token let Connect join a real room (a LiveKit URL and a join
	// token for Identity in Room); without them Connect fails.
	URL, Token string
	// APIURL, APIKey and APISecret are the server API credentials of
	// Job.API and Job.DeleteRoom (APIURL defaults to URL); without them
	// those return an error wrapping job.ErrNoCredentials.
	APIURL, APIKey, APISecret string
	// ShutdownTimeout bounds the shutdown hooks, as the worker's option
	// does; default 10s.
	ShutdownTimeout time.Duration
}

func (o Options) info() *livekit.Job {
	if o.Info != nil {
		return o.Info
	}
	id, room := o.ID, o.Room
	if id == "" {
		id = "AJ_test"
	}
	if room == "" {
		room = "room-test"
	}
	return &livekit.Job{Id: id, Type: livekit.JobType_JT_ROOM, Room: &livekit.Room{Name: room},
		AgentName: o.AgentName, Deployment: o.Deployment, Metadata: o.Metadata}
}

// Job is a job a test runs a handler on.
type Job struct {
	j       *jobrt.Job
	ctl     *jobrt.Control
	timeout time.Duration
}

// New creates a test job. Its context lives until the handler returns or
// the test cancels it.
func New(o Options) *Job {
	info := o.info()
	id := o.Identity
	if id == "" {
		id = jobrt.DefaultIdentity(info.GetId())
	}
	j, ctl := jobrt.New(context.Background(), jobrt.Params{Info: info, Identity: id, URL: o.URL, Token: o.Token,
		APIURL: o.APIURL, APIKey: o.APIKey, APISecret: o.APISecret, Logger: o.Logger, Origin: "jobtest.Options"})
	timeout := o.ShutdownTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &Job{j: j, ctl: ctl, timeout: timeout}
}

// Job is the job the handler sees.
func (t *Job) Job() *job.Job { return (*job.Job)(t.j) }

// Context is the handler's context.
func (t *Job) Context() context.Context { return t.ctl.Context() }

// Cancel cancels the handler's context with cause, as the worker does:
// job.ErrTerminated when the server terminates the job, job.ErrDrainTimeout
// when a drain runs out of time. The first cause wins.
func (t *Job) Cancel(cause error) { t.ctl.Cancel(cause) }

// Result is how a handler's run ended.
type Result struct {
	// Err is what the handler returned; after a panic of the handler, an
	// error that carries the panic's value and stack (Panicked is then
	// true; a panic in a goroutine started with Job.Go shows in Outcome
	// and Cause instead).
	Err      error
	Panicked bool
	// Outcome is what the worker reports to the server: nil for
	// JS_SUCCESS, else JS_FAILED with Outcome's text. An error caused by
	// a termination, the room going away or Job.Shutdown is a success.
	Outcome error
	// Cause is why the job's context ended: the cause it was cancelled
	// with (a goroutine's failure among them), or nil when the handler
	// returned on its own.
	Cause error
}

// Run runs h on the job as the worker would and returns how it ended: it
// recovers a panic, waits for the goroutines started with Job.Go, runs the
// shutdown hooks, and decides the outcome.
func (t *Job) Run(h job.Handler) Result {
	err := t.ctl.Run(func(ctx context.Context) error { return h(ctx, t.Job()) })
	cause := context.Cause(t.ctl.Context())
	ctx, cancel := context.WithTimeout(context.Background(), t.timeout)
	defer cancel()
	outcome := t.ctl.Finish(ctx, err)
	var pe *jobrt.PanicError
	return Result{Err: err, Panicked: errors.As(err, &pe) && pe.Where == "", Outcome: outcome, Cause: cause}
}

// Start runs h on the job on a goroutine of its own, as Run does; the
// result arrives on the channel when the handler returned.
func (t *Job) Start(h job.Handler) <-chan Result {
	res := make(chan Result, 1)
	go func() { res <- t.Run(h) }()
	return res
}

// Request is an offer for a test of an OnRequest function.
type Request struct{ r *jobrt.Request }

// NewRequest returns an offer of the job o describes.
func NewRequest(o Options) *Request { return &Request{r: jobrt.NewRequest(o.info(), false)} }

// Request is the request OnRequest sees.
func (r *Request) Request() *job.Request { return (*job.Request)(r.r) }

// Decision reports whether the request was decided, whether it was
// accepted, and with which options.
func (r *Request) Decision() (decided, accepted bool, o job.AcceptOptions) {
	d, a, opts := r.r.Decision()
	return d, a, job.AcceptOptions(opts)
}
