package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/internal/held"
)

// Defaults of [HeldOptions].
const (
	// DefaultHeldAfter: a dispatch of the worker's agent name and
	// deployment with no job this long after its creation is held.
	DefaultHeldAfter = held.DefaultHeldAfter
	// DefaultHeldInterval is about how often a fleet of workers of one
	// agent name and deployment looks for held dispatches, between them.
	DefaultHeldInterval = 30 * time.Second
)

// heldMinGap is the least time between two sweeps of a fleet (of one
// worker, for the sweeps it asks for on registering or when a slot frees).
const heldMinGap = 5 * time.Second

// heldSettle is how long after a registration the first sweep waits: the
// server's cache of agent names learns of the worker a moment after it
// answered the registration, and a dispatch re-created before that is
// dropped again.
const heldSettle = time.Second

// heldBusyFactor: a dispatch created while the worker was available (and
// has been since) is taken as held only heldBusyFactor × After after its
// creation. The server offered it, or still has it in its queue of job
// requests, which a burst of CreateDispatch into new rooms backs up for
// tens of seconds (each new room's automatic agent request waits out its
// timeout there): taking such a dispatch for dropped would claim it while
// the server is about to offer it. A dispatch created before the worker
// was last unavailable (not registered, full, draining) is held After its
// creation.
const heldBusyFactor = 6

// heldAPITimeout bounds each call a sweep makes to the server.
const heldAPITimeout = 10 * time.Second

// HeldOptions configure how the worker serves held dispatches: dispatches
// of its agent name and deployment that the server dropped because no
// worker took their job (none was registered, or all were full). The
// server never offers such a job again; the worker finds them, claims each
// by deleting it (exactly one claimant wins, across any number of workers
// and nodes) and re-creates it with the same room, metadata, attributes
// and restart policy, so that it is offered to the workers registered now.
// It looks when it registers, when a slot frees, when a dispatch it saw
// becomes old enough, and every Interval; a fleet shares its sweeps through
// a lease (see docs/dispatch.md), so the cost on the server does not grow
// with the number of workers. Only room jobs (JobType JT_ROOM) are served.
type HeldOptions struct {
	// Disabled turns held dispatches off.
	Disabled bool
	// After is how long after its creation a dispatch with no job is
	// taken as dropped, when it was created before the worker was last
	// unable to take it (not registered yet, or in the seconds after a
	// registration while the server starts routing to it, or full).
	// Default 10s. One created while the worker could take it is given
	// 6 × After (60s): the server may still hold it in its queue of job
	// requests, which a burst of CreateDispatch into new rooms backs up
	// for tens of seconds.
	After time.Duration
	// Interval is about how often a fleet of workers of this agent name
	// and deployment looks, between them. Default 30s.
	Interval time.Duration
}

func (o HeldOptions) withDefaults() HeldOptions {
	if o.After == 0 {
		o.After = DefaultHeldAfter
	}
	if o.Interval == 0 {
		o.Interval = DefaultHeldInterval
	}
	return o
}

func (o HeldOptions) validate() error {
	if o.After < 0 {
		return &OptionError{Option: "Held.After", Value: o.After.String(), Rule: "must not be negative (0 = the default, 10s)"}
	}
	if o.Interval < 0 {
		return &OptionError{Option: "Held.Interval", Value: o.Interval.String(), Rule: "must not be negative (0 = the default, 30s)"}
	}
	return nil
}

// heldState is the worker's sweeper of held dispatches.
type heldState struct {
	sweeper   *held.Sweeper
	lease     *held.Lease
	recovered *prometheus.CounterVec
	total     atomic.Int64
	// suspect: the last sweep found dispatches with no job: a slot freed
	// is worth a look before the periodic sweep.
	suspect atomic.Bool
	// unavailable is when the worker was last seen unable to take an
	// offer (unix ns): before its registration, full, or draining.
	unavailable atomic.Int64
	// kick asks the loop for a sweep: true after a registration.
	kick chan bool
}

// newHeld returns the worker's sweeper, or nil when held dispatches are
// off for it.
func (w *Worker) newHeld() (*heldState, error) {
	if w.o.Held.Disabled || w.o.JobType != livekit.JobType_JT_ROOM {
		return nil, nil
	}
	api := held.NewServer(w.o.URL, w.o.APIKey, w.o.APISecret, heldAPITimeout)
	key := held.Key{AgentName: w.o.AgentName, Deployment: w.o.Deployment}
	recovered := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "lkagent", Name: "dispatches_recovered_total",
		Help: "Held dispatches (dropped by the server: no worker took their job) served by re-creating them."},
		[]string{"agent_name", "deployment"})
	if err := (tee{w.registry, w.o.Registerer}).Register(recovered); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, fmt.Errorf("worker: register metrics: %w", err)
		}
		c, ok := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, fmt.Errorf("worker: register metrics: %w", err)
		}
		recovered = c // another worker's, in the same Registerer
	}
	h := &heldState{
		lease:     held.NewLease(api, key, holderID(), nil),
		recovered: recovered,
		kick:      make(chan bool, 1),
	}
	after := w.o.Held.After
	h.sweeper = held.New(held.Config{
		API: api, HeldAfter: after, Log: w.o.Logger, // it names the agent and deployment itself
		Mine:         func(k held.Key) bool { return k == key },
		HeldAfterFor: func(created time.Time) time.Duration { return h.heldAfterFor(after, created) },
	})
	return h, nil
}

