package restart

import (
	"strconv"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
)

// Outcome is what a [Restarter] decided about one failure: [Restarted], or
// why it refused. The refusal outcomes are the values of the "reason"
// label of lkagent_restart_refusals_total.
type Outcome string

const (
	// Restarted: the failed agent's dispatch was replaced by a new one for
	// the same agent name, deployment and metadata.
	Restarted Outcome = "restarted"

	// NotAFailure: the agent left normally (CLIENT_INITIATED) or for a
	// reason that is not the agent's failure (removed, room deleted or
	// closed, replaced by a duplicate identity, migrated, server shutdown).
	// See [IsFailure].
	NotAFailure Outcome = "not_failure"
	// PolicyNever: the dispatch's restart policy is JRP_NEVER.
	PolicyNever Outcome = "policy_never"
	// RoomGone: the room no longer exists.
	RoomGone Outcome = "room_gone"
	// RoomEmpty: nobody but agents (and recorders) is left in the room.
	RoomEmpty Outcome = "room_empty"
	// AlreadyHandled: the failed agent's dispatch no longer exists. Either
	// another restarter (a worker, another guard, or this one for a
	// redelivered webhook) claimed it first, or it was deleted, which is
	// how the server terminates a job: both mean "not ours to restart".
	AlreadyHandled Outcome = "already_handled"
	// CapReached: the key was restarted MaxRestarts times in the window.
	CapReached Outcome = "cap_reached"
	// UnsupportedJob: the job is not a room job (JT_PUBLISHER and
	// JT_PARTICIPANT dispatches hold one job per participant, and replacing
	// the dispatch would end the others).
	UnsupportedJob Outcome = "unsupported_job"
)

// failureReasons are the disconnect reasons that mean the agent failed: its
// process, connection or code broke while the room still needed it.
//
//	CONNECTION_TIMEOUT  the server stopped hearing from the agent: a killed or
//	                    frozen process, a lost network (~20 s after a SIGKILL)
//	SIGNAL_CLOSE        the signal connection closed before the agent was fully
//	                    connected
//	JOIN_FAILURE        the agent never connected fully (verify or join failed,
//	                    join timed out)
//	STATE_MISMATCH      negotiation, publication, subscription or data channel
//	                    errors the session did not survive
//	MEDIA_FAILURE       media stream failure or timeout
//	AGENT_ERROR         the agent itself left saying it failed
//
// Everything else is not a failure of the agent, and is never restarted:
//
//	CLIENT_INITIATED    the agent left on its own: its job ended
//	PARTICIPANT_REMOVED someone removed it (RemoveParticipant); the server
//	                    also does this when a dispatch is deleted
//	ROOM_DELETED        the room was deleted
//	ROOM_CLOSED         the room closed: its last caller left
//	DUPLICATE_IDENTITY  another participant took its identity: it was replaced
//	MIGRATION           it moves to another server (LiveKit Cloud)
//	SERVER_SHUTDOWN     the room's server is shutting down; the room goes with it
//	USER_UNAVAILABLE, USER_REJECTED, SIP_TRUNK_FAILURE
//	                    outcomes of SIP calls, not agent failures
//	UNKNOWN_REASON      the server recorded no cause; restarting on a guess
//	                    could put a second agent next to a healthy one
var failureReasons = map[livekit.DisconnectReason]bool{
	livekit.DisconnectReason_CONNECTION_TIMEOUT: true,
	livekit.DisconnectReason_SIGNAL_CLOSE:       true,
	livekit.DisconnectReason_JOIN_FAILURE:       true,
	livekit.DisconnectReason_STATE_MISMATCH:     true,
	livekit.DisconnectReason_MEDIA_FAILURE:      true,
	livekit.DisconnectReason_AGENT_ERROR:        true,
}

// IsFailure reports whether an agent that left the room for reason (a
// livekit.DisconnectReason name, such as "CONNECTION_TIMEOUT") failed, and
// so may be restarted; see the package documentation for the table.
// Unknown names are not failures.
func IsFailure(reason string) bool {
	v, ok := livekit.DisconnectReason_value[reason]
	return ok && failureReasons[livekit.DisconnectReason(v)]
}

