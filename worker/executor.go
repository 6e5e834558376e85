package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/jobproc"
	"github.com/lkagent/lkagent/internal/jobrt"
	"github.com/lkagent/lkagent/internal/sdklog"
	"github.com/lkagent/lkagent/job"
)

// Executor decides where jobs run: in the worker's own process
// ([InProcess], the default), or each in a process of its own
// ([Processes]).
type Executor interface {
	// runner is the strategy a worker runs its jobs with.
	runner(w *Worker) jobRunner
}

// jobRunner is how a worker runs its jobs: the one seam between the
// worker and its [Executor]. The worker calls it and never asks which
// kind it is; inProcessRunner and processRunner are the two kinds.
type jobRunner interface {
	// kind names the executor in traces: "in_process" or "processes".
	kind() string
	// child reports whether this process is a job process, which serves
	// the one job it is handed instead of registering.
	child() bool
	// open prepares a run (Options.Prewarm in process, the pool of job
	// processes) and returns what ends it, to call once the run's jobs
	// ended.
	open(ctx context.Context) (closeRun func(), err error)
	// run runs a launched job to its end, on a goroutine of its own, and
	// then calls w.jobWG.Done.
	run(a *activeJob)
	// unavailable says why no job could start now ("" when jobs can): the
	// worker then reports itself full and says why on /readyz.
	unavailable() string
}

type inProcess struct{}

func (inProcess) runner(w *Worker) jobRunner { return inProcessRunner{w: w} }

// inProcessRunner runs each job on a goroutine of the worker's process.
type inProcessRunner struct{ w *Worker }

func (inProcessRunner) kind() string        { return "in_process" }
func (inProcessRunner) child() bool         { return false }
func (inProcessRunner) unavailable() string { return "" }
func (r inProcessRunner) run(a *activeJob)  { r.w.runJob(a) }

func (r inProcessRunner) open(ctx context.Context) (func(), error) {
	if err := r.w.prewarm(ctx); err != nil { // Options.Prewarm, once per run
		return nil, err
	}
	return func() {}, nil
}

// InProcess runs each job's handler on a goroutine of the worker's
// process: the cheapest way (a few kilobytes and a goroutine per job).
// A panic in the handler, or in a goroutine it starts with [job.Job.Go],
// fails only that job; a fatal runtime error (concurrent map writes), an
// os.Exit, an out-of-memory kill or a crash in C code takes the whole
// worker down, with every call it runs. Processes contains those.
func InProcess() Executor { return inProcess{} }

// ProcessOptions configure [Processes].
type ProcessOptions struct {
	// Idle is how many job processes are kept started and ready, so that
	// a job starts at once; default 1. Each is replaced after use. Jobs
	// beyond Idle that arrive at once wait for processes to start (tens of
	// milliseconds of CPU each): size Idle to the bursts you expect, at
	// the memory of an idle process each (see the README's figures).
	Idle int
	// MemoryWarn: a job process whose resident set (RSS) passes it is
	// logged at Warn, once; 0 = no warning.
	MemoryWarn int64
	// MemoryLimit: a job process whose RSS passes it is killed, and its
	// job reported failed saying so; 0 = no limit. It is a poll of the
	// resident set (every second, every 50 ms above half the limit), not a
	// hard cap: a job that grows fast is seen a little past it (200.2–202.4
	// MiB for a 200 MiB limit, measured; see docs/job-processes.md). Job
	// processes also get GOMEMLIMIT at 90% of it (unless the environment
	// sets GOMEMLIMIT), so that their Go heap is collected harder near it.
	// Linux only.
	MemoryLimit int64
	// StartTimeout bounds a job process's start; default 10s. A process
	// that does not become ready in time is killed. Starts that keep
	// failing (3 in a row) make the worker report itself full, and say why
	// on /readyz, until a start succeeds again.
	StartTimeout time.Duration
	// Env is added to the environment of job processes.
	Env []string
}

type processes struct{ o ProcessOptions }

func (p processes) runner(w *Worker) jobRunner { return &processRunner{w: w, o: p.o} }

// processRunner runs each job in a job process of the current run's pool.
// Job processes run Options.Prewarm themselves.
type processRunner struct {
	w    *Worker
	o    ProcessOptions
	pool atomic.Pointer[jobproc.Pool] // the current run's job processes
	err  atomic.Pointer[error]        // why job processes cannot start, nil when they can
}

