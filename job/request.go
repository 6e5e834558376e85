package job

import (
	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/jobrt"
)

// ErrDecided is returned by [Request.Accept] and [Request.Reject] when the
// request was already decided.
var ErrDecided = jobrt.ErrDecided

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
type Request jobrt.Request

func (r *Request) rt() *jobrt.Request { return (*jobrt.Request)(r) }

// Job is the offered job as the server sent it. Treat it as read-only.
func (r *Request) Job() *livekit.Job { return r.rt().Job() }

// ID is the offered job's id.
func (r *Request) ID() string { return r.rt().ID() }

// AgentName is the agent name the job was dispatched to.
func (r *Request) AgentName() string { return r.rt().AgentName() }

// Deployment is the deployment the job was dispatched to; "" is production.
func (r *Request) Deployment() string { return r.rt().Deployment() }

// RoomName is the name of the job's room.
func (r *Request) RoomName() string { return r.rt().RoomName() }

// Metadata is the dispatch's metadata.
func (r *Request) Metadata() string { return r.rt().Metadata() }

// Resuming reports whether the job was running on another worker before.
func (r *Request) Resuming() bool { return r.rt().Resuming() }

// Accept takes the job, joining its room as o describes.
func (r *Request) Accept(o AcceptOptions) error { return r.rt().Accept(jobrt.AcceptOptions(o)) }

// Reject declines the job; the server offers it to another worker.
func (r *Request) Reject() error { return r.rt().Reject() }
