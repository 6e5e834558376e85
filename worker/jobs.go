package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/livekit/protocol/livekit"
	"go.opentelemetry.io/otel/trace"

	"github.com/lkagent/lkagent/internal/jobproc"
	"github.com/lkagent/lkagent/internal/jobrt"
	"github.com/lkagent/lkagent/internal/lkurl"
	"github.com/lkagent/lkagent/job"
)

// quickReturn: a handler that returns this soon after joining its room,
// on its own and without an error, has most likely hung up on its caller
// by mistake.
const quickReturn = 2 * time.Second

// errJobEnded cancels the context of a job that ended.
var errJobEnded = errors.New("job ended")

// activeJob is an assigned job: queued for a slot, or running.
type activeJob struct {
	info     *livekit.Job
	identity string
	ctx      context.Context         // the parent of the job's context
	cancel   context.CancelCauseFunc // cancels the job's context with a cause
	params   jobrt.Params            // what the handler's job is built from
	line     statusLine

	// Guarded by w.mu.
	state      jobState // changed by the methods of jobTable only
	queuedAt   time.Time
	queueTimer *time.Timer
	started    time.Time     // when the handler was launched; zero while queued
	proc       *jobproc.Proc // the job's process (Processes executor)
	span       trace.Span    // the job's span (trace.go); set and used on the job's goroutine
	stuck      *time.Timer   // set when the server terminated the job
	ignoring   bool          // still running ShutdownTimeout after its termination
}

// handleAssignment starts an assigned job. It runs on the read loop: it
// only does the bookkeeping, under the lock; the job itself (and every
// log line, which runs the user's slog handler) starts on a goroutine of
// its own.
func (w *Worker) handleAssignment(s *session, jobCtx context.Context, a *livekit.JobAssignment, received time.Time) {
	info := a.GetJob()
	id := info.GetId()
	w.mu.Lock()
	res, ok := w.table.claim(id)
	switch {
	case w.table.known(id): // assigned or ended already
		w.mu.Unlock()
		w.obs.duplicateAssignment()
		w.later(func() {
			w.log.Warn("assignment for a job this worker already ran; ignored", jobAttrs(info, s.workerID())...)
		})
		return
	case !ok || res.sess != s || w.screen(info) != "":
		w.mu.Unlock()
		w.obs.duplicateAssignment()
		w.report(&statusLine{sess: s, notBefore: received.Add(w.statusDelay)}, &livekit.UpdateJobStatus{
			JobId: id, Status: livekit.JobStatus_JS_FAILED, Error: "assignment for a job this worker did not accept"})
		w.later(func() {
			w.log.Warn("assignment for a job this worker did not accept; reported failed", jobAttrs(info, s.workerID(),
				slog.String("offered_agent_name", info.GetAgentName()), slog.String("offered_deployment", info.GetDeployment()))...)
		})
		return
	}
	ctx, cancel := context.WithCancelCause(jobCtx)
	timing := res.timing
	timing.AssignmentReceived = received
	url := a.GetUrl()
	if url == "" {
		url = lkurl.WS(w.o.URL)
	}
	aj := &activeJob{
		state:    stateReserved, // its reservation's
		info:     info,
		identity: res.identity,
		ctx:      ctx,
		cancel:   cancel,
		params: jobrt.Params{Info: info, Identity: res.identity, URL: url, Token: a.GetToken(), Timing: timing,
			APIURL: w.o.URL, APIKey: w.o.APIKey, APISecret: w.o.APISecret},
		line: statusLine{sess: s, notBefore: received.Add(w.statusDelay)},
	}
	start := w.table.admit(aj, w.o.MaxJobs)
	if start {
		w.launchLocked(aj)
	} else {
		w.enqueueLocked(aj)
	}
	w.mu.Unlock()
	if start {
		w.start(aj)
	} else {
		// The server shows the job pending until it starts.
		w.report(&aj.line, &livekit.UpdateJobStatus{JobId: id, Status: livekit.JobStatus_JS_PENDING})
		w.obs.setQueued(w.queued())
	}
	w.kickStatus()
	w.kickLoad()
}

