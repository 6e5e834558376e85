package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/lkagent/lkagent/internal/config"
	"github.com/lkagent/lkagent/internal/cpuload"
	"github.com/lkagent/lkagent/internal/deploy"
	"github.com/lkagent/lkagent/internal/lkurl"
	"github.com/lkagent/lkagent/job"
)

// Environment variables read for options left empty.
const (
	EnvURL        = config.EnvURL
	EnvAPIKey     = config.EnvAPIKey
	EnvAPISecret  = config.EnvAPISecret
	EnvDeployment = "LIVEKIT_AGENT_DEPLOYMENT"
)

// ErrDeploymentNamedLikeProduction is what an [OptionError] for a
// Deployment named like production ("production", "prod", "default", …)
// wraps: production is the empty deployment.
var ErrDeploymentNamedLikeProduction = deploy.ErrNamedLikeProduction

// ProductionLabel names production (the empty deployment) in metric labels
// and on the /worker page. The LiveKit server refuses '_' in deployments,
// so no real deployment is named so.
const ProductionLabel = deploy.ProductionLabel

// Defaults of [Options]. Every zero field takes the default named here.
const (
	DefaultOnRequestTimeout  = 2 * time.Second
	DefaultRegisterTimeout   = 10 * time.Second
	DefaultPingInterval      = 10 * time.Second
	DefaultPongTimeout       = 10 * time.Second
	DefaultLoadThreshold     = 0.7
	DefaultStatusInterval    = 2500 * time.Millisecond
	DefaultAssignmentTimeout = 7500 * time.Millisecond
	DefaultDrainTimeout      = 30 * time.Minute
	DefaultShutdownTimeout   = 10 * time.Second
	DefaultMinBackoff        = 500 * time.Millisecond
	DefaultMaxBackoff        = 30 * time.Second
	DefaultQueueTimeout      = 30 * time.Second
	DefaultServerTargetLoad  = 0.7
)

// RequestFunc decides a job offer: it calls r.Accept or r.Reject. An error,
// a panic, or returning after the OnRequestTimeout declines the offer.
type RequestFunc func(ctx context.Context, r *job.Request) error

