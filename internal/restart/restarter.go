package restart

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/internal/deploy"
)

// ErrUnauthorized: the server rejected the API key or secret.
var ErrUnauthorized = errors.New("guard: the LiveKit server rejected the API key or secret: check them")

// Failure describes an agent that left its room: what a worker knows of one
// of its jobs that failed, or what a webhook says of a departed agent.
type Failure struct {
	// Room is the room's name. Required.
	Room string
	// AgentName is the failed agent's name; if set, only dispatches of that
	// name are considered.
	AgentName string
	// Deployment is the failed agent's deployment, for the log and metrics
	// until its dispatch is found ("" is production); the dispatch's own
	// deployment is what a restart uses.
	Deployment string
	// Identity is the failed agent's participant identity. JobID or
	// Identity is required; with both, JobID finds the dispatch and
	// Identity is removed from the room.
	Identity string
	// JobID is the failed job's id ("AJ_…").
	JobID string
	// DispatchID, if set, restricts the search to that dispatch.
	DispatchID string
	// Reason is why the agent left: the name of a livekit.DisconnectReason
	// ("CONNECTION_TIMEOUT", "AGENT_ERROR", …). Only failures are restarted
	// ([IsFailure]); a worker whose job failed passes "AGENT_ERROR".
	// Required.
	Reason string
	// JoinedAt is when the failed agent joined the room, if known (webhooks
	// carry it). A job started after it cannot be the failed one: it keeps
	// an agent restarted under the same identity from being taken for the
	// one that failed.
	JoinedAt time.Time

	// deploymentUnknown: Deployment was not known to the reporter (a
	// webhook); the log and metrics say UnknownDeployment until the
	// dispatch is found.
	deploymentUnknown bool
}

// UnknownDeployment is the deployment label of refusals decided before the
// failed agent's dispatch was found, for failures reported by webhooks,
// which do not carry it (a normal end, a room gone, a dispatch gone).
const UnknownDeployment = "(unknown)"

// Decision is what [Restarter.Restart] decided.
type Decision struct {
	// Outcome is Restarted or why not.
	Outcome Outcome
	// Detail says why, in one sentence.
	Detail string
	// AgentName is the failed agent's name: its dispatch's when it was
	// found, else Failure.AgentName.
	AgentName string
	// Deployment is the failed agent's deployment: its dispatch's when it
	// was found, else Failure.Deployment ([UnknownDeployment] for a
	// webhook's).
	Deployment string
	// FailedDispatch is the failed agent's dispatch, if found.
	FailedDispatch string
	// NewDispatch is the dispatch that replaced it (Restarted only).
	NewDispatch string
	// Attempt is the restart's number in its window, 1 to MaxRestarts
	// (Restarted only).
	Attempt int
}

// Restarter restarts failed agents: for a failure it decides by the rules
// of the package documentation, and either replaces the failed agent's
// dispatch with a new one or refuses, logging and counting either way. It
// is safe for concurrent use, and several Restarters (in one process or
// many) may be given the same failure: one of them restarts it.
type Restarter struct {
	o      Options
	api    serverAPI
	log    *slog.Logger
	m      *collectors
	gather prometheus.Gatherer
	now    func() time.Time

	// pendingWait bounds the wait for a job the server has not listed yet.
	pendingWait time.Duration

	mu       sync.Mutex
	inflight map[string]chan struct{} // room + identity (or job id) being decided; closed when decided
	recent   map[key][]time.Time      // restarts this process made, per key, within the window, oldest first
}

// key is what the cap counts restarts of.
type key struct{ room, agentName, deployment string }

// New returns a Restarter. Empty connection options are read from
// LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET; an invalid option is
// an *OptionError that says what to fix.
func New(o Options) (*Restarter, error) {
	o, err := o.withDefaults(osGetenv)
	if err != nil {
		return nil, err
	}
	return newRestarter(o, newLKAPI(o))
}

func newRestarter(o Options, api serverAPI) (*Restarter, error) {
	reg := o.Registerer
	var gather prometheus.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, gather = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		gather = g
	}
	m, err := newCollectors(reg)
	if err != nil {
		return nil, fmt.Errorf("guard: register metrics: %w", err)
	}
	return &Restarter{
		o: o, api: api, log: o.Logger, m: m, gather: gather, now: time.Now, pendingWait: pendingWait,
		inflight: map[string]chan struct{}{},
		recent:   map[key][]time.Time{},
	}, nil
}