// launchLocked takes a slot for aj; start then runs its handler. w.mu is
// held.
func (w *Worker) launchLocked(aj *activeJob) {
	now := time.Now()
	aj.started = now
	aj.params.Timing.Launched = now
	w.jobWG.Add(1)
}

// start runs the handler of a launched job.
func (w *Worker) start(aj *activeJob) {
	w.obs.jobStarted(aj.started.Sub(aj.params.Timing.AssignmentReceived), !aj.queuedAt.IsZero())
	w.events.emit(Event{Kind: EventStarted, Time: aj.started, JobID: aj.info.GetId(), Room: aj.info.GetRoom().GetName()})
	go w.exec.run(aj)
}

// enqueueLocked puts aj in the queue, until a slot frees or QueueTimeout
// passes. w.mu is held.
func (w *Worker) enqueueLocked(aj *activeJob) {
	aj.queuedAt = time.Now()
	// Under w.mu: a slot freeing at once must not start the job (and say
	// so) before it was said to be queued.
	w.events.emit(Event{Kind: EventQueued, Time: aj.queuedAt, JobID: aj.info.GetId(), Room: aj.info.GetRoom().GetName()})
	aj.queueTimer = time.AfterFunc(w.o.QueueTimeout, func() { w.queueTimeout(aj) })
}

// dequeueLocked launches queued jobs, oldest first, while slots are free,
// and returns them (start each once w.mu is released). w.mu is held.
func (w *Worker) dequeueLocked() []*activeJob {
	started := w.table.launchQueued(w.o.MaxJobs)
	for _, aj := range started {
		aj.queueTimer.Stop()
		w.launchLocked(aj)
	}
	return started
}

// startQueued starts jobs dequeued by dequeueLocked.
func (w *Worker) startQueued(started []*activeJob) {
	if len(started) == 0 {
		return
	}
	w.obs.setQueued(w.queued())
	for _, aj := range started {
		w.obs.queueWait(aj.started.Sub(aj.queuedAt))
		w.start(aj)
	}
}

// unqueueLocked takes a queued job out of the queue and forgets it; false
// if it was no longer queued. w.mu is held.
func (w *Worker) unqueueLocked(aj *activeJob) bool {
	if !w.table.unqueue(aj) {
		return false
	}
	aj.queueTimer.Stop()
	return true
}

// queueTimeout fails a job that waited QueueTimeout for a slot.
func (w *Worker) queueTimeout(aj *activeJob) {
	w.mu.Lock()
	ok := w.unqueueLocked(aj)
	w.mu.Unlock()
	if !ok {
		return
	}
	w.failQueued(aj, fmt.Errorf("job not started: it waited %s in the queue for a free slot (QueueTimeout; MaxJobs %d)",
		w.o.QueueTimeout, w.o.MaxJobs), StatusQueueTimeout)
}

// failQueued reports a queued job that will never start as failed.
func (w *Worker) failQueued(aj *activeJob, reason error, status EndStatus) {
	waited := time.Since(aj.queuedAt)
	w.report(&aj.line, &livekit.UpdateJobStatus{JobId: aj.info.GetId(), Status: livekit.JobStatus_JS_FAILED, Error: reason.Error()})
	w.obs.queueLeft(string(status), waited)
	w.obs.setQueued(w.queued())
	w.events.emit(Event{Kind: EventEnded, JobID: aj.info.GetId(), Room: aj.info.GetRoom().GetName(),
		Status: status, Err: reason, Cause: context.Cause(aj.ctx), Took: waited})
	w.traceUnlaunched(aj, string(status), reason.Error())
	aj.cancel(errJobEnded)
	w.later(func() {
		w.log.Warn("queued job failed", jobAttrs(aj.info, aj.line.sess.workerID(),
			slog.Any("error", reason), slog.Duration("waited", waited))...)
	})
	w.kickStatus()
	w.kickLoad()
}

// queued is the number of jobs waiting for a slot.
func (w *Worker) queued() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.table.queued()
}

