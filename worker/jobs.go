package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
)

// Reasons an offer is declined, as the offers_declined metric labels them.
const (
	DeclineForeignAgent      = "foreign_agent"
	DeclineForeignDeployment = "foreign_deployment"
	DeclineForeignJobType    = "foreign_job_type"
	DeclineDuplicate         = "duplicate"
	DeclineFull              = "full"
	DeclineDraining          = "draining"
	DeclineRejected          = "rejected_by_handler"
	DeclineRequestError      = "request_error"
)

// activeJob is a job whose handler runs.
type activeJob struct {
	job     *job.Job
	ctl     *job.Control
	started time.Time
}

// reservation holds a slot for an accepted offer until its assignment.
type reservation struct {
	identity string
	timing   job.Timing
	timer    *time.Timer
}

// handleMessage routes one server message. It runs on the read loop and
// must not block: user code runs on goroutines of its own.
func (w *Worker) handleMessage(s *session, jobCtx context.Context, msg *livekit.ServerMessage, at time.Time) {
	w.touch()
	switch m := msg.GetMessage().(type) {
	case *livekit.ServerMessage_Availability:
		if m.Availability.GetJob() == nil {
			w.log.Warn("offer without a job; ignored")
			return
		}
		w.userWG.Add(1)
		go func() {
			defer w.userWG.Done()
			w.handleOffer(s, m.Availability, at)
		}()
	case *livekit.ServerMessage_Assignment:
		w.handleAssignment(jobCtx, m.Assignment, at)
	case *livekit.ServerMessage_Termination:
		w.handleTermination(m.Termination.GetJobId())
	case *livekit.ServerMessage_Pong:
		s.lastPong.Store(at.UnixNano())
	case *livekit.ServerMessage_GoAway:
		w.log.Info("server asked the worker to reconnect (go away)")
		s.fail(ErrGoAway)
	case *livekit.ServerMessage_Register:
		w.log.Debug("duplicate registration response ignored")
	default:
		w.log.Debug("unknown message from server ignored", slog.String("type", msgType(msg)))
	}
}

// screen says why an offer is not this worker's, or "".
func (w *Worker) screen(j *livekit.Job) string {
	switch {
	case j.GetAgentName() != w.o.AgentName:
		return DeclineForeignAgent
	case j.GetDeployment() != w.o.Deployment:
		return DeclineForeignDeployment
	case j.GetType() != w.o.JobType:
		return DeclineForeignJobType
	}
	return ""
}

func (w *Worker) handleOffer(s *session, req *livekit.AvailabilityRequest, received time.Time) {
	j := req.GetJob()
	// Most offers log nothing at the usual levels: the job's attributes
	// are put together only for a line that is logged.
	logf := func(level slog.Level, msg string, attrs ...any) {
		if ctx := context.Background(); w.log.Enabled(ctx, level) {
			w.log.Log(ctx, level, msg, jobAttrs(j, s.workerID, attrs...)...)
		}
	}
	w.obs.offer()
	decline := func(reason string, attrs ...any) {
		w.obs.declined(reason, time.Since(received))
		level := slog.LevelDebug
		if reason == DeclineForeignAgent || reason == DeclineForeignDeployment || reason == DeclineForeignJobType {
			level = slog.LevelWarn
			attrs = append(attrs, slog.String("offered_agent_name", j.GetAgentName()),
				slog.String("offered_deployment", j.GetDeployment()))
		}
		logf(level, "offer declined", append(attrs, slog.String("reason", reason))...)
		s.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Availability{
			Availability: &livekit.AvailabilityResponse{JobId: j.GetId(), Available: false}}})
	}
	if reason := w.screen(j); reason != "" {
		decline(reason)
		return
	}
	if reason := w.reserve(j.GetId()); reason != "" {
		decline(reason)
		return
	}
	r := job.NewRequest(j, req.GetResuming())
	if err := w.decide(r); err != nil {
		w.release(j.GetId())
		decline(DeclineRequestError, slog.Any("error", err))
		return
	}
	decided, accepted, opts := r.Decision()
	if !decided || !accepted {
		w.release(j.GetId())
		if !decided {
			logf(slog.LevelWarn, "OnRequest returned without accepting or rejecting the offer; declined")
		}
		decline(DeclineRejected)
		return
	}
	now := time.Now()
	if !w.confirm(j.GetId(), opts.Identity, job.Timing{OfferReceived: received, Accepted: now}) {
		decline(DeclineDraining)
		return
	}
	w.obs.accepted(now.Sub(received))
	logf(slog.LevelDebug, "offer accepted", slog.String("identity", opts.Identity))
	if !s.send(&livekit.WorkerMessage{Message: &livekit.WorkerMessage_Availability{
		Availability: &livekit.AvailabilityResponse{
			JobId:                 j.GetId(),
			Available:             true,
			ParticipantIdentity:   opts.Identity,
			ParticipantName:       opts.Name,
			ParticipantMetadata:   opts.Metadata,
			ParticipantAttributes: opts.Attributes,
		}}}) {
		w.release(j.GetId())
	}
}