func (*processRunner) kind() string { return "processes" }
func (*processRunner) child() bool  { return jobproc.IsChild() }

func (r *processRunner) unavailable() string {
	if p := r.err.Load(); p != nil {
		return (*p).Error()
	}
	return ""
}

func (r *processRunner) open(context.Context) (func(), error) {
	pool, err := r.newPool()
	if err != nil {
		return nil, err
	}
	r.pool.Store(pool)
	return func() {
		r.pool.Store(nil)
		ctx, cancel := context.WithTimeout(context.Background(), r.w.o.ShutdownTimeout)
		defer cancel()
		_ = pool.Close(ctx)
		r.err.Store(nil)
	}, nil
}

func (r *processRunner) run(a *activeJob) { r.w.runJobProcess(a, r.pool.Load()) }

// Processes runs each job in a process of its own: the worker's own binary
// (os.Executable, with the same arguments) started again. In that process
// the program runs as usual up to [Worker.Run], [Worker.RunUntilSignal]
// or [Worker.Start] (so everything before it runs in job processes too:
// keep it to building the worker), and there the worker serves the one job
// it is handed instead of registering, and returns [ErrJobProcessDone].
// That is the job process's entry point: the program's main then exits,
// with the code [ExitCode] gives (0 when the job process served its job),
// and should not print the error. The parent keeps the connection to the
// server and all bookkeeping.
//
// A job process that dies, however it dies (exit, signal, fatal runtime
// error, MemoryLimit), ends only its job: the job is reported failed with
// the cause and the last lines of the process's stderr, and counted; the
// other jobs and the registration go on. Terminations, drains and
// ShutdownTimeout work as in process: the handler's context is cancelled
// with the same causes, and a process that does not end within
// ShutdownTimeout is killed. Job processes log through the worker's
// logger. Linux is the supported platform (memory limits, and job
// processes dying with the worker, need it).
func Processes(o ProcessOptions) Executor { return processes{o: o} }

// Cause codes between the worker and its job processes: the causes the
// worker cancels a job process's job with, and those a job process reports
// its job ended with (jobproc.Outcome.Cause).
var causeCodes = map[error]string{
	job.ErrTerminated:       "terminated",
	job.ErrDrainTimeout:     "drain_timeout",
	job.ErrWorkerStopped:    "worker_stopped",
	job.ErrRoomDisconnected: "room_disconnected",
	job.ErrShutdown:         "shutdown",
}

// causeCode is the code of a job's cancel cause, "" for none or one
// without a code.
func causeCode(cause error) string {
	if cause == nil {
		return ""
	}
	for e, code := range causeCodes {
		if errors.Is(cause, e) {
			return code
		}
	}
	return ""
}

func causeFor(err error) jobproc.Cause {
	for e, code := range causeCodes {
		if errors.Is(err, e) {
			return jobproc.Cause{Code: code, Text: e.Error()}
		}
	}
	return jobproc.Cause{Code: "worker_stopped", Text: fmt.Sprint(err)}
}

// causeFrom is the cause error of a code: the sentinel, or for a
// shutdown a *job.ShutdownError whose reason is c.Text.
func causeFrom(c jobproc.Cause) error {
	if c.Code == causeCodes[job.ErrShutdown] {
		return &job.ShutdownError{Reason: c.Text}
	}
	for e, code := range causeCodes {
		if c.Code == code {
			return e
		}
	}
	return job.ErrWorkerStopped // the parent went away, or a cause of a newer worker
}

// newPool starts the pool of job processes of a run.
func (r *processRunner) newPool() (*jobproc.Pool, error) {
	w, o := r.w, r.o
	if o.Idle == 0 {
		o.Idle = 1
	}
	pool, err := jobproc.New(jobproc.Options{
		Idle:         max(o.Idle, 0),
		MemoryWarn:   o.MemoryWarn,
		MemoryLimit:  o.MemoryLimit,
		StartTimeout: o.StartTimeout,
		Env:          o.Env,
		Logger:       w.log,
		OnHealth: func(err error) {
			if err != nil {
				r.err.Store(&err)
			} else {
				r.err.Store(nil)
			}
			w.kickStatus()
		},
	})
	if err != nil {
		return nil, fmt.Errorf("worker: job processes: %w", err)
	}
	return pool, nil
}

