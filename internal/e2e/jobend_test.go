package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// waitListed waits until the server lists j in its dispatch, with its
// agent's identity.
func waitListed(ctx context.Context, j *job.Job) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		res, err := dispatchClient().ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: j.RoomName()})
		if err == nil {
			for _, d := range res.GetAgentDispatches() {
				for _, lj := range d.GetState().GetJobs() {
					if lj.GetId() == j.ID() && lj.GetState().GetParticipantIdentity() != "" {
						return nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the server never listed the job: %w", context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// A job whose handler joins its room, stays a while and returns is
// recorded by the server with its own outcome: success, or failure with
// the handler's error. The agent leaves the room as its job ends, before
// the worker reports the end; the server must still record the worker's
// report, not an end of its own ("agent worker left the room", which it
// records for an agent that vanished from its room).
func TestJobEndRecordedWithItsOutcome(t *testing.T) {
	t.Parallel()
	agent := uniq("jobend")
	const n = 10
	var mu sync.Mutex
	ids := map[string]string{} // job ID → what the handler returned
	startWorker(t, worker.Options{AgentName: agent}, func(ctx context.Context, j *job.Job) error {
		if _, err := j.Connect(ctx, lksdk.NewRoomCallback()); err != nil {
			return err
		}
		// Until the server lists the job in its dispatch: it has then put
		// the agent on its room's record (its launch is complete, seconds
		// after the agent joined), and from then on the agent leaving the
		// room makes the server record the job's end itself, as "agent
		// worker left the room", unless the worker's report came first.
		if err := waitListed(ctx, j); err != nil {
			return err
		}
		var err error
		if strings.HasPrefix(j.Metadata(), "fail") {
			err = errors.New("handler failed on purpose " + j.Metadata())
		}
		mu.Lock()
		ids[j.ID()] = j.Metadata()
		mu.Unlock()
		return err
	})
	for i := range n {
		meta := fmt.Sprintf("ok-%d", i)
		if i%2 == 1 {
			meta = fmt.Sprintf("fail-%d", i)
		}
		_, err := dispatchClient().CreateDispatch(context.Background(), &livekit.CreateAgentDispatchRequest{
			AgentName: agent, Room: uniq("room"), Metadata: meta})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, time.Minute, "every job to run", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ids) == n
	})
	mu.Lock()
	defer mu.Unlock()
	for id, meta := range ids {
		want := []string{"job ended", id, "JS_SUCCESS"}
		if strings.HasPrefix(meta, "fail") {
			want = []string{"job ended", id, "JS_FAILED", "handler failed on purpose " + meta}
		}
		line := waitServerLine(t, 30*time.Second, "job ended", id)
		for _, w := range want {
			if !strings.Contains(line, w) {
				t.Errorf("job %s (%s): the server recorded %s; want %q", id, meta, line, want)
				break
			}
		}
	}
}
