// Package dispatch dispatches LiveKit agents to rooms, for the backends that
// start calls: a [Client] creates a room that does not exist yet with the
// dispatch in its configuration, and adds the dispatch to a room that
// exists.
//
// Why not just the server's CreateDispatch: into a room that does not exist
// yet, it creates the room with the default configuration, which also
// dispatches the automatic agent (agent name ""). When no worker serves that
// agent, each such job request waits out its timeout in the server's pool
// of 50 job requests, ahead of the named agent's: 150 dispatches at once
// into new rooms took p50 7.5 s to reach the agent, against 0.7 s when the
// room is created with its dispatch (LiveKit server v1.13.5).
//
//	c := dispatch.NewClient("wss://lk.example.com", key, secret)
//	d, err := c.Create(ctx, &livekit.CreateAgentDispatchRequest{
//		AgentName: "support-bot", Deployment: "staging", Room: "call-42",
//	})
//
// A dispatch the server could not give to a worker (none of its agent name
// and deployment was registered, or all were full) is dropped by the server
// for good; lkagent workers and lkagent guard serve it later (held
// dispatches): see docs/dispatch.md.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/livekit/protocol/agent"
	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"

	"github.com/lkagent/lkagent/internal/lkurl"
)

// Errors callers branch on; the errors returned wrap them.
var (
	// ErrInvalid: the request is incomplete or names an invalid deployment
	// label. The error says which field and why.
	ErrInvalid = errors.New("dispatch: invalid request")
	// ErrUnauthorized: the server rejected the API key or secret.
	ErrUnauthorized = errors.New("dispatch: the LiveKit server rejected the API key or secret")
	// ErrNotFound: the dispatch (or its room) does not exist.
	ErrNotFound = errors.New("dispatch: not found")
	// ErrGone: while waiting for its job, the dispatch was deleted (and
	// not replaced by a held-dispatch sweep) or its room was closed.
	ErrGone = errors.New("dispatch: the dispatch was deleted or its room closed while waiting for its job")
)

// Defaults of the Client.
const (
	// DefaultAPITimeout bounds each call to the server.
	DefaultAPITimeout = 10 * time.Second
	// DefaultPollInterval is how often [Client.Wait] asks the server.
	DefaultPollInterval = 250 * time.Millisecond
)

// Client dispatches agents through a LiveKit server's room and dispatch
// APIs. It is safe for concurrent use.
type Client struct {
	rooms      *lksdk.RoomServiceClient
	dispatches *lksdk.AgentDispatchClient
	timeout    time.Duration
	poll       time.Duration
}

// NewClient returns a Client of the server at url (ws, wss, http or https)
// with an API key and secret allowed to create rooms and dispatches. The
// secret signs the calls' tokens; it is never logged nor put in an error.
func NewClient(url, apiKey, apiSecret string) *Client {
	u := lkurl.HTTP(url)
	return &Client{
		rooms:      lksdk.NewRoomServiceClient(u, apiKey, apiSecret),
		dispatches: lksdk.NewAgentDispatchServiceClient(u, apiKey, apiSecret),
		timeout:    DefaultAPITimeout,
		poll:       DefaultPollInterval,
	}
}

// CreateOption changes what [Client.Create] does.
type CreateOption func(*createOptions)

type createOptions struct {
	wait bool
}

// WaitForJob makes Create return only once a worker took the dispatch's job
// (see [Client.Wait]); bound the wait with ctx. Create then returns the
// dispatch whose job was taken: the replacement, if the server dropped the
// first and a held-dispatch sweep re-created it. Without it Create returns
// as soon as the dispatch exists.
func WaitForJob() CreateOption { return func(o *createOptions) { o.wait = true } }

// Validate checks req as Create would: a room name, and a deployment label
// the server accepts (what a worker registering with it is checked by). An
// invalid request is an error wrapping [ErrInvalid].
func Validate(req *livekit.CreateAgentDispatchRequest) error {
	if req == nil {
		return fmt.Errorf("%w: no request", ErrInvalid)
	}
	if req.GetRoom() == "" {
		return fmt.Errorf("%w: Room is required", ErrInvalid)
	}
	if err := agent.ValidateDeployment(req.GetDeployment()); err != nil {
		return fmt.Errorf("%w: Deployment %q: %v (use letters, digits, '-' or '.'; \"\" is production)", ErrInvalid, req.GetDeployment(), err)
	}
	return nil
}