// runJobProcess runs a job in a job process, relays what it reports, and
// ends the job with the process.
func (w *Worker) runJobProcess(a *activeJob, pool *jobproc.Pool) {
	defer w.jobWG.Done()
	w.report(&a.line, &livekit.UpdateJobStatus{JobId: a.info.GetId(), Status: livekit.JobStatus_JS_RUNNING})
	base := w.o.Logger.With(slog.String("worker_id", a.line.sess.workerID()))
	log := slog.New(&jobLogHandler{
		job: base.With(slog.String("job_id", a.info.GetId()), slog.String("room", a.info.GetRoom().GetName()),
			slog.String("agent_name", a.info.GetAgentName()), slog.String("deployment", a.info.GetDeployment())).Handler(),
		base: base.Handler(),
	})
	if pool == nil { // the run ended before its job started
		w.endJobProcess(a, log, jobproc.End{Kind: jobproc.EndStartFailed, Error: "the worker stopped"}, false)
		return
	}
	p := a.params
	spec := jobproc.Spec{Job: p.Info, Identity: p.Identity, URL: p.URL, Token: p.Token, Base: w.base, Timing: p.Timing.Proto(w.base)}
	spec.TraceParent, spec.TraceState = traceHeaders(w.startSpan(a)) // the job process continues the job's trace
	pr, err := pool.Start(a.ctx, spec, log)
	if err != nil {
		var ee *jobproc.EndError
		end := jobproc.End{Kind: jobproc.EndStartFailed, Error: err.Error()}
		if errors.As(err, &ee) {
			end = ee.End
		}
		w.endJobProcess(a, log, end, false)
		return
	}
	w.mu.Lock()
	a.proc = pr
	w.mu.Unlock()
	log.Info("job started", slog.String("identity", p.Identity), slog.Int("pid", pr.Pid()), slog.Bool("warm", pr.Warm()))
	relayed := make(chan struct{})
	reported := false // the job's end was reported when the job process told it
	go func() {
		defer close(relayed)
		for ev := range pr.Events() {
			switch ev.Kind {
			case jobproc.EventStatus:
				ev.Status.JobId = a.info.GetId()
				w.traceStatus(a, ev.Status)
				w.report(&a.line, ev.Status)
			case jobproc.EventMemoryWarn: // logged by the pool
				w.obs.memoryWarning()
			case jobproc.EventEnd:
				// The job process waits in its room until the end is
				// written to the server, as an in-process job does.
				w.jobEnding(a)
				if upd, _, terminated := w.processEnd(a, ev.End); !terminated {
					w.report(&a.line, upd)
					w.awaitSent(&a.line, upd, reportBeforeLeave)
				}
				reported = true
				_ = pr.Reported()
			}
		}
	}()
	// Cancellation: the handler's context is cancelled with the same cause
	// as in process; a process that does not end in time is killed.
	stop := context.AfterFunc(a.ctx, func() {
		pr.Stop(causeFor(context.Cause(a.ctx)), w.o.ShutdownTimeout)
	})
	end := pr.Wait()
	stop()
	<-relayed
	w.endJobProcess(a, log, end, reported)
}

// processEnd is the final status of a job whose process ended as end, what
// cancelled the job (nil if nothing did), and whether the server
// terminated it (then the status is not to be sent: the server recorded
// the end when it sent the termination).
func (w *Worker) processEnd(a *activeJob, end jobproc.End) (upd *livekit.UpdateJobStatus, cause error, terminated bool) {
	cause = context.Cause(a.ctx)
	if end.Reported() {
		// The job process knows what cancelled its job first, if anything:
		// a termination that reached the worker after the job ended on
		// its own (it left its room, and the server ended the job for
		// that) is not why the job ended, as in process.
		cause = nil
		if end.Cause != "" {
			cause = causeFrom(jobproc.Cause{Code: end.Cause, Text: end.CauseText})
		}
	}
	upd = &livekit.UpdateJobStatus{JobId: a.info.GetId(), Status: livekit.JobStatus_JS_SUCCESS, JoinTiming: end.Timing}
	switch end.Kind {
	case jobproc.EndSucceeded:
	case jobproc.EndFailed, jobproc.EndPanicked:
		upd.Status, upd.Error = livekit.JobStatus_JS_FAILED, end.String()
	default: // the process died
		upd.Status, upd.Error = livekit.JobStatus_JS_FAILED, processFailure(end)
	}
	return upd, cause, errors.Is(cause, job.ErrTerminated)
}

