package worker_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

func TestJobOutcomes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		handler job.Handler
		want    livekit.JobStatus
		wantErr string // in the status' error text
	}{
		{"returns nil", func(context.Context, *job.Job) error { return nil },
			livekit.JobStatus_JS_SUCCESS, ""},
		{"returns an error", func(context.Context, *job.Job) error { return errors.New("database unreachable") },
			livekit.JobStatus_JS_FAILED, "database unreachable"},
		{"panics", func(context.Context, *job.Job) error { panic("handler exploded") },
			livekit.JobStatus_JS_FAILED, "handler exploded"},
		{"panics with an error", func(context.Context, *job.Job) error { panic(errors.New("nil map")) },
			livekit.JobStatus_JS_FAILED, "nil map"},
		{"shuts itself down", func(ctx context.Context, j *job.Job) error {
			j.Shutdown("conversation over")
			<-ctx.Done()
			if !errors.Is(context.Cause(ctx), job.ErrShutdown) {
				return errors.New("cause is not ErrShutdown")
			}
			return ctx.Err()
		}, livekit.JobStatus_JS_SUCCESS, ""},
		{"shuts itself down and returns the cause", func(ctx context.Context, j *job.Job) error {
			j.Shutdown("")
			<-ctx.Done()
			return context.Cause(ctx)
		}, livekit.JobStatus_JS_SUCCESS, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			var mu sync.Mutex
			var first string
			var ran []string
			h := func(ctx context.Context, j *job.Job) error {
				mu.Lock()
				if first == "" {
					first = j.ID()
				}
				isFirst := first == j.ID()
				ran = append(ran, j.ID())
				mu.Unlock()
				if isFirst {
					return tc.handler(ctx, j)
				}
				return nil
			}
			startWorker(t, testOptions(srv, "outcome-bot", "staging"), h)
			c := mustConn(t, srv)

			j := workertest.NewJob("outcome-bot", "staging")
			dispatch(t, c, j)
			u := waitStatus(t, c, j.GetId(), tc.want)
			if !strings.Contains(u.GetError(), tc.wantErr) || (tc.wantErr == "" && u.GetError() != "") {
				t.Errorf("status error %q, want it to contain %q", u.GetError(), tc.wantErr)
			}
			if got := statusesOf(c.JobStatuses(), j.GetId()); !slices.Equal(got, []livekit.JobStatus{livekit.JobStatus_JS_RUNNING, tc.want}) {
				t.Errorf("statuses %v, want running then %s", got, tc.want)
			}
			jt := u.GetJoinTiming()
			if jt.GetOfferReceivedUs() == 0 || jt.GetAcceptedUs() < jt.GetOfferReceivedUs() ||
				jt.GetAssignmentReceivedUs() < jt.GetAcceptedUs() || jt.GetLaunchedUs() < jt.GetAssignmentReceivedUs() {
				t.Errorf("join timing %v is not a sequence of recorded instants", jt)
			}

			// Whatever the first job did, the worker runs the next one.
			next := workertest.NewJob("outcome-bot", "staging")
			dispatch(t, c, next)
			waitStatus(t, c, next.GetId(), livekit.JobStatus_JS_SUCCESS)
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(ran, []string{j.GetId(), next.GetId()}) {
				t.Errorf("ran %v, want each job once", ran)
			}
		})
	}
}

func TestHandlerSeesTheJob(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	rec := newRecorder()
	defer rec.releaseAll()
	startWorker(t, testOptions(srv, "see-bot", "canary"), rec.handle)
	c := mustConn(t, srv)
	j := workertest.NewJob("see-bot", "canary")
	j.Metadata = `{"ticket":42}`
	res := dispatch(t, c, j)
	got := rec.waitStarted(t)
	if got.ID() != j.GetId() || got.AgentName() != "see-bot" || got.Deployment() != "canary" ||
		got.RoomName() != j.GetRoom().GetName() || got.Metadata() != j.GetMetadata() ||
		got.Identity() != res.GetParticipantIdentity() {
		t.Errorf("handler saw job %s agent %q deployment %q room %q metadata %q identity %q; sent %v",
			got.ID(), got.AgentName(), got.Deployment(), got.RoomName(), got.Metadata(), got.Identity(), j)
	}
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_RUNNING)
}

