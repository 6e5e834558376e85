// Command deployments runs one agent as production or as staging from the
// same binary: the rollout pattern. The new version runs as staging next to
// production, against the same LiveKit project; dispatches that name
// "staging" reach only it, every other dispatch keeps going to production:
//
//	LIVEKIT_AGENT_DEPLOYMENT=staging go run ./examples/deployments   # the new version
//	go run ./examples/deployments                                    # production
//	go run ./examples/deployments --deployment canary                # or a flag
//
// Promoting staging is a redeploy of production with the new binary; the old
// production workers drain on SIGTERM: they take no new jobs, let running
// ones finish (up to --drain-timeout) and exit 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/lkagent/lkagent/examples/echo/echoagent"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

func main() {
	agentName := flag.String("agent-name", "support-bot", "agent name the worker registers with")
	deployment := flag.String("deployment", os.Getenv(worker.EnvDeployment),
		"deployment to register with: staging, canary, ... (default $"+worker.EnvDeployment+"; empty is production)")
	drain := flag.Duration("drain-timeout", 10*time.Minute, "how long a stopping worker lets running jobs finish")
	httpAddr := flag.String("http-addr", "127.0.0.1:0", "serve /metrics, /healthz, /readyz, / and /worker there (port 0: a free port, logged; empty: off)")
	flag.Parse()

	name := *deployment
	if name == "" {
		name = "production"
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With(slog.String("rollout", name))

	w, err := worker.New(worker.Options{
		HTTPAddr:     *httpAddr,
		AgentName:    *agentName,
		Deployment:   *deployment,
		OnRequest:    echoagent.OnRequest,
		DrainTimeout: *drain,
		Logger:       log,
		OnStateChange: func(c worker.StateChange) {
			if c.State == worker.StateRegistered {
				log.Info("serving", slog.String("agent_name", *agentName), slog.String("worker_id", c.WorkerID))
			}
		},
	}, func(ctx context.Context, j *job.Job) error {
		// j.Deployment() is always this worker's own deployment: the server
		// routes by it and the worker declines anything else.
		j.Logger().Info("job taken", slog.String("identity", j.Identity()))
		return echoagent.Handle(ctx, j)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "deployments:", err)
		os.Exit(worker.ExitCode(err))
	}

	// The first SIGINT or SIGTERM drains, a second cancels the running
	// jobs; their final statuses are sent either way.
	if err := w.RunUntilSignal(context.Background()); err != nil {
		log.Error("worker stopped", slog.Any("error", err))
		os.Exit(worker.ExitCode(err))
	}
	log.Info("drained; exiting")
}