// endJobProcess reports how a job process ended (unless its end was
// reported when the process told it) and forgets the job.
func (w *Worker) endJobProcess(a *activeJob, log *slog.Logger, end jobproc.End, reported bool) {
	w.jobEnding(a)
	took := time.Since(a.started)
	upd, cause, terminated := w.processEnd(a, end)
	status := StatusSuccess
	switch end.Kind {
	case jobproc.EndSucceeded:
		if terminated {
			status = StatusTerminated
			log.Info("job terminated by server", slog.Duration("took", took))
		} else {
			log.Info("job finished", slog.Duration("took", took))
		}
	case jobproc.EndFailed, jobproc.EndPanicked:
		status = StatusFailed
		if end.Kind == jobproc.EndPanicked {
			status = StatusPanicked
			log.Error("job handler panicked", slog.String("panic", end.Error), slog.String("stack", string(end.Stack)))
		}
		log.Warn("job failed", slog.String("error", end.String()), slog.Duration("took", took))
	default:
		// The process died: it ends only this job.
		status = processEndStatus(end.Kind)
		log.Error("job process ended without finishing its job", slog.String("cause", end.String()),
			slog.String("kind", end.Kind.String()), slog.Int("pid", end.Pid), slog.Int("exit_code", end.ExitCode),
			slog.String("signal", end.Signal), slog.Int64("max_rss", end.MaxRSS), slog.String("stderr", end.Stderr),
			slog.Duration("took", took))
	}
	a.endSpan(string(status), upd.GetError())
	if !terminated && !reported {
		w.report(&a.line, upd)
	}
	var failure error
	if upd.Status == livekit.JobStatus_JS_FAILED {
		failure = errors.New(upd.Error)
	}
	w.jobEnded(a, jobEnd{status: status, took: took, err: failure, cause: cause})
	var joined time.Time
	if us := end.Timing.GetConnectedUs(); us > 0 {
		joined = w.base.Add(time.Duration(us) * time.Microsecond)
	}
	w.restart(a, status, joined)
}

// jobLogHandler is the log handler of a job in a job process. The worker's
// own lines about the job get the job's attributes (job); the records the
// job process relays were made by the job's j.Logger(), which named the job
// already, and go out as they came, with the worker's attributes only
// (base): as in process, each attribute once.
type jobLogHandler struct{ job, base slog.Handler }

func (h *jobLogHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.job.Enabled(ctx, l) }

func (h *jobLogHandler) Handle(ctx context.Context, r slog.Record) error {
	named := false
	r.Attrs(func(a slog.Attr) bool {
		named = a.Key == "job_id"
		return !named
	})
	if named {
		return h.base.Handle(ctx, r)
	}
	return h.job.Handle(ctx, r)
}

func (h *jobLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &jobLogHandler{job: h.job.WithAttrs(as), base: h.base.WithAttrs(as)}
}

func (h *jobLogHandler) WithGroup(name string) slog.Handler {
	return &jobLogHandler{job: h.job.WithGroup(name), base: h.base.WithGroup(name)}
}

// processEndStatus is the jobs_finished status of a job whose process died.
func processEndStatus(k jobproc.EndKind) EndStatus {
	switch k {
	case jobproc.EndMemoryLimit:
		return StatusMemoryLimit
	case jobproc.EndKilled, jobproc.EndUnresponsive:
		return StatusKilled
	case jobproc.EndStartFailed:
		return StatusStartFailed
	}
	return StatusCrashed
}

// maxErrorText bounds the error a failed job reports to the server.
const maxErrorText = 1500

// processFailure is the error reported for a job whose process died: the
// cause, then the last lines of its stderr.
func processFailure(end jobproc.End) string {
	s := end.String()
	if tail := strings.TrimSpace(end.Stderr); tail != "" {
		if room := maxErrorText - len(s) - 10; len(tail) > room && room > 0 {
			tail = "…" + tail[len(tail)-room:]
		}
		s += "; stderr: " + tail
	}
	return s
}

