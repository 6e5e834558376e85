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

	"github.com/lkagent/lkagent/internal/testkit/agentstate"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// jobEndCases are the dispatches of the job-end tests: their metadata, as
// procagent reads it ("listed": return once the server lists the job;
// "listed:E": return the error E then).
func jobEndCases(n int) []string {
	metas := make([]string, n)
	for i := range metas {
		metas[i] = "listed"
		if i%2 == 1 {
			metas[i] = fmt.Sprintf("listed:handler failed on purpose %d", i)
		}
	}
	return metas
}

// checkRecordedEnds checks that the server recorded the end of each job
// (job ID → its metadata) with the outcome its handler returned.
func checkRecordedEnds(t *testing.T, jobs map[string]string) {
	t.Helper()
	for id, meta := range jobs {
		want := []string{"job ended", id, "JS_SUCCESS"}
		if _, failure, _ := strings.Cut(meta, ":"); failure != "" {
			want = []string{"job ended", id, "JS_FAILED", failure}
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

// A job whose handler joins its room, stays a while and returns is
// recorded by the server with its own outcome: success, or failure with
// the handler's error. The server records an end of its own ("agent worker
// left the room", JS_FAILED) for a job whose launch it completed when the
// agent leaves its room before the worker's report came, and then drops
// the report: each job stays until the server lists it (its launch
// complete), so that only a report that comes before the agent leaves is
// recorded.
func TestJobEndRecordedWithItsOutcome(t *testing.T) {
	t.Parallel()
	agent := uniq("jobend")
	var mu sync.Mutex
	ids := map[string]string{} // job ID → its metadata
	startWorker(t, worker.Options{AgentName: agent}, func(ctx context.Context, j *job.Job) error {
		if _, err := j.Connect(ctx, lksdk.NewRoomCallback()); err != nil {
			return err
		}
		if err := agentstate.Listed(ctx, j); err != nil {
			return err
		}
		mu.Lock()
		ids[j.ID()] = j.Metadata()
		mu.Unlock()
		if _, failure, _ := strings.Cut(j.Metadata(), ":"); failure != "" {
			return errors.New(failure)
		}
		return nil
	})
	metas := jobEndCases(10)
	for _, meta := range metas {
		_, err := dispatchClient().CreateDispatch(context.Background(), &livekit.CreateAgentDispatchRequest{
			AgentName: agent, Room: uniq("room"), Metadata: meta})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, time.Minute, "every job to run", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ids) == len(metas)
	})
	mu.Lock()
	defer mu.Unlock()
	checkRecordedEnds(t, ids)
}
