package main

import (
	"os"
	"strings"
	"testing"

	"github.com/lkagent/lkagent/examples/echo/echoagent"
	"github.com/lkagent/lkagent/livekittest"
)

var shared livekittest.Shared

// TestMain stops the shared server after the last test.
func TestMain(m *testing.M) { os.Exit(shared.Run(m)) }

// The same binary runs as production (no deployment) and as staging (from
// LIVEKIT_AGENT_DEPLOYMENT, or --deployment); each takes only the jobs of
// its own deployment, and each drains and exits 0 on SIGINT.
func TestProductionAndStagingFromOneBinary(t *testing.T) {
	srv := shared.Server(t)
	bin := livekittest.Build(t, ".")
	agentName := livekittest.UniqueName("bot")
	type worker struct {
		p    *livekittest.Program
		addr string
	}
	start := func(env []string, args ...string) worker {
		addr := livekittest.FreeAddr(t)
		args = append([]string{"--agent-name", agentName, "--drain-timeout", "1m", "--http-addr", addr}, args...)
		return worker{srv.StartProgram(t, bin, env, args...), addr}
	}
	workers := map[string]worker{
		"":        start(nil),
		"staging": start([]string{"LIVEKIT_AGENT_DEPLOYMENT=staging"}),
		// The flag wins over the environment.
		"canary": start([]string{"LIVEKIT_AGENT_DEPLOYMENT=staging"}, "--deployment", "canary"),
	}

	rooms := map[string]string{} // room → deployment
	for _, dep := range []string{"staging", "", "canary", "staging", ""} {
		room := livekittest.UniqueName("room")
		rooms[room] = dep
		srv.Dispatch(t, room, agentName, dep, "")
		// The agent names the deployment of the worker that took the job:
		// a worker takes only jobs of its own deployment.
		agent := srv.WaitForAgent(t, room, agentName)
		if got, want := agent.GetAttributes()[echoagent.AttrDeployment], echoagent.DeploymentLabel(dep); got != want {
			t.Errorf("the job of room %s, dispatched to %q, ran in deployment %q", room, want, got)
		}
	}
	for dep, w := range workers {
		var mine float64
		for _, d := range rooms {
			if d == dep {
				mine++
			}
		}
		if got := livekittest.Metric(t, w.addr, "lkagent_jobs_running", nil); got != mine {
			t.Errorf("the %q worker runs %v jobs, want %v", dep, got, mine)
		}
	}

	// Rollout: each worker is stopped while its jobs run; it drains (keeps
	// running them), and exits 0 once they are over.
	for dep, w := range workers {
		w.p.Signal(t, os.Interrupt)
		w.p.WaitDraining(t, w.addr)
		if got := livekittest.Metric(t, w.addr, "lkagent_jobs_running", nil); got == 0 {
			t.Fatalf("the %q worker ended its jobs when told to drain", dep)
		}
		for room, d := range rooms {
			if d == dep {
				srv.DeleteRoom(t, room)
			}
		}
		if code := w.p.Wait(t); code != 0 {
			t.Errorf("%q worker exit status = %d, want 0", dep, code)
		}
		if !strings.Contains(w.p.Output(), "drained; exiting") {
			t.Errorf("the %q worker did not log the end of its drain", dep)
		}
	}
}
