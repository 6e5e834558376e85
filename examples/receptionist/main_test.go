package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lklogger "github.com/livekit/protocol/logger"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/examples/internal/extest"
	"github.com/lkagent/lkagent/internal/racebuild"
	"github.com/lkagent/lkagent/internal/syncbuf"
	"github.com/lkagent/lkagent/livekittest"
	"github.com/lkagent/lkagent/worker"
)

// Tests other than the first share one server.
var shared livekittest.Shared

// binDir holds the program built by TestProgramDrainsOnSIGTERM.
var binDir string

func TestMain(m *testing.M) {
	lksdk.SetLogger(lklogger.GetDiscardLogger())
	dir, err := os.MkdirTemp("", "receptionist-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := shared.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
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
// staging, on srv; its log goes to the returned buffer. It is stopped when
// the test ends.
func startWorker(t *testing.T, srv *livekittest.Server, agentName string) (*worker.Worker, *syncbuf.Buffer) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	w, err := worker.New(worker.Options{
		URL: srv.URL, APIKey: srv.APIKey, APISecret: srv.APISecret,
		AgentName: agentName, Deployment: "staging",
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
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
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	return w, logs
}

// eventually fails the test if cond does not hold within
// livekittest.Timeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(livekittest.Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, livekittest.Timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The dispatch names the caller: the receptionist waits for them (not for
// the visitor already in the room), greets them, answers chat packets and
// text streams, books an appointment, and ends the job when the caller
// leaves, though the visitor stays.
func TestReceptionistServesTheCallerUntilTheyLeave(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	agent := livekittest.UniqueName("receptionist")
	w, logs := startWorker(t, srv, agent)

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
	eventually(t, "the job ends after the caller left", func() bool { return len(w.Snapshot().Jobs) == 0 })
	eventually(t, "the agent leaves the room", func() bool {
		for _, p := range srv.Participants(t, room) {
			if p.GetKind() == livekit.ParticipantInfo_AGENT {
				return false
			}
		}
		return true
	})
	if _, ok := logs.Line("caller left; the call is over", "caller=pat", "booked=1", "room="+room); !ok {
		t.Errorf("no log line of the caller leaving")
	}
	if _, ok := logs.Line("job finished", "room="+room); !ok {
		t.Errorf("the job did not finish as a success")
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

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// build builds this program once per test run.
func build(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binary = filepath.Join(binDir, "receptionist")
		args := []string{"build", "-o", binary}
		if racebuild.Enabled {
			args = append(args, "-race")
		}
		if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// The program itself: it serves a call and, on SIGTERM, drains: the call
// goes on until the caller leaves, then the process exits 0.
func TestProgramDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	srv := shared.Server(t)
	bin := build(t)
	agent := livekittest.UniqueName("receptionist")
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LIVEKIT_") {
			env = append(env, kv)
		}
	}
	env = append(env, "LIVEKIT_URL="+srv.URL, "LIVEKIT_API_KEY="+srv.APIKey, "LIVEKIT_API_SECRET="+srv.APISecret,
		"LIVEKIT_AGENT_DEPLOYMENT=staging")
	p := extest.Start(t, "receptionist", bin, env, "--agent-name", agent, "--clinic", "Lighthouse Dental", "--http-addr", "")
	p.WaitLog(livekittest.Timeout, "msg=registered", "deployment=staging")

	room := livekittest.UniqueName("room")
	srv.Dispatch(t, room, agent, "staging", "")
	caller := srv.Join(t, room, "caller")
	if got := caller.WaitChat(t, nil); !strings.Contains(got, "welcome to Lighthouse Dental") {
		t.Fatalf("greeting %q", got)
	}

	p.Signal(syscall.SIGTERM)
	p.WaitLog(livekittest.Timeout, "msg=draining", "running_jobs=1")
	if got := caller.Chat(t, "How much is a check-up?", nil); !strings.Contains(got, "$60") {
		t.Fatalf("answer while draining %q", got)
	}
	caller.Leave()
	if code := p.Wait(livekittest.Timeout); code != 0 {
		t.Fatalf("exit status %d after the drain, want 0", code)
	}
	p.WaitLog(time.Second, "caller left; the call is over", "room="+room)
	p.WaitLog(time.Second, "receptionist stopped")
}
