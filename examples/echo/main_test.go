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

// The echo program takes a dispatch of its own deployment, joins the room
// with the identity and attributes its OnRequest chose, answers data and
// chat messages of another participant, and on SIGTERM drains: it exits 0
// once its job is over.
func TestEchoAnswersInTheRoom(t *testing.T) {
	srv := shared.Server(t)
	bin := livekittest.Build(t, ".")
	agentName, room := livekittest.UniqueName("echo"), livekittest.UniqueName("room")
	addr := livekittest.FreeAddr(t)
	p := srv.StartProgram(t, bin, []string{"LIVEKIT_AGENT_DEPLOYMENT=staging"}, "--agent-name", agentName, "--http-addr", addr)

	d := srv.Dispatch(t, room, agentName, "staging", "")
	if d.GetDeployment() != "staging" {
		t.Fatalf("dispatch deployment = %q, want staging", d.GetDeployment())
	}
	agent := srv.WaitForAgent(t, room, agentName)
	if agent.GetKind() != livekit.ParticipantInfo_AGENT {
		t.Errorf("agent participant kind = %v, want AGENT", agent.GetKind())
	}
	for k, want := range map[string]string{echoagent.AttrAgent: "echo", echoagent.AttrDeployment: "staging", livekittest.AgentNameAttribute: agentName} {
		if got := agent.GetAttributes()[k]; got != want {
			t.Errorf("agent attribute %s = %q, want %q", k, got, want)
		}
	}
	if got, want := agent.GetName(), "Echo (staging)"; got != want {
		t.Errorf("agent name = %q, want %q", got, want)
	}
	var jobID string
	livekittest.Eventually(t, 0, "the job listed in its dispatch", func() bool {
		for _, ld := range srv.ListDispatches(t, room) {
			if ld.GetId() == d.GetId() && len(ld.GetState().GetJobs()) == 1 {
				jobID = ld.GetState().GetJobs()[0].GetId()
			}
		}
		return jobID != ""
	})
	if got, want := agent.GetIdentity(), echoagent.Identity(jobID); got != want {
		t.Errorf("agent identity = %q, want %q", got, want)
	}

	// A caller talks to the agent: a data packet on a topic, then a chat message.
	caller := srv.Join(t, room, "caller")
	caller.WaitForAgent(t, agentName)
	caller.SendData(t, "lk-chat-test", []byte("ping"))
	if got, want := string(caller.WaitData(t, "lk-chat-test")), echoagent.Reply("staging", "ping"); got != want {
		t.Fatalf("data reply = %q, want %q", got, want)
	}
	if got, want := caller.Chat(t, "hello", nil), echoagent.Reply("staging", "hello"); got != want {
		t.Fatalf("chat reply = %q, want %q", got, want)
	}

	// SIGTERM drains: the worker waits for its running job, which ends
	// when the room goes away; then it exits 0.
	p.Signal(t, syscall.SIGTERM)
	p.WaitDraining(t, addr)
	if got, want := caller.Chat(t, "still there?", nil), echoagent.Reply("staging", "still there?"); got != want {
		t.Fatalf("chat reply while draining = %q, want %q", got, want)
	}
	if !p.Running() {
		t.Fatal("the worker exited while its job still ran, instead of draining")
	}
	srv.DeleteRoom(t, room)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit status after the drain = %d, want 0", code)
	}
	// The job ended with the room: the server's termination or the room's
	// disconnection, whichever reached the agent first.
	out := p.Output()
	if !strings.Contains(out, "job terminated by server") && !strings.Contains(out, "disconnected from the room; job done") {
		t.Error("the program did not log the end of its job with the room")
	}
	if !strings.Contains(out, "echo agent stopped") {
		t.Error("the program did not log its stop")
	}
}