// decide runs OnRequest with its timeout; a panic or timeout is an error.
func (w *Worker) decide(r *job.Request) error {
	if w.o.OnRequest == nil {
		return r.Accept(job.AcceptOptions{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.o.OnRequestTimeout)
	defer cancel()
	res := make(chan error, 1)
	w.userWG.Add(1)
	go func() {
		defer w.userWG.Done()
		defer func() {
			if p := recover(); p != nil {
				res <- fmt.Errorf("OnRequest panicked: %v", p)
			}
		}()
		res <- w.o.OnRequest(ctx, r)
	}()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		// Decide now, so a late Accept cannot take the job behind our back.
		_ = r.Reject()
		return fmt.Errorf("OnRequest did not decide within %s", w.o.OnRequestTimeout)
	}
}

// reserve holds a slot for an offer; it returns a decline reason or "".
func (w *Worker) reserve(id string) string {
	userLoad, hasUserLoad := w.userLoad()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.draining {
		return DeclineDraining
	}
	if _, ok := w.jobs[id]; ok {
		return DeclineDuplicate
	}
	if _, ok := w.reserved[id]; ok {
		return DeclineDuplicate
	}
	if w.recent.has(id) {
		return DeclineDuplicate
	}
	if w.o.MaxJobs > 0 && len(w.jobs)+len(w.reserved) >= w.o.MaxJobs {
		return DeclineFull
	}
	load := w.loadLocked()
	if hasUserLoad {
		load = userLoad
	}
	if load >= w.o.LoadThreshold {
		return DeclineFull
	}
	w.reserved[id] = &reservation{}
	return ""
}

// confirm records an accepted offer's identity and starts the timer that
// frees its slot if no assignment comes. False if the slot is gone.
func (w *Worker) confirm(id, identity string, t job.Timing) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.reserved[id]
	if !ok || w.draining {
		delete(w.reserved, id)
		return false
	}
	r.identity, r.timing = identity, t
	r.timer = time.AfterFunc(w.o.AssignmentTimeout, func() {
		w.mu.Lock()
		cur, ok := w.reserved[id]
		if ok && cur == r {
			delete(w.reserved, id)
		}
		s := w.sess
		w.mu.Unlock()
		if ok && cur == r {
			w.obs.assignmentTimeout()
			w.log.Warn("accepted offer was never assigned; slot released",
				slog.String("job_id", id), slog.Duration("after", w.o.AssignmentTimeout))
			if s != nil {
				s.kickStatus()
			}
		}
	})
	return true
}

func (w *Worker) release(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if r, ok := w.reserved[id]; ok {
		if r.timer != nil {
			r.timer.Stop()
		}
		delete(w.reserved, id)
	}
}

// dropReservations forgets accepted offers when their connection is gone:
// their assignments cannot arrive on another connection.
func (w *Worker) dropReservations() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, r := range w.reserved {
		if r.timer != nil {
			r.timer.Stop()
		}
		delete(w.reserved, id)
	}
}

func (w *Worker) handleAssignment(jobCtx context.Context, a *livekit.JobAssignment, received time.Time) {
	info := a.GetJob()
	id := info.GetId()
	w.mu.Lock()
	workerID := w.workerID
	res, ok := w.reserved[id]
	if ok {
		delete(w.reserved, id)
		if res.timer != nil {
			res.timer.Stop()
		}
	}
	_, running := w.jobs[id]
	switch {
	case running || w.recent.has(id):
		w.mu.Unlock()
		w.obs.duplicateAssignment()
		w.log.Warn("assignment for a job this worker already ran; ignored", jobAttrs(info, workerID)...)
		return
	case !ok || w.screen(info) != "":
		w.mu.Unlock()
		w.obs.duplicateAssignment()
		w.log.Warn("assignment for a job this worker did not accept; reported failed", jobAttrs(info, workerID,
			slog.String("offered_agent_name", info.GetAgentName()), slog.String("offered_deployment", info.GetDeployment()))...)
		w.enqueue(&livekit.UpdateJobStatus{JobId: id, Status: livekit.JobStatus_JS_FAILED,
			Error: "assignment for a job this worker did not accept"})
		return
	}
	url := a.GetUrl()
	if url == "" {
		url = wsURL(w.o.URL)
	}
	timing := res.timing
	timing.AssignmentReceived = received
	timing.Launched = time.Now()
	j, ctl := job.New(jobCtx, job.Params{
		Info:     info,
		Identity: res.identity,
		URL:      url,
		Token:    a.GetToken(),
		Logger:   w.o.Logger.With(slog.String("worker_id", workerID)),
		Timing:   timing,
		OnConnected: func(t job.Timing) {
			w.enqueue(&livekit.UpdateJobStatus{JobId: id, Status: livekit.JobStatus_JS_RUNNING, JoinTiming: t.Proto(w.base)})
		},
	})
	aj := &activeJob{job: j, ctl: ctl, started: timing.Launched}
	w.jobs[id] = aj
	w.jobWG.Add(1)
	w.mu.Unlock()
	w.obs.jobStarted(timing.Launched.Sub(received))
	w.kickStatus()
	j.Logger().Debug("job started")
	go w.runJob(aj)
}

