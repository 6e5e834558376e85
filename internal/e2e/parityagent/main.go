// Command parityagent is a worker for the end-to-end test that a job ends
// the same in process and in a job process: its job joins its room and,
// once the participant "caller" left (others may stay), ends itself with
// j.Shutdown from its participant entrypoint. With --processes each job
// runs in a job process (this program started again). Its log goes to
// stderr; the first SIGINT or SIGTERM drains, a second cancels.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

func main() {
	var o worker.Options
	flag.StringVar(&o.AgentName, "agent-name", "parity-bot", "agent name to register with")
	procs := flag.Bool("processes", false, "run each job in a process of its own")
	flag.Parse()
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *procs {
		o.Executor = worker.Processes(worker.ProcessOptions{})
	}
	w, err := worker.New(o, handle)
	if err == nil {
		err = w.RunUntilSignal(context.Background())
	}
	if err != nil && !errors.Is(err, worker.ErrJobProcessDone) { // a job process served its job
		fmt.Fprintln(os.Stderr, "parityagent:", err)
	}
	os.Exit(worker.ExitCode(err))
}

// handle serves the room until the caller left, then ends the job itself.
func handle(ctx context.Context, j *job.Job) error {
	j.OnParticipant(func(ctx context.Context, p *lksdk.RemoteParticipant) {
		if p.Identity() != "caller" {
			return
		}
		<-ctx.Done()
		if errors.Is(context.Cause(ctx), job.ErrParticipantLeft) {
			j.Shutdown("the caller left")
		}
	})
	if _, err := j.Connect(ctx, nil); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
