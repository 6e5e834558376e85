package dispatch_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/dispatch"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/livekittest"
	"github.com/lkagent/lkagent/worker"
)

var shared livekittest.Shared

func TestMain(m *testing.M) { os.Exit(shared.Run(m)) }

// server returns the shared real server, or skips under -short.
func server(t *testing.T) *livekittest.Server {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real LiveKit server")
	}
	return shared.Server(t)
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *livekit.CreateAgentDispatchRequest
		ok   bool
	}{
		{"production", &livekit.CreateAgentDispatchRequest{Room: "r", AgentName: "a"}, true},
		{"staging", &livekit.CreateAgentDispatchRequest{Room: "r", AgentName: "a", Deployment: "staging"}, true},
		{"nil", nil, false},
		{"no room", &livekit.CreateAgentDispatchRequest{AgentName: "a"}, false},
		{"reserved underscore", &livekit.CreateAgentDispatchRequest{Room: "r", Deployment: "pr_1"}, false},
		{"space", &livekit.CreateAgentDispatchRequest{Room: "r", Deployment: "pr 1"}, false},
		{"too long", &livekit.CreateAgentDispatchRequest{Room: "r", Deployment: string(make([]byte, 65))}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := dispatch.Validate(tc.req)
			if (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, dispatch.ErrInvalid) {
				t.Fatalf("Validate = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestCreateInvalidSendsNothing(t *testing.T) {
	// No server listens there: an invalid request must fail before any call.
	c := dispatch.NewClient("ws://127.0.0.1:1", "key", "secret")
	_, err := c.Create(t.Context(), &livekit.CreateAgentDispatchRequest{Room: "r", AgentName: "a", Deployment: "pr_1"})
	if !errors.Is(err, dispatch.ErrInvalid) {
		t.Fatalf("Create = %v, want ErrInvalid", err)
	}
}

func TestCreateNewRoomHasOnlyItsDispatch(t *testing.T) {
	srv := server(t)
	c := dispatch.NewClient(srv.URL, srv.APIKey, srv.APISecret)
	room := livekittest.UniqueName("new")
	req := &livekit.CreateAgentDispatchRequest{Room: room, AgentName: "nobody", Deployment: "canary", Metadata: "m",
		Attributes: map[string]string{"k": "v"}}
	d, err := c.Create(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	ds := srv.ListDispatches(t, room)
	if len(ds) != 1 {
		t.Fatalf("room has %d dispatches, want 1 (no automatic agent): %v", len(ds), ds)
	}
	got := ds[0]
	if got.Id != d.Id || d.Id == "" {
		t.Fatalf("Create returned dispatch %q, the room has %q", d.Id, got.Id)
	}
	if got.AgentName != "nobody" || got.Deployment != "canary" || got.Metadata != "m" || got.Attributes["k"] != "v" {
		t.Fatalf("dispatch = %v, want the request's fields", got)
	}
}

func TestCreateExistingRoomAddsDispatch(t *testing.T) {
	srv := server(t)
	c := dispatch.NewClient(srv.URL, srv.APIKey, srv.APISecret)
	room := livekittest.UniqueName("existing")
	first, err := c.Create(t.Context(), &livekit.CreateAgentDispatchRequest{Room: room, AgentName: "a1"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Create(t.Context(), &livekit.CreateAgentDispatchRequest{Room: room, AgentName: "a2"})
	if err != nil {
		t.Fatal(err)
	}
	if first.Id == second.Id {
		t.Fatalf("two different dispatches got one ID %q", first.Id)
	}
	if n := len(srv.ListDispatches(t, room)); n != 2 {
		t.Fatalf("room has %d dispatches, want 2", n)
	}
	if err := c.Delete(t.Context(), room, second.Id); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(t.Context(), room, second.Id); !errors.Is(err, dispatch.ErrNotFound) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}
	ds, err := c.List(t.Context(), room)
	if err != nil || len(ds) != 1 || ds[0].Id != first.Id {
		t.Fatalf("List = %v, %v; want only %s", ds, err, first.Id)
	}
}

// Callers racing to create one room with one request share one dispatch;
// a different request for that room gets its own.
func TestCreateRacingCreators(t *testing.T) {
	srv := server(t)
	c := dispatch.NewClient(srv.URL, srv.APIKey, srv.APISecret)
	for round := range 3 {
		room := livekittest.UniqueName("race")
		req := &livekit.CreateAgentDispatchRequest{Room: room, AgentName: "racer", Deployment: "staging", Metadata: "call"}
		const n = 6
		ids := make([]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				d, err := c.Create(t.Context(), req)
				if err == nil {
					ids[i] = d.Id
				}
				errs[i] = err
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		ds := srv.ListDispatches(t, room)
		if len(ds) != 1 {
			t.Fatalf("round %d: room has %d dispatches, want 1: %v", round, len(ds), ds)
		}
		for i := range n {
			if ids[i] != ds[0].Id {
				t.Fatalf("round %d: caller %d got %q, the room's dispatch is %q", round, i, ids[i], ds[0].Id)
			}
		}
		other, err := c.Create(t.Context(), &livekit.CreateAgentDispatchRequest{Room: room, AgentName: "racer", Deployment: "staging", Metadata: "other"})
		if err != nil {
			t.Fatal(err)
		}
		if other.Id == ds[0].Id || len(srv.ListDispatches(t, room)) != 2 {
			t.Fatalf("round %d: a different request did not get a dispatch of its own", round)
		}
	}
}

func TestCreateWaitForJob(t *testing.T) {
	srv := server(t)
	agentName := livekittest.UniqueName("waiter")
	started := make(chan string, 4)
	w, err := worker.New(worker.Options{
		URL: srv.URL, APIKey: srv.APIKey, APISecret: srv.APISecret,
		AgentName: agentName, Deployment: "staging", Logger: livekittest.Logger(t),
	}, func(ctx context.Context, j *job.Job) error {
		started <- j.Info().GetDispatchId()
		<-ctx.Done()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.StopAndCancel(context.Background()) })

	c := dispatch.NewClient(srv.URL, srv.APIKey, srv.APISecret)
	room := livekittest.UniqueName("wait")
	d, err := c.Create(ctx, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agentName, Deployment: "staging"}, dispatch.WaitForJob())
	if err != nil {
		t.Fatal(err)
	}
	ds := srv.ListDispatches(t, room)
	if len(ds) != 1 || len(ds[0].GetState().GetJobs()) != 1 {
		t.Fatalf("after Create with WaitForJob the room lists %v, want one dispatch with its job", ds)
	}
	select {
	case id := <-started:
		if id != d.Id {
			t.Fatalf("the job ran dispatch %q, want %q", id, d.Id)
		}
	case <-ctx.Done():
		t.Fatal("the handler never started")
	}
}

// A dispatch made while no worker of its deployment exists is dropped by
// the server; a worker started later serves it as a held dispatch (a new
// dispatch). Create with WaitForJob follows it there and returns the
// dispatch whose job the worker took, not the dropped one.
func TestCreateWaitForJobFollowsHeld(t *testing.T) {
	srv := server(t)
	agentName := livekittest.UniqueName("late")
	room := livekittest.UniqueName("held")
	c := dispatch.NewClient(srv.URL, srv.APIKey, srv.APISecret)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	type created struct {
		d   *livekit.AgentDispatch
		err error
	}
	done := make(chan created, 1)
	go func() {
		d, err := c.Create(ctx, &livekit.CreateAgentDispatchRequest{Room: room, AgentName: agentName, Deployment: "staging"},
			dispatch.WaitForJob())
		done <- created{d, err}
	}()
	var first string
	for first == "" {
		if ds := srv.ListDispatches(t, room); len(ds) == 1 {
			first = ds[0].GetId()
		}
		select {
		case <-ctx.Done():
			t.Fatal("the dispatch was never listed")
		case <-time.After(50 * time.Millisecond):
		}
	}
	started := make(chan string, 4)
	w, err := worker.New(worker.Options{
		URL: srv.URL, APIKey: srv.APIKey, APISecret: srv.APISecret,
		AgentName: agentName, Deployment: "staging", Logger: livekittest.Logger(t),
		Held: worker.HeldOptions{After: time.Second},
	}, func(ctx context.Context, j *job.Job) error {
		started <- j.Info().GetDispatchId()
		<-ctx.Done()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.StopAndCancel(context.Background()) })
	var ran string
	select {
	case ran = <-started:
	case <-ctx.Done():
		t.Fatal("the handler never started")
	}
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if ran == first || res.d.GetId() != ran {
		t.Fatalf("the job ran dispatch %q (the dropped one: %q); Create returned %q, want the one that ran", ran, first, res.d.GetId())
	}
}

func TestWaitGone(t *testing.T) {
	srv := server(t)
	c := dispatch.NewClient(srv.URL, srv.APIKey, srv.APISecret)
	room := livekittest.UniqueName("gone")
	d, err := c.Create(t.Context(), &livekit.CreateAgentDispatchRequest{Room: room, AgentName: "nobody"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(t.Context(), room, d.Id); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := c.Wait(ctx, d); !errors.Is(err, dispatch.ErrGone) {
		t.Fatalf("Wait = %v, want ErrGone", err)
	}
}
