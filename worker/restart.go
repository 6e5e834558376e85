package worker

import (
	"context"
	"log/slog"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/guard"
)

// RestartOptions configure how the worker restarts an agent whose job
// failed in a way the worker sees.
type RestartOptions struct {
	// Disabled turns restarts off.
	Disabled bool
	// OnHandlerError also restarts jobs whose handler returned an error.
	// Off by default: an error is the handler's own verdict (bad
	// metadata, a caller it refuses), which a new agent would repeat; a
	// crash, a panic or a memory kill is not.
	OnHandlerError bool
	// MaxRestarts and Window cap the restarts of one room, agent and
	// deployment (defaults 3 in 10 minutes); Backoff is the least time
	// between two of them, doubling each time (default 1s). See package
	// guard.
	MaxRestarts int
	Window      time.Duration
	Backoff     time.Duration
}

// restartTimeout bounds one restart, its backoff included.
const restartTimeout = 2 * time.Minute

// newRestarter builds the restarter of the worker's options: it uses the
// worker's credentials, logger and registry.
func (w *Worker) newRestarter() (*guard.Restarter, error) {
	return guard.New(guard.Options{
		URL: w.o.URL, APIKey: w.o.APIKey, APISecret: w.o.APISecret,
		MaxRestarts: w.o.Restart.MaxRestarts, Window: w.o.Restart.Window, Backoff: w.o.Restart.Backoff,
		Logger: w.log, Registerer: w.registry,
	})
}

// restartable says whether a job that ended with status (a jobs_finished
// status) is restarted.
func (w *Worker) restartable(status string) bool {
	if w.restarter == nil {
		return false
	}
	switch status {
	case "panicked", "crashed", "memory_limit", "start_failed":
		return true
	case "failed":
		return w.o.Restart.OnHandlerError
	}
	return false // success, terminated, killed after a termination, queue or drain timeouts
}

// restart dispatches the agent of a failed job to its room again, if its
// dispatch asks for it and someone other than agents is still there. It
// runs on a goroutine the worker waits for.
func (w *Worker) restart(a *activeJob, status string, joinedAt time.Time) {
	if !w.restartable(status) {
		return
	}
	f := guard.Failure{
		Room:       a.info.GetRoom().GetName(),
		AgentName:  a.info.GetAgentName(),
		Deployment: a.info.GetDeployment(),
		Identity:   a.identity,
		JobID:      a.info.GetId(),
		DispatchID: a.info.GetDispatchId(),
		Reason:     livekit.DisconnectReason_AGENT_ERROR.String(),
		JoinedAt:   joinedAt,
	}
	w.later(func() {
		ctx, cancel := context.WithTimeout(context.Background(), restartTimeout)
		defer cancel()
		d, err := w.restarter.Restart(ctx, f)
		if err != nil {
			w.log.Warn("restarting a failed job's agent failed", jobAttrs(a.info, a.line.sess.workerID(), slog.Any("error", err))...)
			return
		}
		w.log.Info("failed job's agent: "+string(d.Outcome), jobAttrs(a.info, a.line.sess.workerID(),
			slog.String("detail", d.Detail), slog.String("new_dispatch", d.NewDispatch))...)
	})
}
