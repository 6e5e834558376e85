// Command request-filter shows an OnRequest function that decides which
// jobs the worker takes from the dispatch's metadata: a job whose metadata is
// a JSON object with "tier": "blocked" is rejected, and the rejection logged;
// every other job is accepted and runs the echo agent.
//
//	go run ./examples/request-filter --agent-name filtered
//	lkagent dispatch create --room r1 --agent-name filtered --metadata '{"tier":"blocked"}'   # rejected
//	lkagent dispatch create --room r2 --agent-name filtered --metadata '{"tier":"gold"}'      # accepted
//
// A rejected job is offered to the agent's other workers of the same
// deployment; when none takes it, it stays pending.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/lkagent/lkagent/examples/echo/echoagent"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// jobMetadata is what this agent expects in a dispatch's metadata.
type jobMetadata struct {
	Tier string `json:"tier"`
}

// decide applies the filter to a job's metadata: whether to take the job,
// and why not. Empty or non-JSON metadata is accepted: only an explicit
// blocked tier is turned away.
func decide(metadata string, blocked []string) (accept bool, reason string) {
	if strings.TrimSpace(metadata) == "" {
		return true, ""
	}
	var m jobMetadata
	if err := json.Unmarshal([]byte(metadata), &m); err != nil {
		return true, ""
	}
	if slices.Contains(blocked, m.Tier) {
		return false, fmt.Sprintf("tier %q is blocked", m.Tier)
	}
	return true, ""
}

func main() {
	agentName := flag.String("agent-name", "filtered", "agent name the worker registers with")
	deployment := flag.String("deployment", "", "deployment to register with (default $LIVEKIT_AGENT_DEPLOYMENT; empty is production)")
	block := flag.String("block", "blocked", "comma-separated tiers whose jobs are rejected")
	httpAddr := flag.String("http-addr", "127.0.0.1:0", "serve /metrics, /healthz, /readyz, / and /worker there (port 0: a free port, logged; empty: off)")
	flag.Parse()
	blocked := strings.Split(*block, ",")

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	onRequest := func(ctx context.Context, r *job.Request) error {
		if ok, why := decide(r.Metadata(), blocked); !ok {
			log.Info("job rejected", slog.String("job_id", r.ID()), slog.String("room", r.RoomName()),
				slog.String("deployment", r.Deployment()), slog.String("reason", why))
			return r.Reject()
		}
		log.Info("job accepted", slog.String("job_id", r.ID()), slog.String("room", r.RoomName()),
			slog.String("deployment", r.Deployment()))
		return echoagent.OnRequest(ctx, r)
	}

	w, err := worker.New(worker.Options{
		HTTPAddr:   *httpAddr,
		AgentName:  *agentName,
		Deployment: *deployment,
		OnRequest:  onRequest,
		Logger:     log,
	}, echoagent.Handle)
	if err != nil {
		fmt.Fprintln(os.Stderr, "request-filter:", err)
		os.Exit(worker.ExitCode(err))
	}

	// The first SIGINT or SIGTERM drains, a second cancels the running
	// jobs; their final statuses are sent either way.
	if err := w.RunUntilSignal(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "request-filter:", err)
		os.Exit(worker.ExitCode(err))
	}
}
