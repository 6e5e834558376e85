package jobproc_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/internal/jobproc"
)

// A runtime's Run, in the parent and in a job process: the same program
// reaches it in both.
func Example() {
	ctx := context.Background()
	if jobproc.IsChild() {
		// A job process: serve the one job, then exit.
		err := jobproc.Serve(ctx, func(ctx context.Context, s jobproc.Spec, r *jobproc.Reporter) jobproc.Outcome {
			log := slog.New(r.Handler())
			log.Info("job started", "room", s.Job.GetRoom().GetName())
			_ = r.Status(&livekit.UpdateJobStatus{JobId: s.Job.GetId(), Status: livekit.JobStatus_JS_RUNNING})
			<-ctx.Done()
			var ce *jobproc.CauseError
			if errors.As(context.Cause(ctx), &ce) && ce.Code == "terminated" {
				return jobproc.Success()
			}
			return jobproc.Failure(context.Cause(ctx))
		})
		if err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}

	// The parent: keep two processes warm, kill any past 256 MiB.
	pool, err := jobproc.New(jobproc.Options{Idle: 2, MemoryWarn: 192 << 20, MemoryLimit: 256 << 20,
		OnHealth: func(err error) { /* report full, say why on /readyz */ }})
	if err != nil {
		return
	}
	defer pool.Close(context.Background())

	spec := jobproc.Spec{Job: &livekit.Job{Id: "AJ_1"}, Identity: "agent", URL: "wss://example", Token: "…",
		Base: time.Now()}
	pr, err := pool.Start(ctx, spec, slog.Default().With("job_id", "AJ_1"))
	if err != nil {
		return // an *EndError with Kind EndStartFailed says why
	}
	go func() {
		for ev := range pr.Events() {
			_ = ev // EventStatus: forward ev.Status to the server
		}
	}()
	// On termination: cancel, and kill what does not end in time.
	end := pr.Stop(jobproc.Cause{Code: "terminated", Text: "job terminated by server"}, 10*time.Second)
	if err := end.Err(); err != nil {
		slog.Warn("job failed", "error", err, "kind", end.Kind, "stderr", end.Stderr)
	}
}