// later runs fn on a goroutine the worker waits for before Run returns:
// for work the read loop must not do itself, such as logging.
func (w *Worker) later(fn func()) {
	w.bg.Add(1)
	go func() {
		defer w.bg.Done()
		fn()
	}()
}

// jobAttrs are the log attributes of a job on this worker, then more.
func jobAttrs(j *livekit.Job, workerID string, more ...any) []any {
	return append([]any{slog.String("job_id", j.GetId()), slog.String("room", j.GetRoom().GetName()),
		slog.String("worker_id", workerID)}, more...)
}

func (w *Worker) runJob(a *activeJob) {
	defer w.jobWG.Done()
	w.report(&a.line, &livekit.UpdateJobStatus{JobId: a.info.GetId(), Status: livekit.JobStatus_JS_RUNNING})
	ctl := w.newJob(a)
	// The handler runs above this frame for the job's whole life: keep it
	// small, so that an idle job's stack stays at its initial 2 KiB. No
	// logging here (a slog call's frame alone doubles the stack, even at
	// a level that is off), and the start and the end of the job, whose
	// frames are large, are functions of their own.
	w.endJob(a, ctl, ctl.Run(func(ctx context.Context) error { return w.handler(ctx, (*job.Job)(ctl.Job())) }))
}

// newJob builds the job a handler sees.
//
//go:noinline
func (w *Worker) newJob(a *activeJob) *jobrt.Control {
	p := a.params
	p.Logger = w.o.Logger.With(slog.String("worker_id", a.line.sess.workerID()))
	p.OnConnected = func(t jobrt.Timing) {
		a.traceJoined(t.Connected)
		w.report(&a.line, &livekit.UpdateJobStatus{JobId: a.info.GetId(), Status: livekit.JobStatus_JS_RUNNING, JoinTiming: t.Proto(w.base)})
	}
	j, ctl := jobrt.New(w.withPrewarmed(w.startSpan(a)), p)
	j.Logger().Info("job started", slog.String("identity", p.Identity))
	return ctl
}

// endJob reports the end of a job whose handler returned err and forgets
// the job.
func (w *Worker) endJob(a *activeJob, ctl *jobrt.Control, err error) {
	w.jobEnding(a)
	onItsOwn := ctl.Context().Err() == nil // nothing ended the job but its handler
	cause := context.Cause(ctl.Context())
	j := ctl.Job()
	log := j.Logger()
	status := StatusSuccess
	var pe *jobrt.PanicError
	if errors.As(err, &pe) {
		status = StatusPanicked
		log.Error("job handler panicked", slog.Any("panic", pe.Value), slog.String("stack", string(pe.Stack)))
	}
	terminated := false
	upd := &livekit.UpdateJobStatus{JobId: j.ID(), Status: livekit.JobStatus_JS_SUCCESS}
	hctx, cancel := context.WithTimeout(context.Background(), w.o.ShutdownTimeout)
	outcome := ctl.FinishReporting(hctx, err, func(outcome error) {
		upd.JoinTiming = ctl.Timing().Proto(w.base)
		if outcome != nil {
			upd.Status, upd.Error = livekit.JobStatus_JS_FAILED, outcome.Error()
		}
		// A job the server terminated is already over for the server: it
		// recorded the end when it sent the termination and would drop a
		// status as one of an unknown job. Any other end is reported
		// before the agent leaves its room, which would make the server
		// record the end itself (jobrt.Control.FinishReporting).
		terminated = errors.Is(context.Cause(ctl.Context()), job.ErrTerminated)
		if !terminated {
			w.report(&a.line, upd)
			w.awaitSent(&a.line, upd, reportBeforeLeave)
		}
	})
	cancel()
	switch {
	case outcome != nil:
		if status != StatusPanicked {
			status = StatusFailed
		}
		log.Warn("job failed", slog.Any("error", outcome), slog.Duration("took", time.Since(a.started)))
	case terminated:
		status = StatusTerminated
		log.Info("job terminated by server", slog.Duration("took", time.Since(a.started)))
	default:
		log.Info("job finished", slog.Duration("took", time.Since(a.started)))
		warnQuickReturn(log, ctl, onItsOwn, err)
	}
	a.endSpan(string(status), upd.GetError())
	w.jobEnded(a, jobEnd{status: status, took: time.Since(a.started), err: outcome, cause: cause})
	w.restart(a, status, ctl.Timing().Connected)
}

