package worker

import (
	"context"
	"log/slog"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/internal/restart"
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
	// between two of them, doubling each time up to MaxBackoff (defaults
	// 1s and 1m). See package guard.
	MaxRestarts int
	Window      time.Duration
	Backoff     time.Duration
	MaxBackoff  time.Duration
}

// restartTimeout bounds one restart, its backoff included.
const restartTimeout = 2 * time.Minute

// newRestarter builds the restarter of the worker's options: it uses the
// worker's credentials, logger and registry.
func (w *Worker) newRestarter() (*restart.Restarter, error) {
	return restart.New(restart.Options{
		URL: w.o.URL, APIKey: w.o.APIKey, APISecret: w.o.APISecret,
		MaxRestarts: w.o.Restart.MaxRestarts, Window: w.o.Restart.Window,
		Backoff: w.o.Restart.Backoff, MaxBackoff: w.o.Restart.MaxBackoff,
		// The restarter names the agent and deployment of each failure
		// itself: the worker's logger would add them twice.
		Logger: w.o.Logger, Registerer: tee{w.registry, w.o.Registerer},
	})
}

// tee registers collectors with the worker's own registry and, when set,
// with Options.Registerer too.
type tee struct{ own, user prometheus.Registerer }

func (t tee) Register(c prometheus.Collector) error {
	if err := t.own.Register(c); err != nil {
		return err
	}
	if t.user != nil {
		return t.user.Register(c)
	}
	return nil
}

func (t tee) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := t.Register(c); err != nil {
			panic(err)
		}
	}
}

func (t tee) Unregister(c prometheus.Collector) bool {
	ok := t.own.Unregister(c)
	if t.user != nil {
		ok = t.user.Unregister(c) && ok
	}
	return ok
}

// restartable says whether a job that ended with status (a jobs_finished
// status) is restarted.
func (w *Worker) restartable(status EndStatus) bool {
	if w.restarter == nil {
		return false
	}
	switch status {
	case StatusPanicked, StatusCrashed, StatusMemoryLimit, StatusStartFailed:
		return true
	case StatusFailed:
		return w.o.Restart.OnHandlerError
	}
	return false // success, terminated, killed after a termination, queue or drain timeouts
}

// restart dispatches the agent of a failed job to its room again, if its
// dispatch asks for it and someone other than agents is still there. It
// runs on a goroutine the worker waits for.
func (w *Worker) restart(a *activeJob, status EndStatus, joinedAt time.Time) {
	if !w.restartable(status) {
		return
	}
	f := restart.Failure{
		Room:       a.info.GetRoom().GetName(),
		AgentName:  a.info.GetAgentName(),
		Deployment: a.info.GetDeployment(),
		Identity:   a.identity,
		JobID:      a.info.GetId(),
		DispatchID: a.info.GetDispatchId(),
		Reason:     livekit.DisconnectReason_AGENT_ERROR.String(),
		JoinedAt:   joinedAt,
	}
	// A stopping worker cancels restarts still waiting (their backoff):
	// nothing is claimed before that wait ends, and what is claimed is
	// finished by the restarter whatever the context.
	ctx := w.restartCtx()
	w.later(func() {
		ctx, cancel := context.WithTimeout(ctx, restartTimeout)
		defer cancel()
		d, err := w.restarter.Restart(ctx, f) // the restarter logs its decisions
		if err != nil {
			w.log.Warn("restarting a failed job's agent failed", jobAttrs(a.info, a.line.sess.workerID(), slog.Any("error", err))...)
			return
		}
		if d.Outcome == restart.Restarted {
			w.events.emit(Event{Kind: EventRestarted, JobID: f.JobID, Room: f.Room, DispatchID: d.NewDispatch})
		}
	})
}