// Create dispatches req.AgentName (in req.Deployment, "" is production) to
// req.Room and returns the dispatch as the server lists it, with its ID.
//
// A room that does not exist yet is created with the dispatch in its
// configuration, so that the server launches only that agent (no automatic
// agent). A room that exists gets the dispatch added. Callers racing to
// create the same room with the same request (agent name, deployment,
// metadata, attributes, restart policy, thread) get one dispatch, the
// room's, and all receive it: Create is idempotent for 10 s after the room
// was created. A request that differs from the room's configuration gets a
// dispatch of its own, and so does every Create into an older room.
//
// Errors wrap [ErrInvalid] (nothing was sent), [ErrUnauthorized], or the
// server's answer.
func (c *Client) Create(ctx context.Context, req *livekit.CreateAgentDispatchRequest, opts ...CreateOption) (*livekit.AgentDispatch, error) {
	var o createOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := Validate(req); err != nil {
		return nil, err
	}
	d, err := c.create(ctx, req)
	if err != nil {
		return nil, err
	}
	if o.wait {
		cur, _, err := c.wait(ctx, d)
		return cur, err
	}
	return d, nil
}

func (c *Client) create(ctx context.Context, req *livekit.CreateAgentDispatchRequest) (*livekit.AgentDispatch, error) {
	// CreateRoom creates the room with the dispatch in its configuration,
	// or returns the room as it is if it exists (then nothing is added).
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	room, err := c.rooms.CreateRoom(cctx, &livekit.CreateRoomRequest{
		Name: req.Room,
		Agents: []*livekit.RoomAgentDispatch{{
			AgentName:     req.AgentName,
			Metadata:      req.Metadata,
			RestartPolicy: req.RestartPolicy,
			Deployment:    req.Deployment,
			Attributes:    req.Attributes,
			ThreadId:      req.ThreadId,
		}},
	})
	cancel()
	if err != nil {
		return nil, wrap(fmt.Sprintf("create room %q with the dispatch", req.Room), err)
	}
	// A room created just now, by this call or a racing one, has the
	// dispatches of its configuration, created with it: one of this
	// request is the one to return. Otherwise (an older room, or one
	// created with another configuration) the dispatch is added.
	if created := time.UnixMilli(room.GetCreationTimeMs()); time.Since(created) < creationWindow {
		ds, err := c.List(ctx, req.Room)
		if err != nil {
			return nil, err
		}
		for _, d := range ds {
			at := time.Unix(0, d.GetState().GetCreatedAt())
			if same(d, req) && at.Sub(created) < withRoom {
				return d, nil
			}
		}
	}
	cctx, cancel = context.WithTimeout(ctx, c.timeout)
	defer cancel()
	d, err := c.dispatches.CreateDispatch(cctx, req)
	if err != nil {
		return nil, wrap(fmt.Sprintf("create dispatch of agent %q to room %q", req.AgentName, req.Room), err)
	}
	return d, nil
}

const (
	// creationWindow: Create calls for one room within this time of its
	// creation count as racing to create it.
	creationWindow = 10 * time.Second
	// withRoom: a dispatch created within this time of its room is one of
	// the room's configuration (the server creates them together).
	withRoom = time.Second
)

// same reports whether d is what req asks for.
func same(d *livekit.AgentDispatch, req *livekit.CreateAgentDispatchRequest) bool {
	return d.GetAgentName() == req.GetAgentName() && d.GetDeployment() == req.GetDeployment() &&
		d.GetMetadata() == req.GetMetadata() && d.GetRestartPolicy() == req.GetRestartPolicy() &&
		d.GetThreadId() == req.GetThreadId() && maps.Equal(d.GetAttributes(), req.GetAttributes())
}