func TestTerminationCancelsJob(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	type result struct {
		cause, hookReason error
		hooksRan          []string
		liveBefore        bool
	}
	results := make(chan result, 1)
	started := make(chan struct{})
	h := func(ctx context.Context, j *job.Job) error {
		if j.Metadata() == "barrier" {
			return nil
		}
		var res result
		var mu sync.Mutex
		j.OnShutdown(func(_ context.Context, reason error) {
			mu.Lock()
			defer mu.Unlock()
			res.hookReason = reason
			res.hooksRan = append(res.hooksRan, "first")
		})
		j.OnShutdown(func(context.Context, error) {
			mu.Lock()
			defer mu.Unlock()
			res.hooksRan = append(res.hooksRan, "second")
		})
		res.liveBefore = ctx.Err() == nil
		close(started)
		<-ctx.Done()
		res.cause = context.Cause(ctx)
		// The hooks run after the handler returned; report from a hook
		// added last.
		j.OnShutdown(func(context.Context, error) {
			mu.Lock()
			defer mu.Unlock()
			results <- res
		})
		return ctx.Err()
	}
	startWorker(t, testOptions(srv, "term-bot", ""), h)
	c := mustConn(t, srv)
	j := workertest.NewJob("term-bot", "")
	dispatch(t, c, j)
	select {
	case <-started:
	case <-time.After(patience):
		t.Fatal("job did not start")
	}
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_RUNNING)
	if err := c.Terminate(j.GetId()); err != nil {
		t.Fatal(err)
	}
	var res result
	select {
	case res = <-results:
	case <-time.After(patience):
		t.Fatal("shutdown hooks did not run")
	}
	if !res.liveBefore {
		t.Errorf("job context was done before the termination")
	}
	if !errors.Is(res.cause, job.ErrTerminated) {
		t.Errorf("job context cause %v, want ErrTerminated", res.cause)
	}
	if !errors.Is(res.hookReason, job.ErrTerminated) {
		t.Errorf("shutdown hook reason %v, want ErrTerminated", res.hookReason)
	}
	if !slices.Equal(res.hooksRan, []string{"first", "second"}) {
		t.Errorf("hooks ran %v, want first then second", res.hooksRan)
	}
	// The server recorded the end when it terminated the job: the worker
	// sends no status the server would drop as an unknown job's. A job run
	// next is a barrier: its status comes after anything sent for j.
	barrier := workertest.NewJob("term-bot", "")
	barrier.Metadata = "barrier"
	dispatch(t, c, barrier)
	waitStatus(t, c, barrier.GetId(), livekit.JobStatus_JS_SUCCESS)
	if u := c.UnknownStatuses(); len(u) != 0 {
		t.Errorf("statuses after the termination, dropped by the server: %s", statuses(u))
	}
	if got := statusesOf(c.JobStatuses(), j.GetId()); !slices.Equal(got, []livekit.JobStatus{livekit.JobStatus_JS_RUNNING}) {
		t.Errorf("statuses %v, want running only", got)
	}
}

func TestJobOwnsItsSlotUntilItEnds(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "slot-bot", "")
	o.MaxJobs, o.MaxQueued = 1, -1
	rec := newRecorder()
	r := startWorker(t, o, rec.handle)
	c := mustConn(t, srv)
	ctx := waitCtx(t)
	a := workertest.NewJob("slot-bot", "")
	dispatch(t, c, a)
	rec.waitStarted(t)
	if res, err := c.Offer(ctx, workertest.NewJob("slot-bot", "")); err != nil || res.GetAvailable() {
		t.Fatalf("offer while a job holds the only slot: %v %v, want declined", res, err)
	}
	if got := metricValue(t, r.w, "offers_declined_total", "reason", worker.DeclineFull); got != 1 {
		t.Errorf("offers_declined_total{reason=full} = %v, want 1", got)
	}
	rec.releaseAll()
	waitStatus(t, c, a.GetId(), livekit.JobStatus_JS_SUCCESS)
	b := workertest.NewJob("slot-bot", "")
	eventually(t, "the slot freed by the finished job", func() bool {
		res, err := c.Offer(ctx, b)
		return err == nil && res.GetAvailable()
	})
}
