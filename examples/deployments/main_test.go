package main

import (
	"os"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/examples/internal/extest"
	"github.com/lkagent/lkagent/internal/lkserver"
)

var (
	bin string
	srv *lkserver.Server
)

func TestMain(m *testing.M) { os.Exit(extest.Main(m, &bin, &srv)) }

// The same binary runs as production (no deployment) and as staging (from
// LIVEKIT_AGENT_DEPLOYMENT, or --deployment); each takes only the jobs of
// its own deployment, and both drain and exit 0 on SIGTERM.
func TestProductionAndStagingFromOneBinary(t *testing.T) {
	agentName := extest.Uniq("bot")
	prod := extest.Start(t, "production", bin, extest.Env(srv), "--agent-name", agentName, "--drain-timeout", "20s")
	staging := extest.Start(t, "staging", bin, extest.Env(srv, "LIVEKIT_AGENT_DEPLOYMENT=staging"), "--agent-name", agentName, "--drain-timeout", "20s")
	canary := extest.Start(t, "canary", bin, extest.Env(srv, "LIVEKIT_AGENT_DEPLOYMENT=staging"),
		"--agent-name", agentName, "--deployment", "canary", "--drain-timeout", "20s") // the flag wins over the environment
	prod.WaitLog(30*time.Second, "msg=serving", "rollout=production")
	staging.WaitLog(30*time.Second, "msg=serving", "rollout=staging")
	canary.WaitLog(30*time.Second, "msg=serving", "rollout=canary")
	time.Sleep(lkserver.RegistrationSettle)

	procs := map[string]*extest.Proc{"": prod, "staging": staging, "canary": canary}
	rooms := map[string]string{}
	for _, dep := range []string{"staging", "", "canary", "staging", ""} {
		room := extest.Uniq("room")
		rooms[room] = dep
		extest.Dispatch(t, srv, &livekit.CreateAgentDispatchRequest{AgentName: agentName, Room: room, Deployment: dep})
		procs[dep].WaitLog(30*time.Second, `msg="job taken"`, "room="+room, "deployment="+quoted(dep))
	}
	// Nothing crossed over: no process logged a job of another deployment's room.
	time.Sleep(time.Second)
	for dep, p := range procs {
		for room, want := range rooms {
			if want != dep && p.HasLog(`msg="job taken"`, "room="+room) {
				t.Errorf("the %q worker took the job of room %s, dispatched to %q", dep, room, want)
			}
		}
	}

	// Rollout: each worker is stopped while its jobs run; it drains (keeps
	// running them), and exits 0 once they are over.
	for dep, p := range procs {
		p.Signal(os.Interrupt)
		p.WaitLog(10*time.Second, "signal received: draining")
		time.Sleep(300 * time.Millisecond)
		if !p.Running() {
			t.Fatalf("the %q worker exited with jobs running instead of draining", dep)
		}
		for room, want := range rooms {
			if want == dep {
				extest.DeleteRoom(t, srv, room)
			}
		}
		if code := p.Wait(30 * time.Second); code != 0 {
			t.Errorf("%q worker exit status = %d, want 0", dep, code)
		}
		p.WaitLog(time.Second, "drained; exiting")
	}
}

// quoted is how slog's text handler writes a deployment value.
func quoted(dep string) string {
	if dep == "" {
		return `""`
	}
	return dep
}
