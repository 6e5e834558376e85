package guard

// The implementation lives in internal/restart, shared with the worker; this
// file gives its public names to the users of package guard.

import (
	"github.com/lkagent/lkagent/internal/restart"
)

// Defaults of [HeldOptions].
const (
	// DefaultHeldAfter: a dispatch with no job this long after its
	// creation is held (dropped by the server). Longer than a worker's
	// (10s): the guard cannot tell a dispatch the server dropped from one
	// still in its queue of job requests, which a burst of CreateDispatch
	// into new rooms backs up for tens of seconds.
	DefaultHeldAfter = restart.DefaultHeldAfter
	// DefaultHeldInterval is how often a [Held] sweeps.
	DefaultHeldInterval = restart.DefaultHeldInterval
)

// HeldOptions configure a [Held].
type HeldOptions = restart.HeldOptions

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
type Held = restart.Held

// HeldResult is what one sweep found and did.
type HeldResult = restart.HeldResult

// Environment variables read for options left empty.
const (
	EnvURL       = restart.EnvURL
	EnvAPIKey    = restart.EnvAPIKey
	EnvAPISecret = restart.EnvAPISecret
)

// Defaults of [Options]. Every zero field takes the default named here.
const (
	// DefaultMaxRestarts restarts of one (room, agent, deployment) are
	// allowed per DefaultWindow; the next failure is refused.
	DefaultMaxRestarts = restart.DefaultMaxRestarts
	DefaultWindow      = restart.DefaultWindow
	// DefaultBackoff is the least time between the first and the second
	// restart of one key; it doubles for every further restart, up to
	// DefaultMaxBackoff. The first restart is not delayed.
	DefaultBackoff    = restart.DefaultBackoff
	DefaultMaxBackoff = restart.DefaultMaxBackoff
	// DefaultAPITimeout bounds each call to the server's API.
	DefaultAPITimeout = restart.DefaultAPITimeout
)

// Options configure a [Restarter]. Only the connection settings are needed,
// and they may come from the environment.
type Options = restart.Options

// OptionError reports an invalid option: which one, the rule, and the value
// (never a secret's value; quoted, with invisible characters escaped). It is
// the same type as worker.OptionError.
type OptionError = restart.OptionError

// ErrUnauthorized: the server rejected the API key or secret.
var ErrUnauthorized = restart.ErrUnauthorized

// Failure describes an agent that left its room: what a worker knows of one
// of its jobs that failed, or what a webhook says of a departed agent.
type Failure = restart.Failure

// UnknownDeployment is the deployment label of refusals decided before the
// failed agent's dispatch was found, for failures reported by webhooks,
// which do not carry it (a normal end, a room gone, a dispatch gone).
const UnknownDeployment = restart.UnknownDeployment

// Decision is what [Restarter.Restart] decided.
type Decision = restart.Decision

// Restarter restarts failed agents: for a failure it decides by the rules
// of the package documentation, and either replaces the failed agent's
// dispatch with a new one or refuses, logging and counting either way. It
// is safe for concurrent use, and several Restarters (in one process or
// many) may be given the same failure: one of them restarts it.
type Restarter = restart.Restarter

// Outcome is what a [Restarter] decided about one failure: [Restarted], or
// why it refused. The refusal outcomes are the values of the "reason"
// label of lkagent_restart_refusals_total.
type Outcome = restart.Outcome

const (
	// Restarted: the failed agent's dispatch was replaced by a new one for
	// the same agent name, deployment and metadata.
	Restarted Outcome = restart.Restarted
	// NotAFailure: the agent left normally (CLIENT_INITIATED) or for a
	// reason that is not the agent's failure (removed, room deleted or
	// closed, replaced by a duplicate identity, migrated, server shutdown).
	// See [IsFailure].
	NotAFailure Outcome = restart.NotAFailure
	// PolicyNever: the dispatch's restart policy is JRP_NEVER.
	PolicyNever Outcome = restart.PolicyNever
	// RoomGone: the room no longer exists.
	RoomGone Outcome = restart.RoomGone
	// RoomEmpty: nobody but agents (and recorders) is left in the room.
	RoomEmpty Outcome = restart.RoomEmpty
	// AlreadyHandled: the failed agent's dispatch no longer exists. Either
	// another restarter (a worker, another guard, or this one for a
	// redelivered webhook) claimed it first, or it was deleted, which is
	// how the server terminates a job: both mean "not ours to restart".
	AlreadyHandled Outcome = restart.AlreadyHandled
	// CapReached: the key was restarted MaxRestarts times in the window.
	CapReached Outcome = restart.CapReached
	// UnsupportedJob: the job is not a room job (JT_PUBLISHER and
	// JT_PARTICIPANT dispatches hold one job per participant, and replacing
	// the dispatch would end the others).
	UnsupportedJob Outcome = restart.UnsupportedJob
)

// Dispatch attributes by which a restart chain carries its count, so that
// every process that restarts the agent (workers, guards) sees the same
// count. They are visible to the agent in its job's attributes.
const (
	// AttrRestarts is the number of restarts in the current window that
	// led to this dispatch.
	// The job reads it with job.Job.Restarts.
	AttrRestarts = restart.AttrRestarts
	// AttrRestartWindow is when the current window began (the first
	// restart in it), in Unix milliseconds.
	AttrRestartWindow = restart.AttrRestartWindow
)

// WebhookPath is the path the [Webhook] handler serves.
const WebhookPath = restart.WebhookPath

// Defaults of [WebhookOptions].
const (
	DefaultMaxInFlight       = restart.DefaultMaxInFlight
	DefaultRestartTimeout    = restart.DefaultRestartTimeout
	DefaultMaxBodyBytes      = restart.DefaultMaxBodyBytes
	DefaultRejectLogInterval = restart.DefaultRejectLogInterval
)

// WebhookOptions configure a [Webhook].
type WebhookOptions = restart.WebhookOptions

// Webhook is the http.Handler that receives the server's webhooks on
// POST /webhook and hands every agent that left its room with a failure to
// its Restarter. It answers at once (200 accepted or ignored, 401 for a
// missing or bad signature, 503 when full or closing) and restarts in the
// background, at most MaxInFlight at a time; [Webhook.Close] waits for them.
//
// Mount it on a mux of your own with
//
//	mux.Handle(guard.WebhookPath, wh)
type Webhook = restart.Webhook

// New returns a Restarter. Empty connection options are read from
// LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET; an invalid option is
// an *OptionError that says what to fix.
func New(o Options) (*Restarter, error) { return restart.New(o) }

// NewWebhook returns the webhook receiver of r.
func NewWebhook(r *Restarter, o WebhookOptions) *Webhook { return restart.NewWebhook(r, o) }

// NewHeld returns a Held; an invalid option is an *OptionError.
func NewHeld(o HeldOptions) (*Held, error) { return restart.NewHeld(o) }

// IsFailure reports whether an agent that left the room for reason (a
// livekit.DisconnectReason name, such as "CONNECTION_TIMEOUT") failed, and
// so may be restarted; see the package documentation for the table.
// Unknown names are not failures.
func IsFailure(reason string) bool { return restart.IsFailure(reason) }
