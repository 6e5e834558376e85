// Package agentstate waits for the LiveKit server to see a job's agent:
// the states a test must reach before what it tests means anything on the
// real server, read through the server's API with the job's credentials.
package agentstate

import (
	"context"
	"fmt"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
)

// poll is how often the server is asked.
const poll = 50 * time.Millisecond

// Listed waits until the server lists j in its room's dispatch with its
// agent's identity: the server has completed the job's launch (seconds
// after the agent joined) and put the agent on its room's record. From
// then on the agent leaving the room makes the server record the job's end
// itself ("agent worker left the room") unless the worker's report came
// first.
func Listed(ctx context.Context, j *job.Job) error {
	api, err := j.API()
	if err != nil {
		return err
	}
	return until(ctx, "the server never listed the job in its dispatch", func(ctx context.Context) (bool, error) {
		res, err := api.Dispatch.ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: j.RoomName()})
		for _, d := range res.GetAgentDispatches() {
			for _, lj := range d.GetState().GetJobs() {
				if lj.GetId() == j.ID() && lj.GetState().GetParticipantIdentity() != "" {
					return true, nil
				}
			}
		}
		return false, err
	})
}

// Active waits until the server lists j's agent as an active participant
// of its room: its media connection is up on the server's side too. An
// agent process that dies before that is removed from its room at once.
func Active(ctx context.Context, j *job.Job) error {
	api, err := j.API()
	if err != nil {
		return err
	}
	return until(ctx, "the server does not list the agent as active", func(ctx context.Context) (bool, error) {
		p, err := api.Room.GetParticipant(ctx, &livekit.RoomParticipantIdentity{Room: j.RoomName(), Identity: j.Identity()})
		return err == nil && p.GetState() == livekit.ParticipantInfo_ACTIVE, err
	})
}

// until asks check every poll until it says yes, ctx ends, or 30 seconds
// passed; the error then says what, with check's last error.
func until(ctx context.Context, what string, check func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		ok, err := check(ctx)
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, context.Cause(ctx), err)
		case <-t.C:
		}
	}
}