// Gatherer returns the registry the Restarter's metrics are in: its own
// when Options.Registerer was nil, else the Registerer if it is also a
// Gatherer, else nil.
func (r *Restarter) Gatherer() prometheus.Gatherer { return r.gather }

// Check asks the server something harmless, to tell whether it is there and
// takes the key and secret. A rejected key or secret is [ErrUnauthorized].
func (r *Restarter) Check(ctx context.Context) error {
	_, err := r.api.roomExists(ctx, "lkagent-guard-check")
	if isUnauthorized(err) {
		return fmt.Errorf("%w (%v)", ErrUnauthorized, err)
	}
	return err
}

// Restart decides about one failure and, if the rules allow, restarts the
// agent: it claims the failed dispatch by deleting it (only one claimant
// can succeed, so a failure seen by several processes is restarted once),
// removes the failed agent from the room if it lingers, and dispatches the
// same agent name, deployment, metadata and attributes again, to the same
// room. It may first wait out the backoff, within ctx.
//
// A refusal is a Decision with a nil error. An error means the decision
// could not be made or carried out (the server did not answer, ctx ended,
// or f is incomplete); it is logged and counted too.
func (r *Restarter) Restart(ctx context.Context, f Failure) (Decision, error) {
	return r.restart(ctx, f, "call")
}

// restart is Restart with the source of the failure for the log.
func (r *Restarter) restart(ctx context.Context, f Failure, source string) (Decision, error) {
	log := r.log.With(slog.String("source", source), slog.String("room", f.Room),
		slog.String("identity", f.Identity), slog.String("disconnect_reason", f.Reason))
	if f.JobID != "" {
		log = log.With(slog.String("job_id", f.JobID))
	}
	d, err := r.decide(ctx, f)
	switch {
	case err != nil:
		r.m.errors.WithLabelValues(d.AgentName, deploy.Label(d.Deployment)).Inc()
		log.Warn("restart failed", slog.String("agent_name", d.AgentName), slog.String("deployment", d.Deployment), slog.Any("error", err))
		return d, err
	case d.Outcome == Restarted:
		r.m.restarts.WithLabelValues(d.AgentName, deploy.Label(d.Deployment)).Inc()
		log.Info("agent restarted", slog.String("agent_name", d.AgentName), slog.String("deployment", d.Deployment), slog.String("failed_dispatch", d.FailedDispatch),
			slog.String("new_dispatch", d.NewDispatch), slog.Int("attempt", d.Attempt), slog.Int("max_restarts", r.o.MaxRestarts))
	default:
		r.m.refusals.WithLabelValues(d.AgentName, deploy.Label(d.Deployment), string(d.Outcome)).Inc()
		attrs := []any{slog.String("agent_name", d.AgentName), slog.String("deployment", d.Deployment), slog.String("reason", string(d.Outcome)), slog.String("why", d.Detail)}
		if d.FailedDispatch != "" {
			attrs = append(attrs, slog.String("failed_dispatch", d.FailedDispatch))
		}
		log.Info("restart refused", attrs...)
	}
	return d, nil
}

