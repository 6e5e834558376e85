package job_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/job/jobtest"
)

// A handler serves its job until the job's context ends: here the server
// terminates the job (the dispatch was deleted). Package jobtest runs the
// handler without a server.
func ExampleHandler() {
	handler := func(ctx context.Context, j *job.Job) error {
		j.OnShutdown(func(_ context.Context, reason error) {
			fmt.Println("shutdown hook:", reason)
		})
		fmt.Printf("job %s for %s (deployment %q) in room %s\n", j.ID(), j.AgentName(), j.Deployment(), j.RoomName())
		<-ctx.Done()
		return ctx.Err()
	}

	tj := jobtest.New(jobtest.Options{ID: "AJ_1", AgentName: "support-bot", Deployment: "staging", Room: "room-1"})
	tj.Cancel(job.ErrTerminated) // as when the server deletes the dispatch
	res := tj.Run(handler)
	fmt.Println("reported as failed:", res.Outcome != nil)
	// Output:
	// job AJ_1 for support-bot (deployment "staging") in room room-1
	// shutdown hook: job terminated by server
	// reported as failed: false
}

// OnRequest functions receive a Request and accept or reject it.
func ExampleRequest_Accept() {
	onRequest := func(ctx context.Context, r *job.Request) error {
		if r.Metadata() == "blocked" {
			return r.Reject()
		}
		return r.Accept(job.AcceptOptions{Identity: "bot-" + r.RoomName(), Attributes: map[string]string{"tier": "gold"}})
	}

	req := jobtest.NewRequest(jobtest.Options{ID: "AJ_2", Room: "room-2"})
	_ = onRequest(context.Background(), req.Request())
	decided, accepted, opts := req.Decision()
	fmt.Println(decided, accepted, opts.Identity, opts.Attributes["tier"])
	// Output: true true bot-room-2 gold
}

// A handler ends its own job with Shutdown; the job still counts as a
// success.
func ExampleJob_Shutdown() {
	res := jobtest.New(jobtest.Options{}).Run(func(ctx context.Context, j *job.Job) error {
		j.Shutdown("caller hung up")
		<-ctx.Done()
		fmt.Println("cause:", context.Cause(ctx))
		return ctx.Err()
	})
	fmt.Println("reported as failed:", res.Outcome != nil, errors.Is(res.Err, context.Canceled))
	// Output:
	// cause: job shut down by its handler: caller hung up
	// reported as failed: false true
}
