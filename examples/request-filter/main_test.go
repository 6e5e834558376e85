package main

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/examples/echo/echoagent"
	"github.com/lkagent/lkagent/livekittest"
)

var shared livekittest.Shared

// TestMain stops the shared server after the last test.
func TestMain(m *testing.M) { os.Exit(shared.Run(m)) }

func TestDecide(t *testing.T) {
	blocked := []string{"blocked", "free"}
	for _, tc := range []struct {
		metadata string
		accept   bool
	}{
		{"", true},
		{`{"tier":"gold"}`, true},
		{`{"tier":"blocked"}`, false},
		{`{"tier":"free","x":1}`, false},
		{`{"tier":"BLOCKED"}`, true}, // tiers are exact
		{"not json", true},
		{`["blocked"]`, true},
	} {
		ok, why := decide(tc.metadata, blocked)
		if ok != tc.accept || (!ok && why == "") {
			t.Errorf("decide(%q) = %v, %q; want accept=%v and a reason for a rejection", tc.metadata, ok, why, tc.accept)
		}
	}
}

// A job whose metadata names a blocked tier is rejected (counted, and
// logged with its reason) and nobody joins its room; the other job of the
// same agent is accepted and runs in its own deployment.
func TestRejectsBlockedTier(t *testing.T) {
	srv := shared.Server(t)
	bin := livekittest.Build(t, ".")
	agentName := livekittest.UniqueName("filtered")
	addr := livekittest.FreeAddr(t)
	p := srv.StartProgram(t, bin, nil, "--agent-name", agentName, "--deployment", "canary", "--http-addr", addr)

	// Dispatch returns once the worker accepted the job.
	blockedRoom, goldRoom := livekittest.UniqueName("blocked"), livekittest.UniqueName("gold")
	srv.Dispatch(t, goldRoom, agentName, "canary", `{"tier":"gold"}`)
	agent := srv.WaitForAgent(t, goldRoom, agentName)
	if got := agent.GetAttributes()[echoagent.AttrDeployment]; got != "canary" {
		t.Errorf("agent of the accepted job runs in deployment %q, want canary", got)
	}

	// A job the worker refuses: Dispatch would wait for an acceptance that
	// never comes, so the test creates it with the dispatch API.
	if _, err := srv.DispatchClient().CreateDispatch(t.Context(), &livekit.CreateAgentDispatchRequest{
		AgentName: agentName, Room: blockedRoom, Deployment: "canary", Metadata: `{"tier":"blocked"}`,
	}); err != nil {
		t.Fatal(err)
	}
	rejected := map[string]string{"reason": "rejected_by_handler"}
	livekittest.Eventually(t, 0, "the blocked job's rejection counted", func() bool {
		return livekittest.Metric(t, addr, "lkagent_offers_declined_total", rejected) == 1
	})
	// The blocked job never ran: no agent in its room.
	for _, p := range srv.Participants(t, blockedRoom) {
		if p.GetKind() == livekit.ParticipantInfo_AGENT {
			t.Fatalf("agent %s joined the blocked room", p.GetIdentity())
		}
	}

	srv.DeleteRoom(t, goldRoom)
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d, want 0", code)
	}
	if out := p.Output(); !strings.Contains(out, `reason="tier \"blocked\" is blocked"`) {
		t.Errorf("the rejection was not logged with its reason:\n%s", out)
	}
}