// decide applies the rules, in order: a failure at all; a room that
// exists; the failed agent's dispatch (else already handled); its policy
// and job type; the cap; the backoff; someone left in the room; the claim.
func (r *Restarter) decide(ctx context.Context, f Failure) (Decision, error) {
	d := Decision{AgentName: f.AgentName, Deployment: f.Deployment}
	if f.deploymentUnknown {
		d.Deployment = UnknownDeployment
	}
	if f.Room == "" || (f.Identity == "" && f.JobID == "") || f.Reason == "" {
		return d, errors.New("guard: a Failure needs Room, Identity or JobID, and Reason")
	}
	if _, ok := livekit.DisconnectReason_value[f.Reason]; !ok {
		return d, fmt.Errorf("guard: Failure.Reason %q is not a livekit.DisconnectReason name (a failed job is %q)",
			f.Reason, livekit.DisconnectReason_AGENT_ERROR.String())
	}
	if !IsFailure(f.Reason) {
		return d.refuse(NotAFailure, "the agent left with %s, which is not a failure", f.Reason), nil
	}

	// One decision per failed agent at a time in this process (other
	// processes are kept out by the claim). A report of the same failure
	// from another source (the worker, then the webhook) waits for the
	// decision under way and then decides afresh: it finds the dispatch
	// replaced (already handled), or refuses for the same reason, or,
	// if the first could not decide (the server did not answer), tries
	// again.
	flight := f.Room + "\x00" + f.Identity
	if f.Identity == "" {
		flight = f.Room + "\x00job\x00" + f.JobID
	}
	mine := make(chan struct{})
	for {
		r.mu.Lock()
		other, busy := r.inflight[flight]
		if !busy {
			r.inflight[flight] = mine
		}
		r.mu.Unlock()
		if !busy {
			break
		}
		r.log.Debug("waiting for the decision under way about this agent", slog.String("room", f.Room), slog.String("identity", f.Identity))
		select {
		case <-other:
		case <-ctx.Done():
			return d, fmt.Errorf("guard: waiting for the decision under way about this agent: %w", context.Cause(ctx))
		}
	}
	defer func() {
		r.mu.Lock()
		delete(r.inflight, flight)
		r.mu.Unlock()
		close(mine)
	}()

	exists, err := r.api.roomExists(ctx, f.Room)
	if err != nil {
		return d, fmt.Errorf("guard: look up room %q: %w", f.Room, err)
	}
	if !exists {
		return d.refuse(RoomGone, "the room no longer exists"), nil
	}
	ds, err := r.api.dispatches(ctx, f.Room)
	if err != nil {
		return d, fmt.Errorf("guard: list the dispatches of room %q: %w", f.Room, err)
	}
	failed, job := findJob(ds, f)
	if failed == nil && pending(ds, f, r.now()) {
		// The server lists a job in its dispatch only once its launch is
		// complete, up to ~5 s after the agent joined (while it refreshes
		// its cache of agent names): an agent that failed at once may
		// not be listed yet. Wait for it, a bounded time.
		r.log.Debug("the failed agent's dispatch has no job listed yet: waiting", slog.String("room", f.Room), slog.String("identity", f.Identity))
		deadline := r.now().Add(r.pendingWait)
		for failed == nil && pending(ds, f, r.now()) && r.now().Before(deadline) {
			t := time.NewTimer(pendingPoll)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return d, fmt.Errorf("guard: waiting for the server to list the job: %w", context.Cause(ctx))
			}
			if ds, err = r.api.dispatches(ctx, f.Room); err != nil {
				return d, fmt.Errorf("guard: list the dispatches of room %q: %w", f.Room, err)
			}
			failed, job = findJob(ds, f)
		}
	}
	if failed == nil {
		return d.refuse(AlreadyHandled, "no dispatch of the room has this job: restarted by another process already, or deleted (the job was terminated)"), nil
	}
	d.AgentName, d.Deployment, d.FailedDispatch = failed.AgentName, failed.Deployment, failed.Id
	if failed.RestartPolicy == livekit.JobRestartPolicy_JRP_NEVER {
		return d.refuse(PolicyNever, "the dispatch's restart policy is JRP_NEVER"), nil
	}
	if job.Type != livekit.JobType_JT_ROOM {
		return d.refuse(UnsupportedJob, "only room jobs are restarted; this is a %s job", job.Type), nil
	}

	// The cap: the count the dispatch carries (every process's restarts of
	// this chain) or this process's restarts of the key, whichever is more.
	now := r.now()
	k := key{f.Room, failed.AgentName, failed.Deployment}
	chain, windowStart := chainCount(failed.Attributes)
	if windowStart.IsZero() || now.Sub(windowStart) >= r.o.Window {
		chain, windowStart = 0, now
	}
	local, localLast := r.localCount(k, now)
	done := max(chain, local)
	if done >= r.o.MaxRestarts {
		return d.refuse(CapReached, "restarted %d times since %s, the most allowed per %s",
			done, windowStart.Format(time.RFC3339), r.o.Window), nil
	}
	last := localLast
	if chain > 0 {
		if created := time.Unix(0, failed.GetState().GetCreatedAt()); created.After(last) {
			last = created
		}
	}
	if wait := backoff(done, r.o.Backoff, r.o.MaxBackoff) - now.Sub(last); done > 0 && wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return d, fmt.Errorf("guard: waiting %s of backoff: %w", wait.Round(time.Millisecond), context.Cause(ctx))
		}
	}

	ps, err := r.api.participants(ctx, f.Room)
	if err != nil {
		return d, fmt.Errorf("guard: list the participants of room %q: %w", f.Room, err)
	}
	if callers(ps, f.Identity) == 0 {
		return d.refuse(RoomEmpty, "nobody but agents is left in the room"), nil
	}

	// The claim: of all the processes that got here for this failure, the
	// one whose delete succeeds restarts; the others find it gone.
	switch err := r.api.deleteDispatch(ctx, f.Room, failed.Id); {
	case errors.Is(err, errGone):
		return d.refuse(AlreadyHandled, "the dispatch was deleted meanwhile: claimed by another process, or the job was terminated"), nil
	case err != nil:
		return d, fmt.Errorf("guard: claim dispatch %s: %w", failed.Id, err)
	}
	r.noteRestart(k, r.now())
	// Claimed: finish even if the caller gives up now (a stopping worker
	// cancels its restarts), or the room is left without its agent.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimedTimeout)
	defer cancel()

	identity := f.Identity
	if identity == "" {
		identity = job.GetState().GetParticipantIdentity()
	}
	if identity != "" {
		if err := r.api.removeParticipant(ctx, f.Room, identity); err != nil {
			// Not fatal: a lingering dead agent times out on its own.
			r.log.Warn("could not remove the failed agent from the room", slog.String("room", f.Room),
				slog.String("identity", identity), slog.Any("error", err))
		}
	}

	attrs := maps.Clone(failed.Attributes)
	if attrs == nil {
		attrs = map[string]string{}
	}
	attrs[AttrRestarts] = strconv.Itoa(chain + 1)
	attrs[AttrRestartWindow] = strconv.FormatInt(windowStart.UnixMilli(), 10)
	nd, err := r.create(ctx, &livekit.CreateAgentDispatchRequest{
		AgentName:     failed.AgentName,
		Room:          f.Room,
		Metadata:      failed.Metadata,
		RestartPolicy: failed.RestartPolicy,
		Deployment:    failed.Deployment,
		Attributes:    attrs,
		ThreadId:      failed.ThreadId,
	})
	if err != nil {
		return d, fmt.Errorf("guard: dispatch %s was claimed but its replacement could not be created: %w", failed.Id, err)
	}
	d.Outcome, d.NewDispatch, d.Attempt = Restarted, nd.Id, done+1
	d.Detail = fmt.Sprintf("the agent failed with %s; dispatch %s replaces %s", f.Reason, nd.Id, failed.Id)
	return d, nil
}