// Options configure a [Worker]. Only AgentName (and the connection settings,
// which may come from the environment) are usually set; every other field
// has a default suited to production.
type Options struct {
	// URL of the LiveKit server: ws, wss, http or https. Default $LIVEKIT_URL.
	URL string
	// APIKey and APISecret sign the worker's token. Default
	// $LIVEKIT_API_KEY and $LIVEKIT_API_SECRET. The secret is never logged.
	APIKey    string
	APISecret string

	// AgentName is the name dispatches address. Required, unless
	// AutomaticDispatch is set.
	AgentName string
	// AutomaticDispatch opts in to serving LiveKit's automatic dispatch:
	// with AgentName "", the server dispatches the worker to every new
	// room of the project, whoever the room is for. A worker without an
	// agent name would otherwise join rooms meant for other agents.
	AutomaticDispatch bool
	// Deployment is the label this worker registers with ("staging",
	// "canary", …; "" is production). Default $LIVEKIT_AGENT_DEPLOYMENT.
	// At most 64 bytes, no '_', no whitespace, control or invisible
	// characters. A name meaning production ("production", "prod",
	// "default", …) is refused: production is "", and a worker registered
	// under such a name would never get production's jobs. Letters
	// outside ASCII (a Cyrillic 'а' that looks Latin) are logged as a
	// warning.
	Deployment string
	// JobType is the kind of job served: JT_ROOM (default), JT_PUBLISHER or
	// JT_PARTICIPANT.
	JobType livekit.JobType
	// Version is reported to the server; default "lkagent/<version>".
	Version string
	// Permissions of the agent participant; nil = the server's default
	// (subscribe, publish, publish data, update metadata).
	Permissions *livekit.ParticipantPermission

	// OnRequest decides each offer; nil accepts every offer of this
	// worker's agent and deployment with identity "agent-<job id>".
	OnRequest RequestFunc
	// OnRequestTimeout bounds OnRequest; default 2s. LiveKit's server
	// gives a whole job request 3 seconds (its RPC timeout), retries on
	// other workers included: an offer answered later is lost, and a late
	// acceptance would hold a slot for nothing. Past it the offer is
	// declined, in time for the server to try another worker.
	OnRequestTimeout time.Duration

	// MaxJobs caps the jobs running at once; 0 = no cap. The worker
	// reports its load so that LiveKit's server keeps offering jobs until
	// the worker is really full (see ServerTargetLoad).
	MaxJobs int
	// MaxQueued: accepted jobs beyond MaxJobs wait in a FIFO queue, up to
	// this many, and start as slots free; the worker declines offers only
	// when the queue is full too. Default MaxJobs (a burst as large as the
	// worker's capacity waits instead of being lost); -1 = no queue.
	// Without MaxJobs there is no queue.
	MaxQueued int
	// QueueTimeout: a queued job that could not start within it is
	// reported failed ("queue timeout") and counted. Default 30s.
	QueueTimeout time.Duration
	// ServerTargetLoad is the LiveKit server's agents.target_load (its
	// default is 0.7): the server offers jobs to a node only while its
	// available workers report loads below it. The worker maps its own
	// fullness onto [0, ServerTargetLoad), reaching it only when full, so
	// that MaxJobs means what it says. Set it if the server's is not
	// the default.
	ServerTargetLoad float64
	// LoadFunc, if set, reports the worker's load in [0, 1] by a measure of
	// its own (CPU, say: see [CPULoad]); values outside are clamped. It is
	// sampled on a goroutine of its own every 500ms and after each job
	// starts or ends. The worker is full when LoadFunc reaches
	// LoadThreshold, or when its slots and queue are: the reported load is
	// the larger of the two measures.
	LoadFunc func() float64
	// LoadThreshold: LoadFunc at or above it makes the worker full.
	// Default 0.7, range (0, 1].
	LoadThreshold float64
	// StatusInterval is how often load is reported besides on every change;
	// default 2.5s.
	StatusInterval time.Duration
	// AssignmentTimeout releases the slot of an accepted offer whose
	// assignment never came; default 7.5s.
	AssignmentTimeout time.Duration

	// RegisterTimeout bounds dial plus registration; default 10s.
	RegisterTimeout time.Duration
	// PingInterval is how often the worker pings the server; default 10s.
	PingInterval time.Duration
	// PongTimeout: a connection with no pong for PingInterval+PongTimeout
	// is dead; default 10s.
	PongTimeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay (exponential,
	// full jitter); defaults 500ms and 30s.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// MaxRetry is how many reconnect attempts in a row may fail before Run
	// gives up; 0 = keep trying.
	MaxRetry int

	// DrainTimeout is how long a stopping worker waits for running jobs
	// before cancelling them; default 30m. ShutdownTimeout is how long it
	// then waits for cancelled handlers and shutdown hooks; default 10s.
	// With Kubernetes, set terminationGracePeriodSeconds above their sum.
	DrainTimeout    time.Duration
	ShutdownTimeout time.Duration

	// Restart: when a job fails in a way the worker sees (its handler
	// panicked, its job process died or passed MemoryLimit, or could not
	// start) and its dispatch's restart policy is JRP_ON_FAILURE (the
	// default), the worker dispatches the same agent, deployment and
	// metadata to the room again, if someone other than agents is still
	// there: bounded per room, agent and deployment, and restarted once
	// even if a webhook receiver sees the failure too (see package guard).
	Restart RestartOptions
	// Webhook serves POST /webhook with the HTTP endpoints: LiveKit's
	// webhooks (configure the server's webhook URLs to reach it, signed
	// with this worker's API key), to restart agents whose whole worker
	// died, as `lkagent guard` does. Off by default.
	Webhook bool

	// Prewarm, if set, runs once per process before it takes jobs, and
	// its value reaches every job's context: see [Prewarm] and
	// [NewPrewarm]. Default none.
	Prewarm Prewarmer

	// Executor decides where jobs run: InProcess() (default) runs each on
	// a goroutine of the worker's process; Processes(...) runs each in a
	// process of its own, so that a job that crashes ends only itself.
	Executor Executor

	// Logger receives the worker's logs; default slog.Default(). It also
	// gets the LiveKit SDK's lines and pion's (their Info as Debug): a
	// job's room logs through its job's logger, and New points the SDK's
	// process-wide logger (which pion uses, and which writes to stderr by
	// default) at this logger, unless KeepSDKLogger is set or the program
	// called lksdk.SetLogger itself (then the program's logger stays).
	Logger *slog.Logger
	// KeepSDKLogger leaves the SDK's process-wide logger writing where it
	// did. With several workers in one process, pion's lines otherwise go
	// to the logger of the worker created last. A program that wants a
	// logger of its own for them calls lksdk.SetLogger at the start of
	// main: the SDK's setting is not safe to change while anything uses
	// the SDK, so the worker never writes it after the program started.
	KeepSDKLogger bool
	// OnStateChange, if set, is called (from the worker's own goroutine,
	// keep it quick) on every connection state change.
	OnStateChange func(StateChange)

	// TracerProvider makes the span of each job (see docs/tracing.md);
	// default OpenTelemetry's global provider (otel.GetTracerProvider;
	// set it before Run, or at least before the first job). The handler's
	// context carries the job's span.
	// In a job process (Processes), the job continues the worker's trace,
	// and the provider (this one, or the global one that the program set
	// in the job process too, before Run) is flushed before the process
	// exits if it has a ForceFlush method, as the SDK's does.
	TracerProvider trace.TracerProvider

	// Registerer receives the worker's Prometheus collectors; nil = a
	// registry of the worker's own (see [Worker.Gatherer]). The worker never
	// registers into the global registry on its own.
	Registerer prometheus.Registerer
	// HTTPAddr, if set, serves /metrics, /healthz, /readyz, / and /worker
	// there (for example ":8081"). Expose it only inside the cluster.
	HTTPAddr string

	// Held: dispatches of this agent name and deployment that the server
	// dropped (no worker took their job: none was registered, or all were
	// full) are served once this worker can take them, exactly once
	// across all workers. On by default; see HeldOptions.
	Held HeldOptions
}

// OptionError reports an invalid option: which one, the rule, and the value
// (never a secret's value; quoted, with invisible characters escaped). Env
// is the environment variable the value was read from, when the option was
// left empty; Err is the broken rule as an error, when there is one to test
// for (errors.Is(err, deploy.ErrNamedLikeProduction)), and Unwrap returns
// it. It is the same type as guard.OptionError.
type OptionError = config.OptionError

// withDefaults fills zero fields from getenv and the defaults, and validates
// the result.
func (o Options) withDefaults(getenv func(string) string) (Options, error) {
	config.FromEnv(&o.URL, &o.APIKey, &o.APISecret, getenv)
	deploymentEnv := ""
	if o.Deployment == "" {
		o.Deployment = getenv(EnvDeployment)
		if o.Deployment != "" {
			deploymentEnv = EnvDeployment
		}
	}
	if o.Version == "" {
		o.Version = "lkagent/" + Version
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&o.OnRequestTimeout, DefaultOnRequestTimeout)
	setDur(&o.RegisterTimeout, DefaultRegisterTimeout)
	setDur(&o.PingInterval, DefaultPingInterval)
	setDur(&o.PongTimeout, DefaultPongTimeout)
	setDur(&o.StatusInterval, DefaultStatusInterval)
	setDur(&o.AssignmentTimeout, DefaultAssignmentTimeout)
	setDur(&o.DrainTimeout, DefaultDrainTimeout)
	setDur(&o.ShutdownTimeout, DefaultShutdownTimeout)
	setDur(&o.MinBackoff, DefaultMinBackoff)
	setDur(&o.MaxBackoff, DefaultMaxBackoff)
	setDur(&o.QueueTimeout, DefaultQueueTimeout)
	if o.LoadThreshold == 0 {
		o.LoadThreshold = DefaultLoadThreshold
	}
	if o.ServerTargetLoad == 0 {
		o.ServerTargetLoad = DefaultServerTargetLoad
	}
	if o.MaxJobs > 0 && o.MaxQueued == 0 {
		o.MaxQueued = o.MaxJobs
	}
	o.Held = o.Held.withDefaults()
	if err := o.validate(); err != nil {
		var oe *OptionError
		if errors.As(err, &oe) && oe.Option == "Deployment" {
			oe.Env = deploymentEnv
		}
		return o, err
	}
	if warning := deploymentWarning(o.Deployment); warning != "" {
		source := "option Deployment"
		if deploymentEnv != "" {
			source = deploymentEnv
		}
		o.Logger.Warn("deployment "+warning, slog.String("source", source), slog.String("deployment", deploy.Quote(o.Deployment)))
	}
	return o, nil
}

// deploymentWarning is what is worth a warning about a valid deployment
// label, or "".
func deploymentWarning(d string) string {
	w, _ := deploy.CheckDeployment(d)
	return w
}

func (o *Options) validate() error {
	if err := config.CheckConn(o.URL, o.APIKey, o.APISecret); err != nil {
		return err
	}
	if err := validDeployment(o.Deployment); err != nil {
		return &OptionError{Option: "Deployment", Value: o.Deployment, Rule: err.Error(), Err: err}
	}
	switch {
	case o.AgentName == "" && !o.AutomaticDispatch:
		return &OptionError{Option: "AgentName", Rule: "required: the name dispatches address (to serve the automatic dispatch to every new room instead, set AutomaticDispatch)"}
	case o.AgentName != "" && o.AutomaticDispatch:
		return &OptionError{Option: "AutomaticDispatch", Value: "true", Rule: "the automatic dispatch is for workers without an agent name: leave AgentName empty or AutomaticDispatch false"}
	}
	if err := validAgentName(o.AgentName); err != nil {
		return &OptionError{Option: "AgentName", Value: o.AgentName, Rule: err.Error()}
	}
	if !livekit.IsJobType(o.JobType) {
		return &OptionError{Option: "JobType", Value: o.JobType.String(), Rule: "must be JT_ROOM, JT_PUBLISHER or JT_PARTICIPANT"}
	}
	if err := o.Held.validate(); err != nil {
		return err
	}
	if o.MaxJobs < 0 {
		return &OptionError{Option: "MaxJobs", Value: fmt.Sprint(o.MaxJobs), Rule: "must be >= 0 (0 = no cap)"}
	}
	if p, ok := o.Executor.(processes); ok {
		for name, v := range map[string]int64{"Idle": int64(p.o.Idle), "MemoryWarn": p.o.MemoryWarn,
			"MemoryLimit": p.o.MemoryLimit, "StartTimeout": int64(p.o.StartTimeout)} {
			if v < 0 {
				return &OptionError{Option: "Executor", Value: fmt.Sprintf("ProcessOptions.%s = %d", name, v), Rule: "must not be negative"}
			}
		}
		if p.o.MemoryWarn > 0 && p.o.MemoryLimit > 0 && p.o.MemoryWarn >= p.o.MemoryLimit {
			return &OptionError{Option: "Executor", Value: fmt.Sprintf("MemoryWarn %d, MemoryLimit %d", p.o.MemoryWarn, p.o.MemoryLimit),
				Rule: "MemoryWarn must be below MemoryLimit"}
		}
	}
	if o.MaxQueued < -1 {
		return &OptionError{Option: "MaxQueued", Value: fmt.Sprint(o.MaxQueued), Rule: "must be >= -1 (0 = MaxJobs, -1 = no queue)"}
	}
	if o.ServerTargetLoad <= 0 || o.ServerTargetLoad > 1 {
		return &OptionError{Option: "ServerTargetLoad", Value: fmt.Sprint(o.ServerTargetLoad), Rule: "must be in (0, 1] (the server's agents.target_load; its default is 0.7)"}
	}
	if o.LoadThreshold <= 0 || o.LoadThreshold > 1 {
		return &OptionError{Option: "LoadThreshold", Value: fmt.Sprint(o.LoadThreshold), Rule: "must be in (0, 1]"}
	}
	if o.MaxRetry < 0 {
		return &OptionError{Option: "MaxRetry", Value: fmt.Sprint(o.MaxRetry), Rule: "must be >= 0 (0 = keep trying)"}
	}
	if o.MinBackoff > o.MaxBackoff {
		return &OptionError{Option: "MinBackoff", Value: o.MinBackoff.String(), Rule: "must not exceed MaxBackoff (" + o.MaxBackoff.String() + ")"}
	}
	for name, d := range map[string]time.Duration{
		"OnRequestTimeout": o.OnRequestTimeout, "RegisterTimeout": o.RegisterTimeout,
		"PingInterval": o.PingInterval, "PongTimeout": o.PongTimeout, "StatusInterval": o.StatusInterval,
		"AssignmentTimeout": o.AssignmentTimeout, "DrainTimeout": o.DrainTimeout,
		"ShutdownTimeout": o.ShutdownTimeout, "MinBackoff": o.MinBackoff, "MaxBackoff": o.MaxBackoff,
		"QueueTimeout": o.QueueTimeout,
	} {
		if d < 0 {
			return &OptionError{Option: name, Value: d.String(), Rule: "must not be negative"}
		}
	}
	return nil
}

// agentURL is the worker endpoint for base: http(s) becomes ws(s), path /agent.
func agentURL(base string) string {
	u, _ := url.Parse(lkurl.WS(base))
	u.Path = strings.TrimSuffix(u.Path, "/") + "/agent"
	return u.String()
}

func osGetenv(k string) string { return os.Getenv(k) }

// CPULoad returns a LoadFunc that reports the CPU this process used, as a
// fraction of the CPU it may use (the container's cgroup quota where one is
// set), averaged over at least a second. It suits workers whose jobs are
// CPU-bound and of uneven size, where a job count says little.
func CPULoad() func() float64 {
	return cpuload.New(time.Second).Load
}

// validDeployment checks a deployment label by the rules the worker and the
// CLI share (package internal/deploy): the server's, no invisible
// characters, no name meaning production.
func validDeployment(d string) error {
	_, err := deploy.CheckDeployment(d)
	return err
}

// validAgentName checks an agent name: visible text, no spaces at either
// end. ("" is the automatic agent.)
func validAgentName(n string) error { return deploy.CheckAgentName(n) }

// queueCap is how many jobs may wait for a slot.
func (o *Options) queueCap() int {
	if o.MaxJobs == 0 {
		return 0
	}
	return max(o.MaxQueued, 0)
}
