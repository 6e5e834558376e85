package main

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lkagent/lkagent/livekittest"
	"github.com/lkagent/lkagent/worker"
)

// Tests other than the first share one server.
var shared livekittest.Shared

func TestMain(m *testing.M) {
	lksdk.SetLogger(lklogger.GetDiscardLogger())
	os.Exit(shared.Run(m))
}

// The whole agent against a real server, as a user would test their own:
// its staging deployment greets the caller and answers a question.
func TestReceptionistOnStaging(t *testing.T) {
	srv := livekittest.Start(t)
	w, err := worker.New(worker.Options{URL: srv.URL, APIKey: srv.APIKey, APISecret: srv.APISecret,
		AgentName: "receptionist", Deployment: "staging"}, newHandler("Harbour Dental"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.StopAndCancel(context.Background()) })

	room := livekittest.UniqueName("room")
	srv.Dispatch(t, room, "receptionist", "staging", "")
	caller := srv.Join(t, room, "caller")
	if got := caller.WaitChat(t, nil); !strings.Contains(got, "welcome to Harbour Dental") {
		t.Fatalf("greeting %q", got)
	}
	if got := caller.Chat(t, "When are you open?", nil); !strings.Contains(got, "Monday to Friday") {
		t.Fatalf("answer %q", got)
	}
}

// startWorker starts a receptionist worker of agentName, deployment
// staging, on srv, with its metrics in the returned registry. It is
// stopped when the test ends.
func startWorker(t *testing.T, srv *livekittest.Server, agentName string) (*worker.Worker, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	w, err := worker.New(worker.Options{
		URL: srv.URL, APIKey: srv.APIKey, APISecret: srv.APISecret,
		AgentName: agentName, Deployment: "staging",
		Logger:     livekittest.Logger(t),
		Registerer: reg,
	}, newHandler("Harbour Dental"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), livekittest.Timeout)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := w.StopAndCancel(ctx); err != nil {
			t.Errorf("stop the worker: %v", err)
		}
	})
	return w, reg
}

// finished is the number of jobs the worker counted as ended with status.
func finished(t *testing.T, reg *prometheus.Registry, status string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range families {
		if f.GetName() != "lkagent_jobs_finished_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "status" && l.GetValue() == status {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// The dispatch names the caller: the receptionist waits for them (not for
// the visitor already in the room), greets them, answers chat packets and
// text streams, books an appointment, and ends the job when the caller
// leaves, though the visitor stays.
func TestReceptionistServesTheCallerUntilTheyLeave(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	agent := livekittest.UniqueName("receptionist")
	w, reg := startWorker(t, srv, agent)

	room := livekittest.UniqueName("room")
	visitor := srv.Join(t, room, "visitor")
	srv.Dispatch(t, room, agent, "staging", `{"caller":"pat"}`)
	srv.WaitForAgent(t, room, agent)
	pat := srv.Join(t, room, "pat")

	if got := pat.WaitChat(t, nil); !strings.HasPrefix(got, "Hello pat, welcome to Harbour Dental!") {
		t.Fatalf("greeting %q", got)
	}
	// A chat packet, then text streams on lk.chat.
	if got := pat.Chat(t, "Where are you?", nil); !strings.Contains(got, "12 Harbour Street") {
		t.Fatalf("answer %q", got)
	}
	for _, tr := range []struct{ say, want string }{
		{"I'd like to book an appointment", "Which day suits you?"},
		{"Tuesday", "morning or the afternoon on Tuesday"},
		{"morning please", "You're booked for Tuesday morning"},
	} {
		pat.SendText(t, ChatTopic, tr.say)
		if got := pat.WaitChat(t, nil); !strings.Contains(got, tr.want) {
			t.Fatalf("%q: reply %q, want %q", tr.say, got, tr.want)
		}
	}
	// The visitor is not served: the receptionist neither greets nor
	// answers them (they do hear pat's chat packets, sent to everyone).
	visitor.SendChat(t, "Hello?")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	fromDesk := func(s string) bool { return strings.Contains(s, "Hello visitor") || strings.Contains(s, answerHelp) }
	if got, err := visitor.WaitChatContext(ctx, fromDesk); err == nil {
		t.Fatalf("the visitor was answered %q", got)
	}
	if n := len(w.Snapshot().Jobs); n != 1 {
		t.Fatalf("%d jobs running during the call, want 1", n)
	}

	pat.Leave()
	livekittest.Eventually(t, 0, "the job's end after the caller left", func() bool { return len(w.Snapshot().Jobs) == 0 })
	livekittest.Eventually(t, 0, "the agent leaving the room", func() bool {
		for _, p := range srv.Participants(t, room) {
			if p.GetKind() == livekit.ParticipantInfo_AGENT {
				return false
			}
		}
		return true
	})
	if n := finished(t, reg, "success"); n != 1 {
		t.Errorf("%v jobs finished as a success, want 1: the caller leaving ends the job as a success", n)
	}
	if ids := identities(srv.Participants(t, room)); len(ids) != 1 || ids[0] != "visitor" {
		t.Errorf("participants left in the room %v, want the visitor only", ids)
	}
}

func identities(ps []*livekit.ParticipantInfo) []string {
	var ids []string
	for _, p := range ps {
		ids = append(ids, p.GetIdentity())
	}
	return ids
}

// The program itself: it serves a call and, on SIGTERM, drains: the call
// goes on until the caller leaves, then the process exits 0.
func TestProgramDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	bin := livekittest.Build(t, ".")
	agent := livekittest.UniqueName("receptionist")
	addr := livekittest.FreeAddr(t)
	p := srv.StartProgram(t, bin, []string{"LIVEKIT_AGENT_DEPLOYMENT=staging"},
		"--agent-name", agent, "--clinic", "Lighthouse Dental", "--http-addr", addr)

	room := livekittest.UniqueName("room")
	srv.Dispatch(t, room, agent, "staging", "")
	caller := srv.Join(t, room, "caller")
	if got := caller.WaitChat(t, nil); !strings.Contains(got, "welcome to Lighthouse Dental") {
		t.Fatalf("greeting %q", got)
	}

	p.Signal(t, syscall.SIGTERM)
	p.WaitDraining(t, addr)
	if got := caller.Chat(t, "How much is a check-up?", nil); !strings.Contains(got, "$60") {
		t.Fatalf("answer while draining %q", got)
	}
	if !p.Running() {
		t.Fatal("the program exited while its call went on")
	}
	caller.Leave()
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit status %d after the drain, want 0", code)
	}
	for _, want := range []string{"caller left; the call is over", "receptionist stopped"} {
		if !strings.Contains(p.Output(), want) {
			t.Errorf("the program did not log %q", want)
		}
	}
}
