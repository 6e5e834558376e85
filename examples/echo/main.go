// Command echo runs the echo agent: a LiveKit agent worker that joins each
// room it is dispatched to and answers every chat message and data packet
// with the same text, prefixed with the deployment that answered:
//
//	export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
//	go run ./examples/echo --agent-name echo
//
// Its OnRequest function ([echoagent.OnRequest]) accepts each job with a
// custom participant identity ("echo-<job id>"), a display name and
// attributes that name the deployment; its handler ([echoagent.Handle])
// joins the room with j.Connect, receives data packets through the
// room callback's OnDataPacket and replies with
// LocalParticipant.PublishDataPacket.
//
// SIGINT or SIGTERM drains the worker: it takes no new jobs and lets
// running ones finish. A second signal cancels the running jobs at once
// (their final statuses are still sent) and exits with status 130.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/lkagent/lkagent/examples/echo/echoagent"
	"github.com/lkagent/lkagent/worker"
)

func main() {
	agentName := flag.String("agent-name", "echo", "agent name the worker registers with")
	deployment := flag.String("deployment", "", "deployment to register with (default $LIVEKIT_AGENT_DEPLOYMENT; empty is production)")
	httpAddr := flag.String("http-addr", "127.0.0.1:0", "serve /metrics, /healthz, /readyz, / and /worker there (port 0: a free port, logged; empty: off)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	w, err := worker.New(worker.Options{
		HTTPAddr:   *httpAddr,
		AgentName:  *agentName,
		Deployment: *deployment, // "" falls back to $LIVEKIT_AGENT_DEPLOYMENT
		OnRequest:  echoagent.OnRequest,
		Logger:     log,
	}, echoagent.Handle)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(worker.ExitCode(err))
	}

	// The first SIGINT or SIGTERM drains, a second cancels the running
	// jobs; their final statuses are sent either way.
	err = w.RunUntilSignal(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(worker.ExitCode(err))
	}
	log.Info("echo agent stopped")
}
