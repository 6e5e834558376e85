package job_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
)

// A handler can be tested without a server: create the job with New and play
// the runtime with its Control.
func ExampleNew() {
	handler := func(ctx context.Context, j *job.Job) error {
		j.OnShutdown(func(_ context.Context, reason error) {
			fmt.Println("shutdown hook:", reason)
		})
		fmt.Printf("job %s for %s (deployment %q) in room %s\n", j.ID(), j.AgentName(), j.Deployment(), j.RoomName())
		<-ctx.Done()
		return ctx.Err()
	}

	j, ctl := job.New(context.Background(), job.Params{Info: &livekit.Job{
		Id: "AJ_1", AgentName: "support-bot", Deployment: "staging", Room: &livekit.Room{Name: "room-1"},
	}})
	_ = j
	ctl.Cancel(job.ErrTerminated) // as when the server deletes the dispatch
	err := ctl.Run(handler)
	fmt.Println("outcome:", ctl.Finish(context.Background(), err))
	// Output:
	// job AJ_1 for support-bot (deployment "staging") in room room-1
	// shutdown hook: job terminated by server
	// outcome: <nil>
}

// OnRequest functions receive a Request and accept or reject it.
func ExampleRequest_Accept() {
	onRequest := func(ctx context.Context, r *job.Request) error {
		if r.Metadata() == "blocked" {
			return r.Reject()
		}
		return r.Accept(job.AcceptOptions{Identity: "bot-" + r.RoomName(), Attributes: map[string]string{"tier": "gold"}})
	}

	r := job.NewRequest(&livekit.Job{Id: "AJ_2", Room: &livekit.Room{Name: "room-2"}}, false)
	_ = onRequest(context.Background(), r)
	decided, accepted, opts := r.Decision()
	fmt.Println(decided, accepted, opts.Identity, opts.Attributes["tier"])
	// Output: true true bot-room-2 gold
}

// A handler ends its own job with Shutdown; the job still counts as a
// success.
func ExampleJob_Shutdown() {
	j, ctl := job.New(context.Background(), job.Params{Info: &livekit.Job{Id: "AJ_3"}})
	_ = j
	err := ctl.Run(func(ctx context.Context, j *job.Job) error {
		j.Shutdown("caller hung up")
		<-ctx.Done()
		fmt.Println("cause:", context.Cause(ctx))
		return ctx.Err()
	})
	fmt.Println("outcome:", ctl.Finish(context.Background(), err), errors.Is(err, context.Canceled))
	// Output:
	// cause: job shut down by its handler: caller hung up
	// outcome: <nil> true
}
