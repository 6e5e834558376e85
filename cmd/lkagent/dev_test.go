package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/livekittest"
)

// devAgentSource is a small agent answering chat with its version.
const devAgentSource = `package main

import (
	"context"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

const version = "v1"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	w, err := worker.New(worker.Options{AgentName: os.Getenv("DEVAGENT_NAME"), DrainTimeout: 2 * time.Second},
		func(ctx context.Context, j *job.Job) error {
			chat := j.Chat()
			if _, err := j.Connect(ctx, nil); err != nil {
				return err
			}
			for m := range chat.Messages(ctx) {
				_ = j.ReplyChat(ctx, m, version+": "+m.Text)
			}
			return nil
		})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
`

// devModule writes the agent into a module of its own in a new directory,
// which uses this module's code and its go.sum.
func devModule(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	mod := "module devagent\n\ngo 1.26\n\nrequire github.com/lkagent/lkagent v0.0.0\n\nreplace github.com/lkagent/lkagent => " + root + "\n"
	for name, body := range map[string]string{"go.mod": mod, "go.sum": string(sum), "main.go": devAgentSource} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// dispatchUntilJoined dispatches agent to room until an agent participant
// of it is in the room (a dispatch made before the worker registered is
// dropped by the server).
func dispatchUntilJoined(t *testing.T, req *livekit.CreateAgentDispatchRequest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	api := lksdk.NewAgentDispatchServiceClient(srv.URL(), srv.APIKey(), srv.APISecret())
	rooms := lksdk.NewRoomServiceClient(srv.URL(), srv.APIKey(), srv.APISecret())
	for ctx.Err() == nil {
		d, err := api.CreateDispatch(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		joined := waitUntil(3*time.Second, func() bool {
			ps, err := rooms.ListParticipants(ctx, &livekit.ListParticipantsRequest{Room: req.Room})
			return err == nil && slices.ContainsFunc(ps.GetParticipants(), func(p *livekit.ParticipantInfo) bool {
				return p.GetKind() == livekit.ParticipantInfo_AGENT
			})
		})
		if joined {
			return
		}
		_, _ = api.DeleteDispatch(ctx, &livekit.DeleteAgentDispatchRequest{Room: req.Room, DispatchId: d.GetId()})
	}
	t.Fatalf("agent %s never joined room %s", req.AgentName, req.Room)
}

// srv1Dispatch returns the one dispatch of agent in room.
func srv1Dispatch(t *testing.T, room, agent string) *livekit.AgentDispatch {
	t.Helper()
	api := lksdk.NewAgentDispatchServiceClient(srv.URL(), srv.APIKey(), srv.APISecret())
	res, err := api.ListDispatch(t.Context(), &livekit.ListAgentDispatchRequest{Room: room})
	if err != nil {
		t.Fatal(err)
	}
	var out []*livekit.AgentDispatch
	for _, d := range res.GetAgentDispatches() {
		if d.GetAgentName() == agent {
			out = append(out, d)
		}
	}
	if len(out) != 1 {
		t.Fatalf("dispatches of %s in %s: %v", agent, room, out)
	}
	return out[0]
}

// lkagent dev in a real terminal: it builds and runs an agent (of
// deployment staging); while a caller talks to it, its source changes; dev
// rebuilds it, and the caller's next message is answered by the new
// version, in the same room, dispatched with the same deployment, metadata
// and attributes.
func TestDevReloadsDuringACall(t *testing.T) {
	t.Parallel()
	agent, room := uniq("devagent"), uniq("room")
	dir := devModule(t)
	env := srvEnv("DEVAGENT_NAME="+agent, "GOFLAGS=-mod=mod", "GOPROXY=off", "LIVEKIT_AGENT_DEPLOYMENT=staging")
	s := startTmux(t, env, dir, lkagentBin+" dev . --agent-name "+agent)
	s.waitFor(3*time.Minute, "", "dev: started agent v1")

	dispatchUntilJoined(t, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agent, Deployment: "staging",
		Metadata: `{"tier":"gold"}`, Attributes: map[string]string{"lang": "fr"}})
	first := srv1Dispatch(t, room, agent)
	lt := &livekittest.Server{URL: srv.URL(), APIKey: srv.APIKey(), APISecret: srv.APISecret()}
	caller := lt.Join(t, room, "caller")
	if got := caller.Chat(t, "hello", nil); got != "v1: hello" {
		t.Fatalf("v1 answered %q", got)
	}

	src := strings.Replace(devAgentSource, `"v1"`, `"v2"`, 1)
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	s.waitFor(3*time.Minute, "", "dev: changed: main.go; rebuilding")
	s.waitFor(3*time.Minute, "", "is in a call; it moves to v2")
	s.waitFor(3*time.Minute, "", "v2 joined as")
	if got := caller.Chat(t, "again", func(s string) bool { return strings.HasSuffix(s, "again") }); got != "v2: again" {
		t.Fatalf("after the reload, the reply is %q, want v2's", got)
	}
	s.waitFor(time.Minute, "v2 joined as", "dev: agent v1 ")
	moved := srv1Dispatch(t, room, agent)
	if moved.GetId() == first.GetId() || moved.GetDeployment() != "staging" || moved.GetMetadata() != `{"tier":"gold"}` ||
		moved.GetAttributes()["lang"] != "fr" {
		t.Errorf("dispatch after the reload: %v (before: %v)", moved, first)
	}
	s.send("C-c")
	s.waitFor(time.Minute, "", "dev: stopping")
	t.Logf("screen:\n%s", s.waitFor(time.Minute, "dev: stopping", "dev: agent v2 "))
}

// Without LIVEKIT_URL, lkagent dev starts a local server and runs the
// agent against it; Ctrl-C stops both.
func TestDevWithALocalServer(t *testing.T) {
	t.Parallel()
	dir := devModule(t)
	s := startTmux(t, cleanEnv("DEVAGENT_NAME="+uniq("devagent"), "GOFLAGS=-mod=mod", "GOPROXY=off"), dir, lkagentBin+" dev .")
	s.waitFor(3*time.Minute, "", "dev: started a local LiveKit server")
	s.waitFor(time.Minute, "", "dev:   export LIVEKIT_URL=ws://127.0.0.1:")
	s.waitFor(3*time.Minute, "", "dev: started agent v1")
	s.waitFor(time.Minute, "dev: started agent v1", "agent v1 | ")
	s.send("C-c")
	t.Logf("screen:\n%s", s.waitFor(time.Minute, "", "dev: agent v1 "))
}