// serveJobProcess serves the one job handed to this job process and
// returns ErrJobProcessDone (wrapping why it could not, if it could not):
// the program's main then exits the process.
func (w *Worker) serveJobProcess(ctx context.Context) error {
	err := jobproc.ServeOptions{Prepare: w.prewarm}.Serve(ctx, func(ctx context.Context, s jobproc.Spec, r *jobproc.Reporter) jobproc.Outcome {
		return w.runInJobProcess(ctx, s, r)
	})
	if errors.Is(err, ErrPrewarm) {
		fmt.Fprintln(os.Stderr, err) // the worker reports it with the failed start
	}
	if err != nil {
		w.log.Error("job process ended badly", slog.Any("error", err))
	}
	return &jobProcessDone{err: err}
}

// runInJobProcess runs the handler on the job s, in a job process.
func (w *Worker) runInJobProcess(ctx context.Context, s jobproc.Spec, r *jobproc.Reporter) jobproc.Outcome {
	// The handler sees the same causes as in process.
	jobCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(errJobEnded)
	stop := context.AfterFunc(ctx, func() {
		var ce *jobproc.CauseError
		if errors.As(context.Cause(ctx), &ce) && ce.Code == jobproc.CodeParentGone {
			// The worker died. Leaving the room would look like a normal
			// end, and nothing would restart the agent: go away as the
			// worker did, so that the server sees the agent fail.
			fmt.Fprintln(os.Stderr, "the worker process went away: ending this job process without leaving the room")
			os.Exit(3)
		}
		if ce != nil {
			cancel(causeFrom(ce.Cause))
			return
		}
		cancel(job.ErrWorkerStopped)
	})
	defer stop()
	log := slog.New(r.Handler())
	if !w.o.KeepSDKLogger {
		// pion logs through the SDK's process-wide logger: in a job
		// process that is this job's, whose records reach the worker.
		sdklog.Install(log.With(slog.String("component", "livekit-sdk")))
	}
	_, ctl := jobrt.New(w.withPrewarmed(withRemoteSpan(jobCtx, s.TraceParent, s.TraceState)), jobrt.Params{
		Info: s.Job, Identity: s.Identity, URL: s.URL, Token: s.Token, Logger: log,
		Timing: timingFrom(s.Base, s.Timing), APIURL: w.o.URL, APIKey: w.o.APIKey, APISecret: w.o.APISecret,
		OnConnected: func(t jobrt.Timing) {
			_ = r.Status(&livekit.UpdateJobStatus{JobId: s.Job.GetId(), Status: livekit.JobStatus_JS_RUNNING, JoinTiming: t.Proto(s.Base)})
		},
	})
	err := ctl.Run(func(ctx context.Context) error { return w.handler(ctx, (*job.Job)(ctl.Job())) })
	outcomeOf := func(outcome error) jobproc.Outcome {
		var out jobproc.Outcome
		var pe *jobrt.PanicError
		switch {
		case errors.As(outcome, &pe):
			out = jobproc.PanicOutcome(pe.Value, pe.Stack)
		default:
			out = jobproc.Failure(outcome)
		}
		out.Timing = ctl.Timing().Proto(s.Base)
		// What cancelled the job first, as endJob reads it in process:
		// once the job ended, whose own cancellation is no cause.
		cause := context.Cause(ctl.Context())
		out.Cause = causeCode(cause)
		var se *job.ShutdownError
		if errors.As(cause, &se) {
			out.CauseText = se.Reason
		}
		return out
	}
	hctx, hcancel := context.WithTimeout(context.Background(), w.o.ShutdownTimeout)
	defer hcancel()
	outcome := ctl.FinishReporting(hctx, err, func(outcome error) {
		// As in process, the end reaches the server before the agent
		// leaves its room: the worker reports it and then lets this
		// process go on (jobrt.Control.FinishReporting).
		w.flushTraces(log) // the process exits soon after
		r.End(outcomeOf(outcome), 2*reportBeforeLeave)
	})
	// Sent already by End, unless the job had ended before.
	return outcomeOf(outcome)
}

// timingFrom converts join timing in microseconds since base back to
// instants.
func timingFrom(base time.Time, t *livekit.JobJoinTiming) jobrt.Timing {
	at := func(us int64) time.Time {
		if us == 0 || base.IsZero() {
			return time.Time{}
		}
		return base.Add(time.Duration(us) * time.Microsecond)
	}
	return jobrt.Timing{
		OfferReceived:      at(t.GetOfferReceivedUs()),
		Accepted:           at(t.GetAcceptedUs()),
		AssignmentReceived: at(t.GetAssignmentReceivedUs()),
		Launched:           at(t.GetLaunchedUs()),
	}
}