// Dispatch attributes by which a restart chain carries its count, so that
// every process that restarts the agent (workers, guards) sees the same
// count. They are visible to the agent in its job's attributes.
const (
	// AttrRestarts is the number of restarts in the current window that
	// led to this dispatch.
	// The job reads it with job.Job.Restarts.
	AttrRestarts = job.AttrRestarts
	// AttrRestartWindow is when the current window began (the first
	// restart in it), in Unix milliseconds.
	AttrRestartWindow = "lkagent.restart_window"
)

// chainCount reads the restart count and window start a dispatch carries;
// zero values when it carries none (it is not a restart) or they are
// garbled.
func chainCount(attrs map[string]string) (int, time.Time) {
	n, err := strconv.Atoi(attrs[AttrRestarts])
	if err != nil || n < 0 {
		return 0, time.Time{}
	}
	ms, err := strconv.ParseInt(attrs[AttrRestartWindow], 10, 64)
	if err != nil || ms <= 0 {
		return 0, time.Time{}
	}
	return n, time.UnixMilli(ms)
}

// backoff is how long after the previous restart of a key its next one may
// happen, when done restarts happened already in the window.
func backoff(done int, base, max time.Duration) time.Duration {
	if done <= 0 {
		return 0
	}
	d := base
	for i := 1; i < done && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// findJob returns the dispatch and job of the failed agent in ds, or nils.
// A job id matches exactly; otherwise the participant identity matches,
// among jobs started before the agent joined (when that is known): an
// agent restarted under the same identity started later, and must never be
// taken for the one that failed.
func findJob(ds []*livekit.AgentDispatch, f Failure) (*livekit.AgentDispatch, *livekit.Job) {
	var bestD *livekit.AgentDispatch
	var bestJ *livekit.Job
	for _, d := range ds {
		if f.DispatchID != "" && d.Id != f.DispatchID {
			continue
		}
		if f.AgentName != "" && d.AgentName != f.AgentName {
			continue
		}
		for _, j := range d.GetState().GetJobs() {
			if f.JobID != "" {
				if j.Id == f.JobID {
					return d, j
				}
				continue
			}
			if j.GetState().GetParticipantIdentity() != f.Identity {
				continue
			}
			started := j.GetState().GetStartedAt()
			if !f.JoinedAt.IsZero() && started > f.JoinedAt.UnixNano() {
				continue
			}
			if bestJ == nil || started > bestJ.GetState().GetStartedAt() {
				bestD, bestJ = d, j
			}
		}
	}
	return bestD, bestJ
}

const (
	// pendingWait bounds the wait for the server to list a failed agent's
	// job in its dispatch: it lists it when the launch completes, which
	// can take the 5 s the server gives its nodes to report their agent
	// names, after the agent joined.
	pendingWait = 15 * time.Second
	// pendingPoll is how often the dispatches are listed meanwhile.
	pendingPoll = 250 * time.Millisecond
	// pendingMaxAge: a dispatch without a job older than this is not
	// waiting for one (no worker took it; the server never retries).
	pendingMaxAge = 30 * time.Second
)

// pending reports whether ds holds a recent dispatch of the failed agent's
// name that has no job listed yet, and may be the failed agent's: created
// before it joined (a replacement another process created is not).
func pending(ds []*livekit.AgentDispatch, f Failure, now time.Time) bool {
	for _, d := range ds {
		if (f.DispatchID != "" && d.Id != f.DispatchID) || d.AgentName != f.AgentName || len(d.GetState().GetJobs()) > 0 {
			continue
		}
		created := time.Unix(0, d.GetState().GetCreatedAt())
		if now.Sub(created) < pendingMaxAge && (f.JoinedAt.IsZero() || !created.After(f.JoinedAt)) {
			return true
		}
	}
	return false
}

// callers counts the participants an agent is there for: everyone but
// agents and egress recorders (a recording alone needs no agent), not
// counting the failed agent nor anyone already disconnected.
func callers(ps []*livekit.ParticipantInfo, failed string) int {
	n := 0
	for _, p := range ps {
		switch {
		case p.Identity == failed,
			p.Kind == livekit.ParticipantInfo_AGENT,
			p.Kind == livekit.ParticipantInfo_EGRESS,
			p.State == livekit.ParticipantInfo_DISCONNECTED:
			continue
		}
		n++
	}
	return n
}
