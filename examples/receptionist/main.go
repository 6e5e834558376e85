// Command receptionist runs a clinic's receptionist agent: a LiveKit agent
// worker whose jobs wait for their caller, greet them in the room's chat,
// answer their questions (opening hours, address, parking, prices) and
// book appointments, and end when the caller leaves:
//
//	export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
//	go run ./examples/receptionist --deployment staging
//
// Chat arrives as text streams on "lk.chat" or as legacy chat packets;
// replies go to the caller as text streams on "lk.chat". A dispatch's
// metadata may name the caller: {"caller":"identity"}; without it the
// first participant who is not an agent is the caller.
//
// SIGINT or SIGTERM drains the worker: it takes no new jobs and lets
// running calls finish. A second signal cancels the running calls at once
// (their final statuses are still sent) and exits with status 130.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/lkagent/lkagent/worker"
)

func main() {
	agentName := flag.String("agent-name", "receptionist", "agent name the worker registers with")
	deployment := flag.String("deployment", "", "deployment to register with (default $"+worker.EnvDeployment+"; empty is production)")
	clinic := flag.String("clinic", "Harbour Dental", "the clinic's name, in the greeting")
	drain := flag.Duration("drain-timeout", 30*time.Minute, "how long a stopping worker lets running calls finish")
	httpAddr := flag.String("http-addr", "127.0.0.1:0", "serve /metrics, /healthz, /readyz, / and /worker there (port 0: a free port, logged; empty: off)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	w, err := worker.New(worker.Options{
		HTTPAddr:     *httpAddr,
		AgentName:    *agentName,
		Deployment:   *deployment, // "" falls back to $LIVEKIT_AGENT_DEPLOYMENT
		DrainTimeout: *drain,
		Logger:       log,
	}, newHandler(*clinic))
	if err != nil {
		fmt.Fprintln(os.Stderr, "receptionist:", err)
		os.Exit(worker.ExitCode(err))
	}

	// The first SIGINT or SIGTERM drains, a second cancels the running
	// calls; their final statuses are sent either way.
	if err := w.RunUntilSignal(context.Background()); err != nil {
		log.Error("worker stopped", slog.Any("error", err))
		os.Exit(worker.ExitCode(err))
	}
	log.Info("receptionist stopped")
}
