package e2e

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/wait"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// runOn runs a worker against s until the test ends; registrations counts
// its registrations.
func runOn(t *testing.T, s *lkserver.Server, o worker.Options, h job.Handler, registrations *atomic.Int32) *worker.Worker {
	t.Helper()
	o.URL, o.APIKey, o.APISecret = s.URL(), s.APIKey(), s.APISecret()
	o.OnStateChange = func(c worker.StateChange) {
		if c.State == worker.StateRegistered {
			registrations.Add(1)
		}
	}
	return startWorkerAt(t, o, h)
}

// waitFor waits for cond as wait.Until does, and returns how long it took.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	wait.Until(t, timeout, what, cond)
	return time.Since(start)
}

// The server dies while a job runs and comes back on the same port: the
// worker re-registers with its deployment, the running handler is never
// cancelled, and a new staging dispatch reaches the staging worker only.
func TestServerRestartReregisters(t *testing.T) {
	t.Parallel()
	s := lkserver.StartTB(t, lkserver.Options{})
	agent := uniq("restart")
	staging, prod := newRecorder("staging", true), newRecorder("", true)
	var cancelled atomic.Bool
	var regS, regP atomic.Int32
	hold := func(r *recorder) job.Handler {
		return func(ctx context.Context, j *job.Job) error {
			err := r.handle(ctx, j)
			if context.Cause(ctx) != nil && ctx.Err() != nil {
				cancelled.Store(true)
			}
			return err
		}
	}
	fast := worker.Options{AgentName: agent, MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	so, po := fast, fast
	so.Deployment = "staging"
	runOn(t, s, so, hold(staging), &regS)
	runOn(t, s, po, hold(prod), &regP)

	dc := lksdk.NewAgentDispatchServiceClient(s.HTTPURL(), s.APIKey(), s.APISecret())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := dc.CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{AgentName: agent, Room: uniq("room"), Deployment: "staging"}); err != nil {
		t.Fatal(err)
	}
	if got := waitRun(t, 20*time.Second, staging.runs, prod.runs); got.Worker != "staging" {
		t.Fatalf("first dispatch ran as %+v", got)
	}

	killed := time.Now()
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	up := time.Since(killed)
	waitFor(t, 30*time.Second, "re-registration of both workers", func() bool { return regS.Load() >= 2 && regP.Load() >= 2 })
	t.Logf("server killed and back up after %s; both workers re-registered %s after the kill",
		up.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
	lkserver.AwaitRouting()
	if cancelled.Load() {
		t.Fatal("the running handler was cancelled by the control-plane loss")
	}

	for range 3 {
		if _, err := dc.CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{AgentName: agent, Room: uniq("room"), Deployment: "staging"}); err != nil {
			t.Fatal(err)
		}
		if got := waitRun(t, 20*time.Second, staging.runs, prod.runs); got.Worker != "staging" || got.Deployment != "staging" {
			t.Fatalf("staging dispatch after restart ran as %+v", got)
		}
	}
	if cancelled.Load() {
		t.Fatal("the job that ran across the restart was cancelled")
	}
}

// A worker at MaxJobs declines further offers and the server routes them to
// a second worker of the same deployment.
func TestMaxJobsRoutesToSecondWorker(t *testing.T) {
	t.Parallel()
	agent := uniq("cap")
	a, b := newRecorder("staging", true), newRecorder("staging", true)
	wa := startWorker(t, worker.Options{AgentName: agent, Deployment: "staging", MaxJobs: 1, MaxQueued: -1}, a.handle)
	createDispatchAndWait(t, agent, a.runs)
	// Only now start the second worker: the first job surely went to a.
	startWorker(t, worker.Options{AgentName: agent, Deployment: "staging", MaxJobs: 10}, b.handle)
	for range 4 {
		createDispatch(t, agent, uniq("room"), "staging")
		got := waitRun(t, 20*time.Second, a.runs, b.runs)
		if got.Room == "" {
			t.Fatal("empty run")
		}
		select {
		case <-a.runs:
			t.Fatal("the worker at MaxJobs ran a second job")
		default:
		}
	}
	if n := len(wa.Snapshot().Jobs); n != 1 {
		t.Fatalf("worker with MaxJobs=1 runs %d jobs", n)
	}
	expectNoRun(t, time.Second, a.runs)
}

func createDispatchAndWait(t *testing.T, agent string, runs chan ran) ran {
	t.Helper()
	createDispatch(t, agent, uniq("room"), "staging")
	return waitRun(t, 20*time.Second, runs)
}

// Two server nodes share a Redis: a staging worker registered on node B
// runs the staging dispatch created through node A; a production worker on
// node A never sees it.
func TestTwoNodeClusterRoutesByDeployment(t *testing.T) {
	t.Parallel()
	nodeA, nodeB := startCluster(t)

	agent := uniq("cluster")
	staging, prod := newRecorder("staging", true), newRecorder("", true)
	var r1, r2 atomic.Int32
	runOn(t, nodeB, worker.Options{AgentName: agent, Deployment: "staging"}, staging.handle, &r1)
	wp := runOn(t, nodeA, worker.Options{AgentName: agent}, prod.handle, &r2)

	dc := lksdk.NewAgentDispatchServiceClient(nodeA.HTTPURL(), nodeA.APIKey(), nodeA.APISecret())
	for range 3 {
		room := uniq("room")
		if _, err := dc.CreateDispatch(t.Context(), &livekit.CreateAgentDispatchRequest{AgentName: agent, Room: room, Deployment: "staging"}); err != nil {
			t.Fatal(err)
		}
		got := waitRun(t, 30*time.Second, staging.runs, prod.runs)
		if got.Worker != "staging" || got.Room != room {
			t.Fatalf("staging dispatch through node A ran as %+v", got)
		}
	}
	expectNoRun(t, 2*time.Second, prod.runs)
	// Not even offered: the cluster routed by deployment.
	fams, err := wp.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "lkagent_offers_received_total" {
			if v := f.GetMetric()[0].GetCounter().GetValue(); v != 0 {
				t.Fatalf("the production worker on node A was offered %v jobs", v)
			}
			return
		}
	}
	t.Fatal("no lkagent_offers_received_total metric")
}
