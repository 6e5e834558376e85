package restart

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/internal/config"
	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/internal/held"
)

// Defaults of [HeldOptions].
const (
	// DefaultHeldAfter: a dispatch with no job this long after its
	// creation is held (dropped by the server). Longer than a worker's
	// (10s): the guard cannot tell a dispatch the server dropped from one
	// still in its queue of job requests, which a burst of CreateDispatch
	// into new rooms backs up for tens of seconds.
	DefaultHeldAfter = 30 * time.Second
	// DefaultHeldInterval is how often a [Held] sweeps.
	DefaultHeldInterval = 10 * time.Second
)

// HeldOptions configure a [Held].
type HeldOptions struct {
	// URL, APIKey and APISecret: as in [Options]; default from the
	// environment.
	URL       string
	APIKey    string
	APISecret string
	// AgentNames, if set, restricts the sweep to these agent names;
	// default every named agent. Only room jobs can be told served: list
	// the agents here if some of them are publisher or participant agents.
	AgentNames []string
	// Automatic also serves the automatic dispatch (agent name ""), which
	// the server adds to every room created without agents in its
	// configuration. Off by default: without a worker for it, every such
	// room would count as unserved.
	Automatic bool
	// After: see DefaultHeldAfter.
	After time.Duration
	// Interval: see DefaultHeldInterval.
	Interval time.Duration
	// CountOnly only counts unserved dispatches (the gauge), serving none.
	CountOnly bool
	// APITimeout bounds each call to the server. Default 10s.
	APITimeout time.Duration
	// Logger receives a line per dispatch served. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the collectors; nil = a registry of the Held's
	// own (see [Held.Gatherer]).
	Registerer prometheus.Registerer
}

// Held serves held dispatches of agents of any SDK: dispatches the server
// dropped because no worker of their agent name and deployment took their
// job. Every Interval it lists the rooms and their dispatches, re-creates
// each dispatch with no job After its creation (claimed by deleting it:
// exactly once, even with lkagent workers and other guards sweeping too),
// and sets the gauge lkagent_dispatches_unserved{agent_name,deployment},
// the signal to scale a deployment from zero on (see
// deploy/kubernetes/optional/keda-scaledobjects.yaml). A dispatch whose
// agent has no worker yet is dropped again at once and re-created After
// later, until a worker takes it.
type Held struct {
	o         HeldOptions
	sweeper   *held.Sweeper
	unserved  *prometheus.GaugeVec
	recovered *prometheus.CounterVec
	gather    prometheus.Gatherer

	mu    sync.Mutex
	known map[held.Key]bool // label sets of the gauge
}

// HeldResult is what one sweep found and did.
type HeldResult struct {
	// Rooms listed; Unserved dispatches per "agent_name/deployment";
	// Recovered: dispatches re-created.
	Rooms     int
	Unserved  map[string]int
	Recovered int
	// Calls made to the server.
	Calls int
}

// NewHeld returns a Held; an invalid option is an *OptionError.
func NewHeld(o HeldOptions) (*Held, error) {
	ro, err := Options{URL: o.URL, APIKey: o.APIKey, APISecret: o.APISecret, APITimeout: o.APITimeout, Logger: o.Logger}.withDefaults(osGetenv)
	if err != nil {
		return nil, err
	}
	o.URL, o.APIKey, o.APISecret, o.APITimeout, o.Logger = ro.URL, ro.APIKey, ro.APISecret, ro.APITimeout, ro.Logger
	if o.After == 0 {
		o.After = DefaultHeldAfter
	}
	if o.Interval == 0 {
		o.Interval = DefaultHeldInterval
	}
	if o.After < 0 || o.Interval < 0 {
		return nil, config.Attribute(&OptionError{Option: "After/Interval", Value: fmt.Sprint(o.After, "/", o.Interval), Rule: "must not be negative"}, "guard")
	}
	return newHeld(o, held.NewServer(o.URL, o.APIKey, o.APISecret, o.APITimeout))
}

func newHeld(o HeldOptions, api held.API) (*Held, error) {
	reg := o.Registerer
	var gather prometheus.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, gather = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		gather = g
	}
	h := &Held{o: o, gather: gather, known: map[held.Key]bool{},
		unserved: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "dispatches_unserved",
			Help: "Dispatches with no job, per agent name and deployment, at the last sweep: the signal to scale a deployment from zero."},
			[]string{"agent_name", "deployment"}),
		recovered: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "dispatches_recovered_total",
			Help: "Held dispatches (dropped by the server: no worker took their job) served by re-creating them."},
			[]string{"agent_name", "deployment"}),
	}
	for _, c := range []prometheus.Collector{h.unserved, h.recovered} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("guard: register metrics: %w", err)
		}
	}
	h.sweeper = held.New(held.Config{API: api, HeldAfter: o.After, Log: o.Logger, Mine: h.mine})
	return h, nil
}

// mine says whether the Held serves key.
func (h *Held) mine(k held.Key) bool {
	if k.AgentName == "" {
		return h.o.Automatic
	}
	return len(h.o.AgentNames) == 0 || slices.Contains(h.o.AgentNames, k.AgentName)
}

// Gatherer returns the registry of the Held's metrics (see
// [Restarter.Gatherer]).
func (h *Held) Gatherer() prometheus.Gatherer { return h.gather }

// Sweep sweeps once: it serves the held dispatches (unless CountOnly) and
// sets the gauge.
func (h *Held) Sweep(ctx context.Context) (HeldResult, error) {
	limit := -1
	if h.o.CountOnly {
		limit = 0
	}
	res, err := h.sweeper.Sweep(ctx, limit)
	out := HeldResult{Rooms: res.Rooms, Unserved: map[string]int{}, Recovered: len(res.Recovered), Calls: res.Calls}
	for _, r := range res.Recovered {
		h.recovered.WithLabelValues(r.AgentName, deploy.Label(r.Deployment)).Inc()
	}
	if res.Rooms == 0 && err != nil {
		return out, err // the rooms could not be listed: the gauge keeps its values
	}
	h.mu.Lock()
	for k := range res.Unserved {
		h.known[k] = true
	}
	for k := range h.known {
		n := res.Unserved[k]
		h.unserved.WithLabelValues(k.AgentName, deploy.Label(k.Deployment)).Set(float64(n))
		if n > 0 {
			out.Unserved[k.AgentName+"/"+k.Deployment] = n
		}
	}
	h.mu.Unlock()
	return out, err
}

// Run sweeps every Interval until ctx ends, and returns nil then. A sweep
// that fails is logged and the next one tried.
func (h *Held) Run(ctx context.Context) error {
	t := time.NewTicker(h.o.Interval)
	defer t.Stop()
	for {
		if _, err := h.Sweep(ctx); err != nil && ctx.Err() == nil {
			h.o.Logger.Warn("held dispatches: sweep failed", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
