package main

import (
	"os"
	"slices"
	"strings"
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

// A job whose metadata names a blocked tier is rejected (and logged) and
// nobody joins its room; the other job of the same agent is accepted and
// runs in its own deployment.
func TestRejectsBlockedTier(t *testing.T) {
	agentName := extest.Uniq("filtered")
	p := extest.Start(t, "request-filter", bin, extest.Env(srv), "--agent-name", agentName, "--deployment", "canary")
	p.WaitLog(30*time.Second, "msg=registered", "deployment=canary")
	time.Sleep(lkserver.RegistrationSettle)

	blockedRoom, goldRoom := extest.Uniq("blocked"), extest.Uniq("gold")
	extest.Dispatch(t, srv, &livekit.CreateAgentDispatchRequest{AgentName: agentName, Room: blockedRoom, Deployment: "canary",
		Metadata: `{"tier":"blocked"}`})
	line := p.WaitLog(30*time.Second, `msg="job rejected"`, "room="+blockedRoom)
	if !strings.Contains(line, `reason="tier \"blocked\" is blocked"`) || !strings.Contains(line, "deployment=canary") {
		t.Fatalf("rejection logged without its reason or deployment: %s", line)
	}

	extest.Dispatch(t, srv, &livekit.CreateAgentDispatchRequest{AgentName: agentName, Room: goldRoom, Deployment: "canary",
		Metadata: `{"tier":"gold"}`})
	p.WaitLog(30*time.Second, `msg="job accepted"`, "room="+goldRoom, "deployment=canary")
	line = p.WaitLog(30*time.Second, "echo agent joined the room", "room="+goldRoom)
	extest.WaitParticipant(t, srv, goldRoom, "echo-"+extest.Field(line, "job_id"), 15*time.Second)

	// The blocked job never ran: no agent in its room, no job started.
	if p.HasLog("echo agent joined the room", "room="+blockedRoom) {
		t.Fatal("the blocked job ran")
	}
	for _, id := range extest.Participants(t, srv, blockedRoom) {
		if strings.HasPrefix(id, "echo-") {
			t.Fatalf("agent %s joined the blocked room", id)
		}
	}
	if ids := extest.Participants(t, srv, goldRoom); !slices.ContainsFunc(ids, func(id string) bool { return strings.HasPrefix(id, "echo-") }) {
		t.Fatalf("no agent in the accepted job's room: %v", ids)
	}

	extest.DeleteRoom(t, srv, goldRoom)
	if code := p.Stop(30 * time.Second); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d, want 0", code)
	}
}
