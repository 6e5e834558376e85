package worker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/jobrt"
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

// reservation holds a slot for an accepted offer until its assignment.
type reservation struct {
	state    jobState // changed by the methods of jobTable only
	sess     *session
	identity string
	timing   jobrt.Timing
	timer    *time.Timer
}

// handleOffer answers one offer. It runs on a goroutine of its own.
func (w *Worker) handleOffer(s *session, req *livekit.AvailabilityRequest, received time.Time) {
	j := req.GetJob()
	if j == nil {
		w.log.Warn("offer without a job; ignored")
		return
	}
	// Most offers log nothing at the usual levels: the job's attributes
	// are put together only for a line that is logged.
	logf := func(level slog.Level, msg string, attrs ...any) {
		if ctx := context.Background(); w.log.Enabled(ctx, level) {
			w.log.Log(ctx, level, msg, jobAttrs(j, s.workerID(), attrs...)...)
		}
	}
	w.obs.offer()
	w.events.emit(Event{Kind: EventOffered, Time: received, JobID: j.GetId(), Room: j.GetRoom().GetName()})
	decline := func(reason string, attrs ...any) {
		w.obs.declined(reason, time.Since(received))
		w.events.emit(Event{Kind: EventDeclined, JobID: j.GetId(), Room: j.GetRoom().GetName(), Reason: reason})
		level := slog.LevelInfo
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
	if reason := w.reserve(s, j.GetId()); reason != "" {
		decline(reason)
		return
	}
	r := jobrt.NewRequest(j, req.GetResuming())
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
	if !w.confirm(j.GetId(), opts.Identity, jobrt.Timing{OfferReceived: received, Accepted: now}) {
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

// decide runs OnRequest with its timeout; a panic or timeout is an error.
func (w *Worker) decide(r *jobrt.Request) error {
	if w.o.OnRequest == nil {
		return r.Accept(jobrt.AcceptOptions{})
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
		res <- w.o.OnRequest(ctx, (*job.Request)(r))
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

// reserve holds a slot for an offer made on s; it returns a decline reason
// or "".
func (w *Worker) reserve(s *session, id string) string {
	userLoad, hasUserLoad := w.userLoad()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.draining {
		return DeclineDraining
	}
	if w.table.known(id) {
		return DeclineDuplicate
	}
	if _, full := w.loadLocked(userLoad, hasUserLoad); full {
		return DeclineFull
	}
	w.table.reserve(id, s)
	return ""
}

// confirm records an accepted offer's identity and starts the timer that
// frees its slot if no assignment comes. False if the slot is gone.
func (w *Worker) confirm(id, identity string, t jobrt.Timing) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.table.reservation(id)
	if !ok || w.draining {
		w.table.release(id, nil)
		return false
	}
	r.identity, r.timing = identity, t
	r.timer = time.AfterFunc(w.o.AssignmentTimeout, func() {
		w.mu.Lock()
		released := w.table.release(id, r)
		w.mu.Unlock()
		if released {
			w.obs.assignmentTimeout()
			w.log.Warn("accepted offer was never assigned; slot released",
				slog.String("job_id", id), slog.Duration("after", w.o.AssignmentTimeout))
			w.kickStatus()
		}
	})
	return true
}

func (w *Worker) release(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.table.release(id, nil)
}
