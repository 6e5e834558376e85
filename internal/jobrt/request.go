package jobrt

import (
	"errors"
	"maps"
	"sync"

	"github.com/livekit/protocol/livekit"
)

// ErrDecided is returned by [Request.Accept] and [Request.Reject] when the
// request was already decided.
var ErrDecided = errors.New("job request already accepted or rejected")

// AcceptOptions say how the agent joins the room of an accepted job. All
// fields are optional.
type AcceptOptions struct {
	// Identity of the agent participant; default "agent-<job id>".
	Identity string
	// Name is the participant's display name.
	Name string
	// Metadata is the participant's metadata.
	Metadata string
	// Attributes are set on the participant; the server adds lk.agent_name.
	Attributes map[string]string
}

// Request is a job offer from the server, handed to the worker's OnRequest
// function, which must call Accept or Reject. A request neither accepted nor
// rejected when OnRequest returns is declined.
type Request struct {
	info     *livekit.Job
	resuming bool

	mu       sync.Mutex
	decided  bool
	accepted bool
	opts     AcceptOptions
}

// NewRequest wraps an offered job. Runtimes create requests; tests of an
// OnRequest function can create them too.
func NewRequest(info *livekit.Job, resuming bool) *Request {
	if info == nil {
		info = &livekit.Job{}
	}
	return &Request{info: info, resuming: resuming}
}

// Job is the offered job as the server sent it. Treat it as read-only.
func (r *Request) Job() *livekit.Job { return r.info }

// ID is the offered job's id.
func (r *Request) ID() string { return r.info.GetId() }

// AgentName is the agent name the job was dispatched to.
func (r *Request) AgentName() string { return r.info.GetAgentName() }

// Deployment is the deployment the job was dispatched to; "" is production.
func (r *Request) Deployment() string { return r.info.GetDeployment() }

// RoomName is the name of the job's room.
func (r *Request) RoomName() string { return r.info.GetRoom().GetName() }

// Metadata is the dispatch's metadata.
func (r *Request) Metadata() string { return r.info.GetMetadata() }

// Resuming reports whether the job was running on another worker before.
func (r *Request) Resuming() bool { return r.resuming }

// Accept takes the job, joining its room as o describes.
func (r *Request) Accept(o AcceptOptions) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.decided {
		return ErrDecided
	}
	if o.Identity == "" {
		o.Identity = DefaultIdentity(r.info.GetId())
	}
	o.Attributes = maps.Clone(o.Attributes)
	r.decided, r.accepted, r.opts = true, true, o
	return nil
}

// Reject declines the job; the server offers it to another worker.
func (r *Request) Reject() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.decided {
		return ErrDecided
	}
	r.decided = true
	return nil
}

// Decision reports whether the request was decided, whether it was
// accepted, and with which options.
func (r *Request) Decision() (decided, accepted bool, o AcceptOptions) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.decided, r.accepted, r.opts
}

// DefaultIdentity is the identity a job is accepted with when none is given.
func DefaultIdentity(jobID string) string { return "agent-" + jobID }