// claimedTimeout bounds what follows a claim: removing the dead agent and
// creating the replacement dispatch.
const claimedTimeout = 30 * time.Second

// create creates the replacement dispatch, trying again a few times: the
// claim is made, so giving up leaves the room without its agent.
func (r *Restarter) create(ctx context.Context, req *livekit.CreateAgentDispatchRequest) (*livekit.AgentDispatch, error) {
	const attempts = 3
	var err error
	for i := range attempts {
		var nd *livekit.AgentDispatch
		if nd, err = r.api.createDispatch(ctx, req); err == nil {
			return nd, nil
		}
		if i == attempts-1 {
			break
		}
		t := time.NewTimer(time.Duration(i+1) * 500 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(err, context.Cause(ctx))
		}
	}
	return nil, err
}

func (d Decision) refuse(o Outcome, format string, args ...any) Decision {
	d.Outcome, d.Detail = o, fmt.Sprintf(format, args...)
	return d
}

// localCount returns how many restarts of k this process made within the
// window, and when the last was; it forgets older ones, of every key.
func (r *Restarter) localCount(k key, now time.Time) (int, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for kk, ts := range r.recent {
		i := 0
		for i < len(ts) && now.Sub(ts[i]) >= r.o.Window {
			i++
		}
		if i == len(ts) {
			delete(r.recent, kk)
		} else {
			r.recent[kk] = ts[i:]
		}
	}
	ts := r.recent[k]
	if len(ts) == 0 {
		return 0, time.Time{}
	}
	return len(ts), ts[len(ts)-1]
}

// noteRestart records a restart of k at t.
func (r *Restarter) noteRestart(k key, t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recent[k] = append(r.recent[k], t)
}
