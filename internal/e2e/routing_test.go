package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/testkit/wait"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// A staging and a production worker of one agent name: each dispatch runs
// on the worker of its deployment only, several times over so that a random
// pick cannot pass by luck.
func TestDispatchRoutesByDeployment(t *testing.T) {
	t.Parallel()
	agent := uniq("route")
	staging, prod := newRecorder("staging", false), newRecorder("", false)
	startWorker(t, worker.Options{AgentName: agent, Deployment: "staging"}, staging.handle)
	startWorker(t, worker.Options{AgentName: agent, Deployment: ""}, prod.handle)

	for i := range 6 {
		dep := "staging"
		if i%2 == 1 {
			dep = ""
		}
		room := uniq("room")
		createDispatch(t, agent, room, dep)
		got := waitRun(t, 20*time.Second, staging.runs, prod.runs)
		if got.Worker != dep || got.Deployment != dep || got.Room != room {
			t.Fatalf("dispatch %d to deployment %q in room %s ran as %+v", i, dep, room, got)
		}
	}
	expectNoRun(t, time.Second, staging.runs, prod.runs)
}

// The handler joins the room with j.Connect; an observer in the room sees an
// AGENT participant with the identity OnRequest accepted.
func TestHandlerJoinsRoomAsAgent(t *testing.T) {
	t.Parallel()
	agent, room := uniq("join"), uniq("room")
	identity := "support-" + room
	joined := make(chan string, 1)
	startWorker(t, worker.Options{
		AgentName:  agent,
		Deployment: "staging",
		OnRequest: func(ctx context.Context, r *job.Request) error {
			return r.Accept(job.AcceptOptions{Identity: identity, Name: "Support", Attributes: map[string]string{"tier": "gold"}})
		},
	}, func(ctx context.Context, j *job.Job) error {
		r, err := j.Connect(ctx, nil)
		if err != nil {
			return err
		}
		joined <- string(r.LocalParticipant.Identity())
		<-ctx.Done()
		return nil
	})

	seen := make(chan *lksdk.RemoteParticipant, 4)
	cb := lksdk.NewRoomCallback()
	cb.OnParticipantConnected = func(p *lksdk.RemoteParticipant) { seen <- p }
	observer, err := lksdk.ConnectToRoom(srv.URL(), lksdk.ConnectInfo{
		APIKey: srv.APIKey(), APISecret: srv.APISecret(), RoomName: room, ParticipantIdentity: "observer",
	}, cb)
	if err != nil {
		t.Fatalf("observer join: %v", err)
	}
	defer observer.Disconnect()

	createDispatch(t, agent, room, "staging")
	select {
	case id := <-joined:
		if id != identity {
			t.Fatalf("agent joined as %q, want %q", id, identity)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("handler did not join the room within 30s")
	}
	// The server tells others about a participant that publishes nothing
	// only after a few seconds: wait well beyond that.
	deadline := time.After(30 * time.Second)
	for {
		select {
		case p := <-seen:
			if p.Identity() != identity {
				continue
			}
			if p.Kind() != lksdk.ParticipantAgent {
				t.Fatalf("participant %q has kind %v, want AGENT", identity, p.Kind())
			}
			if got := p.Attributes()["tier"]; got != "gold" {
				t.Errorf("attribute tier = %q, want gold", got)
			}
			if got := p.Attributes()["lk.agent_name"]; got != agent {
				t.Errorf("attribute lk.agent_name = %q, want %q", got, agent)
			}
			return
		case <-deadline:
			t.Fatalf("observer never saw participant %q", identity)
		}
	}
}

// Token-based dispatch: a participant whose token's room configuration asks
// for the staging deployment creates the room; only the staging worker runs.
func TestTokenDispatchRoutesByDeployment(t *testing.T) {
	t.Parallel()
	agent, room := uniq("token"), uniq("room")
	staging, prod := newRecorder("staging", true), newRecorder("", true)
	startWorker(t, worker.Options{AgentName: agent, Deployment: "staging"}, staging.handle)
	startWorker(t, worker.Options{AgentName: agent}, prod.handle)

	at := auth.NewAccessToken(srv.APIKey(), srv.APISecret()).
		SetIdentity("caller").
		SetVideoGrant(&auth.VideoGrant{RoomJoin: true, Room: room}).
		SetAgents(&livekit.RoomAgentDispatch{AgentName: agent, Deployment: "staging", Metadata: "from-token"})
	token, err := at.ToJWT()
	if err != nil {
		t.Fatal(err)
	}
	caller, err := lksdk.ConnectToRoomWithToken(srv.URL(), token, lksdk.NewRoomCallback())
	if err != nil {
		t.Fatalf("caller join: %v", err)
	}
	defer caller.Disconnect()

	got := waitRun(t, 30*time.Second, staging.runs, prod.runs)
	if got.Worker != "staging" || got.Deployment != "staging" || got.Room != room {
		t.Fatalf("token dispatch ran as %+v, want the staging worker in %s", got, room)
	}
	expectNoRun(t, 2*time.Second, staging.runs, prod.runs)
}

// ListDispatch shows each dispatch's deployment, and a dispatch to a
// deployment no worker serves is never run by the workers that exist.
func TestListDispatchAndUnservedDeployment(t *testing.T) {
	t.Parallel()
	agent, room := uniq("list"), uniq("room")
	staging, prod := newRecorder("staging", true), newRecorder("", true)
	startWorker(t, worker.Options{AgentName: agent, Deployment: "staging"}, staging.handle)
	startWorker(t, worker.Options{AgentName: agent}, prod.handle)

	a := createDispatch(t, agent, room, "staging")
	b := createDispatch(t, agent, room, "canary")
	if a.Deployment != "staging" || b.Deployment != "canary" {
		t.Fatalf("CreateDispatch echoed deployments %q and %q", a.Deployment, b.Deployment)
	}
	if got := waitRun(t, 20*time.Second, staging.runs, prod.runs); got.Worker != "staging" {
		t.Fatalf("staging dispatch ran as %+v", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := dispatchClient().ListDispatch(ctx, &livekit.ListAgentDispatchRequest{Room: room})
	if err != nil {
		t.Fatal(err)
	}
	deps := map[string]string{}
	for _, d := range list.AgentDispatches {
		if d.AgentName == agent { // the server adds its automatic-agent dispatch to every new room
			deps[d.Id] = d.Deployment
		}
	}
	if deps[a.Id] != "staging" || deps[b.Id] != "canary" || len(deps) != 2 {
		t.Fatalf("ListDispatch deployments = %v, want %s=staging %s=canary", deps, a.Id, b.Id)
	}
	// The canary dispatch stays pending: no worker of another deployment
	// may take it.
	expectNoRun(t, 4*time.Second, staging.runs, prod.runs)
}

// Invalid deployments are refused: by worker.New before any connection,
// and by the server for a dispatch.
func TestInvalidDeploymentsRejected(t *testing.T) {
	t.Parallel()
	h := func(context.Context, *job.Job) error { return nil }
	for _, dep := range []string{strings.Repeat("a", 65), "prod_us", "prod us"} {
		_, err := worker.New(worker.Options{URL: srv.URL(), APIKey: "k", APISecret: "s", AgentName: "x", Deployment: dep}, h)
		var oe *worker.OptionError
		if !errors.As(err, &oe) || oe.Option != "Deployment" {
			t.Fatalf("worker.New(Deployment=%q) = %v, want an OptionError for Deployment", dep, err)
		}
		if !strings.Contains(err.Error(), "Deployment") || !strings.Contains(err.Error(), "64 bytes") {
			t.Errorf("error %q does not say which option and what the rule is", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := dispatchClient().CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{
		AgentName: "x", Room: uniq("room"), Deployment: strings.Repeat("d", 100),
	})
	if err == nil {
		t.Fatal("the server accepted a dispatch with a 100-byte deployment")
	}
}

// Deleting the dispatch cancels the running handler's context with
// job.ErrTerminated, and the job ends.
func TestDeleteDispatchTerminatesJob(t *testing.T) {
	t.Parallel()
	agent, room := uniq("term"), uniq("room")
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	hooked := make(chan error, 1)
	startWorker(t, worker.Options{AgentName: agent, Deployment: "staging"}, func(ctx context.Context, j *job.Job) error {
		j.OnShutdown(func(_ context.Context, reason error) { hooked <- reason })
		if _, err := j.Connect(ctx, nil); err != nil {
			return err
		}
		started <- struct{}{}
		<-ctx.Done()
		ended <- context.Cause(ctx)
		return ctx.Err()
	})
	d := createDispatch(t, agent, room, "staging")
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("job did not start")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dispatchClient().DeleteDispatch(ctx, &livekit.DeleteAgentDispatchRequest{DispatchId: d.Id, Room: room}); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-ended:
		if !errors.Is(cause, job.ErrTerminated) {
			t.Fatalf("handler context cause = %v, want job.ErrTerminated", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("deleting the dispatch did not end the job")
	}
	select {
	case reason := <-hooked:
		if !errors.Is(reason, job.ErrTerminated) {
			t.Errorf("shutdown hook reason = %v, want job.ErrTerminated", reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown hook did not run")
	}
}

// A panicking handler is reported failed to the server, and the same worker
// then runs the next job fine.
func TestPanickingHandlerReportedFailed(t *testing.T) {
	t.Parallel()
	agent := uniq("panic")
	var mu sync.Mutex
	calls := 0
	done := make(chan string, 2)
	startWorker(t, worker.Options{AgentName: agent}, func(ctx context.Context, j *job.Job) error {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 1 {
			done <- j.ID()
			panic("boom in handler")
		}
		done <- j.ID()
		return nil
	})
	createDispatch(t, agent, uniq("room"), "")
	first := <-done
	waitServerLog(t, 20*time.Second, "job ended", first, "JS_FAILED", "boom in handler")

	createDispatch(t, agent, uniq("room"), "")
	var second string
	select {
	case second = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the worker did not run a job after a handler panicked")
	}
	waitServerLog(t, 20*time.Second, "job ended", second, "JS_SUCCESS")
}

// waitServerLog waits for a server log line containing all parts.
func waitServerLog(t *testing.T, timeout time.Duration, parts ...string) {
	t.Helper()
	wait.Until(t, timeout, fmt.Sprintf("server log line with %q", parts), func() bool {
		_, ok := serverLog.Line(parts...)
		return ok
	})
}