// warnQuickReturn warns about a handler that returned on its own soon
// after joining its room: it most likely hung up on its caller by mistake.
func warnQuickReturn(log *slog.Logger, ctl *jobrt.Control, onItsOwn bool, err error) {
	if t := ctl.Timing(); onItsOwn && err == nil && !t.Connected.IsZero() {
		if in := time.Since(t.Connected); in < quickReturn {
			log.Warn("the handler returned soon after joining its room: returning ends the job and leaves the room, "+
				"so the caller may not get what it just sent; serve until ctx is done or the call is over",
				slog.Duration("after_joining", in.Round(time.Millisecond)))
		}
	}
}

// jobEnding marks a job whose handler returned (or whose process ended)
// ending: its end is being reported.
func (w *Worker) jobEnding(a *activeJob) {
	w.mu.Lock()
	w.table.ending(a)
	w.mu.Unlock()
}

// jobEnd is how a job ended.
type jobEnd struct {
	status EndStatus
	took   time.Duration
	err    error // reported failed; nil otherwise
	cause  error // what cancelled the job; nil when it ended on its own
}

// jobEnded forgets a job that ended (its end reported, or not to be), and
// starts queued jobs in its slot.
func (w *Worker) jobEnded(a *activeJob, end jobEnd) {
	w.obs.jobFinished(string(end.status), end.took)
	a.cancel(errJobEnded) // detaches the job's context from the worker's
	w.mu.Lock()
	if a.stuck != nil {
		a.stuck.Stop()
	}
	w.table.end(a)
	next := w.dequeueLocked()
	// Once its slot is free (a subscriber that assigns a job on this event
	// finds the slot free), and under w.mu, so before a Stop waiting for
	// the jobs to end sees it.
	w.events.emit(Event{Kind: EventEnded, JobID: a.info.GetId(), Room: a.info.GetRoom().GetName(),
		Status: end.status, Err: end.err, Cause: end.cause, Took: end.took})
	w.mu.Unlock()
	w.startQueued(next)
	w.kickStatus()
	w.kickLoad()
	w.kickHeld(false) // held dispatches (held.go): a slot freed
}

func (w *Worker) handleTermination(id string) {
	w.mu.Lock()
	a, ok := w.table.jobs[id]
	unqueued := ok && w.unqueueLocked(a)
	w.mu.Unlock()
	switch {
	case !ok:
		w.release(id)
	case unqueued:
		// Never started: the server already recorded the end.
		waited := time.Since(a.queuedAt)
		w.obs.queueLeft(string(StatusTerminated), waited)
		w.obs.setQueued(w.queued())
		w.events.emit(Event{Kind: EventEnded, JobID: id, Room: a.info.GetRoom().GetName(),
			Status: StatusTerminated, Cause: job.ErrTerminated, Took: waited})
		a.cancel(job.ErrTerminated)
		w.kickStatus()
	default:
		a.cancel(job.ErrTerminated)
		w.watchTermination(a)
	}
}

// watchTermination warns, counts and marks a job that is still running
// ShutdownTimeout after the server terminated it: its handler ignores its
// context and holds a slot for a call that is over. (A job process is
// killed then; a goroutine cannot be.)
func (w *Worker) watchTermination(a *activeJob) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if a.stuck != nil {
		return
	}
	a.stuck = time.AfterFunc(w.o.ShutdownTimeout, func() {
		w.mu.Lock()
		running := w.table.holdsSlot(a)
		if running {
			a.ignoring = true
		}
		w.mu.Unlock()
		if !running {
			return
		}
		w.obs.ignoredTermination()
		w.later(func() {
			w.log.Warn("job still running after the server terminated it: its handler ignores its context and holds a slot",
				jobAttrs(a.info, a.line.sess.workerID(), slog.Duration("after", w.o.ShutdownTimeout))...)
		})
		w.kickStatus()
	})
}
