package main

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/examples/echo/echoagent"
	"github.com/lkagent/lkagent/examples/internal/extest"
	"github.com/lkagent/lkagent/internal/lkserver"
)

var (
	bin string
	srv *lkserver.Server
)

func TestMain(m *testing.M) { os.Exit(extest.Main(m, &bin, &srv)) }

// The echo agent takes a dispatch of its own deployment, joins the room
// with the identity and attributes its OnRequest chose, and answers data
// and chat messages of another participant.
func TestEchoAnswersInTheRoom(t *testing.T) {
	agentName, room := extest.Uniq("echo"), extest.Uniq("room")
	p := extest.Start(t, "echo", bin, extest.Env(srv, "LIVEKIT_AGENT_DEPLOYMENT=staging"), "--agent-name", agentName)
	p.WaitLog(30*time.Second, "msg=registered", "deployment=staging")
	time.Sleep(lkserver.RegistrationSettle)

	d := extest.Dispatch(t, srv, &livekit.CreateAgentDispatchRequest{AgentName: agentName, Room: room, Deployment: "staging"})
	if d.GetDeployment() != "staging" {
		t.Fatalf("dispatch deployment = %q, want staging", d.GetDeployment())
	}
	line := p.WaitLog(30*time.Second, "echo agent joined the room", "room="+room)
	if !strings.Contains(line, "deployment=staging") {
		t.Fatalf("join logged without the staging deployment: %s", line)
	}
	jobID := extest.Field(line, "job_id")
	identity := echoagent.Identity(jobID)
	agent := extest.WaitParticipant(t, srv, room, identity, 15*time.Second)
	if agent.GetKind() != livekit.ParticipantInfo_AGENT {
		t.Errorf("agent participant kind = %v, want AGENT", agent.GetKind())
	}
	for k, want := range map[string]string{"agent": "echo", "deployment": "staging", "lk.agent_name": agentName} {
		if got := agent.GetAttributes()[k]; got != want {
			t.Errorf("agent attribute %s = %q, want %q", k, got, want)
		}
	}
	if got, want := agent.GetName(), "Echo (staging)"; got != want {
		t.Errorf("agent name = %q, want %q", got, want)
	}

	// An observer talks to the agent: a data packet on a topic, then a chat message.
	data := make(chan *lksdk.UserDataPacket, 16)
	chat := make(chan string, 16)
	cb := lksdk.NewRoomCallback()
	cb.OnDataPacket = func(pkt lksdk.DataPacket, params lksdk.DataReceiveParams) {
		if params.SenderIdentity != identity {
			return
		}
		switch v := pkt.(type) {
		case *lksdk.UserDataPacket:
			data <- v
		case *livekit.ChatMessage:
			chat <- v.GetMessage()
		}
	}
	token, err := auth.NewAccessToken(srv.APIKey(), srv.APISecret()).SetIdentity("observer").
		SetVideoGrant(&auth.VideoGrant{RoomJoin: true, Room: room}).ToJWT()
	if err != nil {
		t.Fatal(err)
	}
	observer, err := lksdk.ConnectToRoomWithToken(srv.URL(), token, cb)
	if err != nil {
		t.Fatalf("observer join: %v", err)
	}
	defer observer.Disconnect()

	send := func(pkt lksdk.DataPacket) {
		if err := observer.LocalParticipant.PublishDataPacket(pkt, lksdk.WithDataPublishReliable(true),
			lksdk.WithDataPublishDestination([]string{identity})); err != nil {
			t.Logf("publish: %v", err)
		}
	}
	deadline := time.After(20 * time.Second)
	for got := false; !got; {
		pkt := lksdk.UserData([]byte("ping"))
		pkt.Topic = "lk-chat-test"
		send(pkt)
		select {
		case r := <-data:
			if string(r.Payload) != "echo[staging]: ping" || r.Topic != "lk-chat-test" {
				t.Fatalf("reply = %q on topic %q, want %q on lk-chat-test", r.Payload, r.Topic, "echo[staging]: ping")
			}
			got = true
		case <-time.After(time.Second):
		case <-deadline:
			t.Fatal("no reply to the data packet within 20s")
		}
	}
	send(lksdk.ChatMessage(time.Now(), "hello"))
	select {
	case r := <-chat:
		if r != "echo[staging]: hello" {
			t.Fatalf("chat reply = %q, want %q", r, "echo[staging]: hello")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reply to the chat message within 10s")
	}

	// SIGTERM drains: the worker waits for its running job, which ends
	// when the room goes away; then it exits 0.
	p.Signal(syscall.SIGTERM)
	p.WaitLog(10*time.Second, "msg=draining", "running_jobs=1")
	time.Sleep(500 * time.Millisecond)
	if !p.Running() {
		t.Fatal("the worker exited while its job still ran, instead of draining")
	}
	observer.Disconnect()
	extest.DeleteRoom(t, srv, room)
	if code := p.Wait(30 * time.Second); code != 0 {
		t.Fatalf("exit status after the drain = %d, want 0", code)
	}
	p.WaitLog(time.Second, "disconnected from the room; job done", "room="+room)
	p.WaitLog(time.Second, "echo agent stopped")
}