// List returns the dispatches of room; none if the room does not exist.
func (c *Client) List(ctx context.Context, room string) ([]*livekit.AgentDispatch, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	res, err := c.dispatches.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: room})
	if isCode(err, twirp.NotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, wrap(fmt.Sprintf("list the dispatches of room %q", room), err)
	}
	return res.GetAgentDispatches(), nil
}

// Delete deletes a dispatch; the server ends its job, if one runs. A
// dispatch that does not exist is an error wrapping [ErrNotFound].
func (c *Client) Delete(ctx context.Context, room, dispatchID string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	_, err := c.dispatches.DeleteDispatch(ctx, &livekit.DeleteAgentDispatchRequest{Room: room, DispatchId: dispatchID})
	if err != nil {
		return wrap(fmt.Sprintf("delete dispatch %s of room %q", dispatchID, room), err)
	}
	return nil
}

// Wait waits until a worker took the job of dispatch d and returns the job.
// A dispatch the server dropped and a held-dispatch sweep replaced (same
// room, agent name, deployment and metadata, created later) is followed to
// its replacement. It returns an error wrapping [ErrGone] if the dispatch
// disappears without a replacement, or ctx's cause when ctx ends first.
//
// The server lists a job once its placement is complete: usually within a
// second of the worker accepting it, up to ~5 s while it refreshes its
// cache of agent names.
func (c *Client) Wait(ctx context.Context, d *livekit.AgentDispatch) (*livekit.Job, error) {
	_, j, err := c.wait(ctx, d)
	return j, err
}

// wait is Wait, also returning the dispatch it followed d to (d itself, or
// its replacement), as last listed.
func (c *Client) wait(ctx context.Context, d *livekit.AgentDispatch) (*livekit.AgentDispatch, *livekit.Job, error) {
	t := time.NewTicker(c.poll)
	defer t.Stop()
	cur := d
	for {
		ds, err := c.List(ctx, d.GetRoom())
		if err != nil {
			return cur, nil, err
		}
		next := follow(ds, cur)
		if next == nil {
			return cur, nil, fmt.Errorf("%w: dispatch %s of room %q", ErrGone, cur.GetId(), cur.GetRoom())
		}
		cur = next
		if jobs := cur.GetState().GetJobs(); len(jobs) > 0 {
			return cur, jobs[0], nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return cur, nil, fmt.Errorf("dispatch: waiting for a worker to take the job of dispatch %s: %w", cur.GetId(), context.Cause(ctx))
		}
	}
}

// follow finds d in ds, or the dispatch that replaced it: the oldest of the
// same agent name, deployment and metadata created after it.
func follow(ds []*livekit.AgentDispatch, d *livekit.AgentDispatch) *livekit.AgentDispatch {
	var best *livekit.AgentDispatch
	for _, x := range ds {
		if x.GetId() == d.GetId() {
			return x
		}
		if x.GetAgentName() != d.GetAgentName() || x.GetDeployment() != d.GetDeployment() || x.GetMetadata() != d.GetMetadata() {
			continue
		}
		created := x.GetState().GetCreatedAt()
		if created < d.GetState().GetCreatedAt() {
			continue
		}
		if best == nil || created < best.GetState().GetCreatedAt() {
			best = x
		}
	}
	return best
}

// wrap says what failed and wraps err, and ErrUnauthorized or ErrNotFound
// when the server said so.
func wrap(what string, err error) error {
	switch {
	case isCode(err, twirp.Unauthenticated, twirp.PermissionDenied):
		return fmt.Errorf("%w: %s: %w", ErrUnauthorized, what, err)
	case isCode(err, twirp.NotFound):
		return fmt.Errorf("%w: %s: %w", ErrNotFound, what, err)
	}
	return fmt.Errorf("dispatch: %s: %w", what, err)
}

func isCode(err error, codes ...twirp.ErrorCode) bool {
	var te twirp.Error
	if !errors.As(err, &te) {
		return false
	}
	for _, c := range codes {
		if te.Code() == c {
			return true
		}
	}
	return false
}
