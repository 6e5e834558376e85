package worker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// nextEvent waits for the next event on sub for which match holds, and
// returns it with every event seen before it.
func nextEvent(t testing.TB, sub *worker.Subscription, what string, match func(worker.Event) bool) (worker.Event, []worker.Event) {
	t.Helper()
	var seen []worker.Event
	ctx := waitCtx(t)
	for {
		select {
		case e, ok := <-sub.C:
			if !ok {
				t.Fatalf("subscription closed while waiting for %s", what)
			}
			seen = append(seen, e)
			if match(e) {
				return e, seen
			}
		case <-ctx.Done():
			t.Fatalf("no %s event; saw %v", what, seen)
		}
	}
}

func ended(id string) func(worker.Event) bool {
	return func(e worker.Event) bool { return e.Kind == worker.EventEnded && e.JobID == id }
}

// Every job meets its events in order: offered, then declined (with the
// reason), or queued and/or started, then exactly one ended with its
// status, error and cause.
func TestJobEvents(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "event-bot", "")
	o.MaxJobs, o.MaxQueued = 1, 1
	failing := errors.New("handler failed on purpose")
	g := newGated()
	w := newWorker(t, o, func(ctx context.Context, j *job.Job) error {
		if j.Metadata() == "fail" {
			return failing
		}
		return g.handle(ctx, j)
	})
	sub := w.Subscribe()
	defer sub.Close()
	if err := w.Start(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.StopAndCancel(waitCtx(t)) }()
	c := mustConn(t, srv)

	foreign := workertest.NewJob("someone-else", "")
	if res, err := c.Offer(waitCtx(t), foreign); err != nil || res.GetAvailable() {
		t.Fatalf("foreign offer: %v %v", res, err)
	}
	j1, j2, j3 := workertest.NewJob("event-bot", ""), workertest.NewJob("event-bot", ""), workertest.NewJob("event-bot", "")
	j3.Metadata = "fail"
	dispatch(t, c, j1)
	g.waitStarted(t, j1.GetId())
	dispatch(t, c, j2) // queued behind j1
	var all []worker.Event
	_, seen := nextEvent(t, sub, "queued", func(e worker.Event) bool { return e.Kind == worker.EventQueued && e.JobID == j2.GetId() })
	all = append(all, seen...)
	g.open(j1.GetId())
	g.waitStarted(t, j2.GetId())
	sendTermination(t, c, j2.GetId())
	e2, seen := nextEvent(t, sub, "j2 ended", ended(j2.GetId()))
	all = append(all, seen...)
	dispatch(t, c, j3)
	e3, seen := nextEvent(t, sub, "j3 ended", ended(j3.GetId()))
	all = append(all, seen...)

	kinds := func(id string) []worker.EventKind {
		var ks []worker.EventKind
		for _, e := range all {
			if e.JobID == id {
				ks = append(ks, e.Kind)
			}
		}
		return ks
	}
	for _, tc := range []struct {
		id   string
		want []worker.EventKind
	}{
		{foreign.GetId(), []worker.EventKind{worker.EventOffered, worker.EventDeclined}},
		{j1.GetId(), []worker.EventKind{worker.EventOffered, worker.EventStarted, worker.EventEnded}},
		{j2.GetId(), []worker.EventKind{worker.EventOffered, worker.EventQueued, worker.EventStarted, worker.EventEnded}},
		{j3.GetId(), []worker.EventKind{worker.EventOffered, worker.EventStarted, worker.EventEnded}},
	} {
		if got := kinds(tc.id); !slices.Equal(got, tc.want) {
			t.Errorf("job %s: events %v, want %v", tc.id, got, tc.want)
		}
	}
	for _, e := range all {
		switch {
		case e.JobID == foreign.GetId() && e.Kind == worker.EventDeclined && e.Reason != worker.DeclineForeignAgent:
			t.Errorf("foreign offer declined with %q, want %q", e.Reason, worker.DeclineForeignAgent)
		case e.JobID == j1.GetId() && e.Kind == worker.EventEnded && (e.Status != worker.StatusSuccess || e.Err != nil || e.Cause != nil):
			t.Errorf("j1 ended %+v, want success without error or cause", e)
		case e.Time.IsZero() || e.Room == "":
			t.Errorf("event without time or room: %+v", e)
		}
	}
	if e2.Status != worker.StatusTerminated || !errors.Is(e2.Cause, job.ErrTerminated) {
		t.Errorf("j2 ended %+v, want terminated by job.ErrTerminated", e2)
	}
	if e3.Status != worker.StatusFailed || e3.Err == nil || e3.Err.Error() != failing.Error() || e3.Cause != nil {
		t.Errorf("j3 ended %+v, want failed with %q and no cause", e3, failing)
	}
	if n := sub.Dropped(); n != 0 {
		t.Errorf("%d events dropped", n)
	}
	waitStatus(t, c, j3.GetId(), livekit.JobStatus_JS_FAILED)
}

// A queued job the worker stops before it started ends with
// StatusDrainTimeout, and a Subscribe for some kinds gets only those.
func TestJobEventsQueuedJobDrained(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "event-bot", "")
	o.MaxJobs, o.MaxQueued = 1, 1
	g := newGated()
	w := newWorker(t, o, g.handle)
	sub := w.Subscribe(worker.EventEnded)
	defer sub.Close()
	if err := w.Start(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	c := mustConn(t, srv)
	j1, j2 := workertest.NewJob("event-bot", ""), workertest.NewJob("event-bot", "")
	dispatch(t, c, j1)
	g.waitStarted(t, j1.GetId())
	dispatch(t, c, j2)
	eventually(t, "j2 to be queued", func() bool { return w.Snapshot().Queued == 1 })
	if err := w.StopAndCancel(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	got := map[string]worker.Event{}
	for len(got) < 2 {
		e, _ := nextEvent(t, sub, "ended", func(worker.Event) bool { return true })
		if e.Kind != worker.EventEnded {
			t.Fatalf("got a %s event from a subscription to ended only", e.Kind)
		}
		got[e.JobID] = e
	}
	if e := got[j2.GetId()]; e.Status != worker.StatusDrainTimeout || !errors.Is(e.Err, job.ErrWorkerStopped) {
		t.Errorf("queued j2 ended %+v, want %s with an error wrapping job.ErrWorkerStopped", e, worker.StatusDrainTimeout)
	}
	if e := got[j1.GetId()]; e.Status != worker.StatusFailed || !errors.Is(e.Cause, job.ErrWorkerStopped) {
		t.Errorf("running j1 ended %+v, want failed, cancelled by job.ErrWorkerStopped", e)
	}
	sub.Close()
	sub.Close() // twice is fine
	if _, ok := <-sub.C; ok {
		t.Error("C still open after Close")
	}
}

func ExampleWorker_Subscribe() {
	w, err := worker.New(worker.Options{URL: "ws://127.0.0.1:7880", APIKey: "devkey", APISecret: "secret", AgentName: "support-bot"},
		func(ctx context.Context, j *job.Job) error { return nil })
	if err != nil {
		fmt.Println(err)
		return
	}
	sub := w.Subscribe(worker.EventStarted, worker.EventEnded)
	defer sub.Close()
	go func() {
		for e := range sub.C {
			switch e.Kind {
			case worker.EventStarted:
				fmt.Println("job", e.JobID, "started in", e.Room)
			case worker.EventEnded:
				fmt.Println("job", e.JobID, "ended:", e.Status, e.Err, e.Cause)
			}
		}
	}()
	// ... w.Run(ctx)
}