// heldRoutingSettle is how long after a registration the server may still
// drop a dispatch of this agent name and deployment while it refreshes its
// cache of agent names (about 5 s measured on v1.13.5): one created then
// was made while the worker could not take it yet.
const heldRoutingSettle = 6 * time.Second

// unavailableUntil records that the worker could not take a job until t
// (a later record is never moved back).
func (h *heldState) unavailableUntil(t time.Time) {
	n := t.UnixNano()
	for {
		cur := h.unavailable.Load()
		if n <= cur || h.unavailable.CompareAndSwap(cur, n) {
			return
		}
	}
}

// heldAfterFor is how old a dispatch created at created must be to be
// taken as held (see heldBusyFactor).
func (h *heldState) heldAfterFor(after time.Duration, created time.Time) time.Duration {
	if created.UnixNano() <= h.unavailable.Load() {
		return after
	}
	return heldBusyFactor * after
}

// holderID names this process in sweep leases.
func holderID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// kickHeld asks for a sweep: after a registration (registered) or when a
// slot freed. A freed slot asks only if the worker was full before it (it
// may have declined offers, whose dispatches the server then dropped) or
// the last sweep saw dispatches with no job: in a steady state the fleet
// makes only its periodic sweeps. It never blocks.
func (w *Worker) kickHeld(registered bool) {
	if w.heldSweep == nil {
		return
	}
	if !registered {
		w.mu.Lock()
		wasFull := w.o.MaxJobs > 0 && w.table.held()+1 >= w.o.MaxJobs+w.o.queueCap()
		w.mu.Unlock()
		if wasFull {
			w.heldSweep.unavailableUntil(time.Now()) // full until now
		} else if !w.heldSweep.suspect.Load() {
			return
		}
	}
	if registered {
		// Unregistered until now, and not yet routed to for a moment: the
		// server drops a dispatch made while it refreshes its cache of
		// agent names after a registration (seconds).
		w.heldSweep.unavailableUntil(time.Now().Add(heldRoutingSettle))
		// A registration replaces a pending slot kick: it matters more.
		select {
		case <-w.heldSweep.kick:
		default:
		}
	}
	select {
	case w.heldSweep.kick <- registered:
	default:
	}
}

// HeldRecovered is how many held dispatches this worker served.
func (w *Worker) HeldRecovered() int64 {
	if w.heldSweep == nil {
		return 0
	}
	return w.heldSweep.total.Load()
}

// runHeld sweeps until ctx ends: on kicks, when a dispatch it saw becomes
// old enough to be held, and every Interval (jittered). It is owned by a
// run of the worker and returns when ctx ends.
func (w *Worker) runHeld(ctx context.Context) {
	h := w.heldSweep
	if h == nil {
		return
	}
	jitter := func(d time.Duration) time.Duration {
		return d/2 + time.Duration(mrand.Int64N(int64(d)+1)) // [d/2, 3d/2]
	}
	periodic := time.NewTimer(jitter(w.o.Held.Interval))
	defer periodic.Stop()
	follow := time.NewTimer(time.Hour)
	follow.Stop()
	defer follow.Stop()
	var last time.Time // this worker's last sweep
	for {
		gap := heldMinGap
		select {
		case <-ctx.Done():
			return
		case registered := <-h.kick:
			if registered {
				t := time.NewTimer(heldSettle)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return
				}
			} else if time.Since(last) < heldMinGap {
				// A slot freed just after a sweep: the follow-up or the
				// periodic sweep comes soon enough.
				follow.Reset(heldMinGap - time.Since(last))
				continue
			}
		case <-follow.C:
		case <-periodic.C:
			periodic.Reset(jitter(w.o.Held.Interval))
			gap = w.o.Held.Interval
		}
		limit, ok := w.heldCapacity()
		if !ok {
			h.unavailableUntil(time.Now())
			continue
		}
		acquired, _, err := h.lease.Acquire(ctx, gap)
		if err != nil {
			w.log.Debug("held dispatches: could not read the sweep lease; sweeping anyway", slog.Any("error", err))
		} else if !acquired {
			continue // another worker of the fleet swept recently
		}
		last = time.Now()
		res, err := h.sweeper.Sweep(ctx, limit)
		if err != nil && ctx.Err() == nil {
			w.log.Warn("held dispatches: sweep failed", slog.Any("error", err))
		}
		for _, r := range res.Recovered {
			h.recovered.WithLabelValues(r.AgentName, deploy.Label(r.Deployment)).Inc()
			h.total.Add(1)
			w.recovered(r.Room, r.New, r.Held)
		}
		h.suspect.Store(len(res.Held) > 0 || !res.NextHeld.IsZero())
		if !res.NextHeld.IsZero() {
			// Look again when the oldest dispatch still pending could be
			// held, if that is before the periodic sweep.
			d := max(time.Until(res.NextHeld)+250*time.Millisecond, heldMinGap)
			follow.Reset(d)
		}
	}
}

// heldCapacity says how many held dispatches the worker could take now
// (-1: no cap), and false if none (full, draining, or not registered).
func (w *Worker) heldCapacity() (int, bool) {
	userLoad, hasUserLoad := w.userLoad()
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.connected || w.draining {
		return 0, false
	}
	if _, full := w.loadLocked(userLoad, hasUserLoad); full {
		return 0, false
	}
	if w.o.MaxJobs == 0 {
		return -1, true
	}
	free := w.o.MaxJobs + w.o.queueCap() - w.table.held()
	return free, free > 0
}