// jobAttrs are the log attributes of a job on this worker, then more.
func jobAttrs(j *livekit.Job, workerID string, more ...any) []any {
	return append([]any{slog.String("job_id", j.GetId()), slog.String("room", j.GetRoom().GetName()),
		slog.String("worker_id", workerID)}, more...)
}

func (w *Worker) runJob(a *activeJob) {
	defer w.jobWG.Done()
	w.enqueue(&livekit.UpdateJobStatus{JobId: a.job.ID(), Status: livekit.JobStatus_JS_RUNNING})
	// The handler runs above this frame for the job's whole life: keep it
	// small, so that an idle job's stack stays at its initial 2 KiB. No
	// logging here (a slog call's frame alone doubles the stack, even at
	// a level that is off), and the end of the job, whose frame is large,
	// is a function of its own.
	w.endJob(a, a.ctl.Run(w.handler))
}

// endJob reports the end of a job whose handler returned err and forgets
// the job.
func (w *Worker) endJob(a *activeJob, err error) {
	j := a.job
	log := j.Logger()
	status := "success"
	var pe *job.PanicError
	if errors.As(err, &pe) {
		status = "panicked"
		log.Error("job handler panicked", slog.Any("panic", pe.Value), slog.String("stack", string(pe.Stack)))
	}
	hctx, cancel := context.WithTimeout(context.Background(), w.o.ShutdownTimeout)
	outcome := a.ctl.Finish(hctx, err)
	cancel()
	upd := &livekit.UpdateJobStatus{JobId: j.ID(), Status: livekit.JobStatus_JS_SUCCESS,
		JoinTiming: a.ctl.Timing().Proto(w.base)}
	switch {
	case outcome != nil:
		upd.Status, upd.Error = livekit.JobStatus_JS_FAILED, outcome.Error()
		if status != "panicked" {
			status = "failed"
		}
		log.Warn("job failed", slog.Any("error", outcome), slog.Duration("took", time.Since(a.started)))
	case errors.Is(context.Cause(a.ctl.Context()), job.ErrTerminated):
		status = "terminated"
		log.Info("job terminated by server", slog.Duration("took", time.Since(a.started)))
	default:
		log.Info("job finished", slog.Duration("took", time.Since(a.started)))
	}
	w.enqueue(upd)
	w.obs.jobFinished(status, time.Since(a.started))
	w.mu.Lock()
	delete(w.jobs, j.ID())
	w.recent.add(j.ID())
	close(w.jobsChange)
	w.jobsChange = make(chan struct{})
	w.mu.Unlock()
	w.kickStatus()
}

func (w *Worker) handleTermination(id string) {
	w.mu.Lock()
	a, ok := w.jobs[id]
	w.mu.Unlock()
	if !ok {
		w.release(id)
		w.log.Debug("termination for a job not running here; ignored", slog.String("job_id", id))
		return
	}
	a.job.Logger().Debug("server terminated the job")
	a.ctl.Cancel(job.ErrTerminated)
}

// enqueue appends a job status to the outbox, delivered in order on this
// connection or, if it is lost, on the next one.
func (w *Worker) enqueue(u *livekit.UpdateJobStatus) {
	w.mu.Lock()
	w.outbox = append(w.outbox, u)
	s := w.sess
	w.mu.Unlock()
	if s != nil {
		s.kickOutbox()
	}
}

func (w *Worker) kickStatus() {
	w.mu.Lock()
	s := w.sess
	w.mu.Unlock()
	if s != nil {
		s.kickStatus()
	}
}

// userLoad calls Options.LoadFunc, outside the worker's lock, clamped to
// [0, 1]; false without a LoadFunc.
func (w *Worker) userLoad() (float64, bool) {
	if w.o.LoadFunc == nil {
		return 0, false
	}
	return min(max(w.o.LoadFunc(), 0), 1), true
}

// loadLocked is the load from running jobs; w.mu is held.
func (w *Worker) loadLocked() float64 {
	if w.o.MaxJobs > 0 {
		return float64(len(w.jobs)+len(w.reserved)) / float64(w.o.MaxJobs)
	}
	return 0
}

// workerStatus builds the next UpdateWorkerStatus.
func (w *Worker) workerStatus() *livekit.UpdateWorkerStatus {
	userLoad, hasUserLoad := w.userLoad()
	w.mu.Lock()
	defer w.mu.Unlock()
	load := w.loadLocked()
	if hasUserLoad {
		load = userLoad
	}
	st := livekit.WorkerStatus_WS_AVAILABLE
	if w.draining || load >= w.o.LoadThreshold || (w.o.MaxJobs > 0 && len(w.jobs)+len(w.reserved) >= w.o.MaxJobs) {
		st = livekit.WorkerStatus_WS_FULL
	}
	w.seq++
	w.obs.setLoad(load)
	return &livekit.UpdateWorkerStatus{
		Status:   &st,
		Load:     float32(load),
		JobCount: uint32(len(w.jobs)),
		Draining: w.draining,
		Seq:      w.seq,
	}
}

func (w *Worker) touch() {
	w.mu.Lock()
	w.lastLoop = time.Now()
	w.mu.Unlock()
}
