package worker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// One test per transition that ends a job's way through the worker, each
// seen as the job's last event: the declines (offered → declined, with
// their reason) and the ends of queued jobs (queued → ended). The
// offered → started → ended and offered → queued → started → ended paths
// are TestJobEvents'; queued → ended by a stop is
// TestJobEventsQueuedJobDrained's.
func TestJobTransitions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts func(*worker.Options)
		// act does what leads to the transition, and returns the job whose
		// last event is checked.
		act  func(t *testing.T, w *worker.Worker, c *workertest.Conn, g *gated) string
		want func(worker.Event) bool
	}{
		{"offered → declined: foreign deployment", nil,
			func(t *testing.T, _ *worker.Worker, c *workertest.Conn, _ *gated) string {
				j := workertest.NewJob("trans-bot", "canary")
				offerDeclined(t, c, j)
				return j.GetId()
			}, declinedFor(worker.DeclineForeignDeployment)},
		{"offered → declined: duplicate", nil,
			func(t *testing.T, _ *worker.Worker, c *workertest.Conn, g *gated) string {
				j := workertest.NewJob("trans-bot", "")
				dispatch(t, c, j)
				g.waitStarted(t, j.GetId())
				offerDeclined(t, c, j)
				return j.GetId()
			}, declinedFor(worker.DeclineDuplicate)},
		{"offered → declined: full", func(o *worker.Options) { o.MaxJobs, o.MaxQueued = 1, -1 },
			func(t *testing.T, _ *worker.Worker, c *workertest.Conn, g *gated) string {
				j1, j2 := workertest.NewJob("trans-bot", ""), workertest.NewJob("trans-bot", "")
				dispatch(t, c, j1)
				g.waitStarted(t, j1.GetId())
				offerDeclined(t, c, j2)
				return j2.GetId()
			}, declinedFor(worker.DeclineFull)},
		{"offered → declined: rejected by OnRequest", func(o *worker.Options) {
			o.OnRequest = func(_ context.Context, r *job.Request) error { return r.Reject() }
		}, func(t *testing.T, _ *worker.Worker, c *workertest.Conn, _ *gated) string {
			j := workertest.NewJob("trans-bot", "")
			offerDeclined(t, c, j)
			return j.GetId()
		}, declinedFor(worker.DeclineRejected)},
		{"offered → declined: draining", nil,
			func(t *testing.T, w *worker.Worker, c *workertest.Conn, g *gated) string {
				j1 := workertest.NewJob("trans-bot", "")
				dispatch(t, c, j1)
				g.waitStarted(t, j1.GetId())
				go func() { _ = w.Drain(waitCtx(t)) }()
				eventually(t, "the worker to drain", func() bool { return w.Snapshot().Draining })
				j2 := workertest.NewJob("trans-bot", "")
				offerDeclined(t, c, j2)
				g.open(j1.GetId())
				return j2.GetId()
			}, declinedFor(worker.DeclineDraining)},
		{"queued → ended: queue timeout", func(o *worker.Options) { o.MaxJobs, o.MaxQueued, o.QueueTimeout = 1, 1, 200*time.Millisecond },
			func(t *testing.T, _ *worker.Worker, c *workertest.Conn, g *gated) string {
				j1, j2 := workertest.NewJob("trans-bot", ""), workertest.NewJob("trans-bot", "")
				dispatch(t, c, j1)
				g.waitStarted(t, j1.GetId())
				dispatch(t, c, j2)
				return j2.GetId()
			}, func(e worker.Event) bool {
				return e.Kind == worker.EventEnded && e.Status == worker.StatusQueueTimeout && e.Err != nil && e.Cause == nil
			}},
		{"queued → ended: terminated by the server", func(o *worker.Options) { o.MaxJobs, o.MaxQueued = 1, 1 },
			func(t *testing.T, w *worker.Worker, c *workertest.Conn, g *gated) string {
				j1, j2 := workertest.NewJob("trans-bot", ""), workertest.NewJob("trans-bot", "")
				dispatch(t, c, j1)
				g.waitStarted(t, j1.GetId())
				dispatch(t, c, j2)
				eventually(t, "j2 queued", func() bool { return w.Snapshot().Queued == 1 })
				sendTermination(t, c, j2.GetId())
				return j2.GetId()
			}, func(e worker.Event) bool {
				return e.Kind == worker.EventEnded && e.Status == worker.StatusTerminated && errors.Is(e.Cause, job.ErrTerminated)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			o := testOptions(srv, "trans-bot", "")
			if tc.opts != nil {
				tc.opts(&o)
			}
			g := newGated()
			w := newWorker(t, o, g.handle)
			sub := w.Subscribe()
			defer sub.Close()
			if err := w.Start(waitCtx(t)); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = w.StopAndCancel(waitCtx(t)) }()
			c := mustConn(t, srv)
			id := tc.act(t, w, c, g)
			e, seen := nextEvent(t, sub, "the job's last event", func(e worker.Event) bool {
				return e.JobID == id && (e.Kind == worker.EventDeclined || e.Kind == worker.EventEnded)
			})
			if !tc.want(e) {
				t.Errorf("job %s: last event %+v; events %+v", id, e, seen)
			}
		})
	}
}

// offerDeclined offers j on c and fails the test unless the worker declines.
func offerDeclined(t *testing.T, c *workertest.Conn, j *livekit.Job) {
	t.Helper()
	res, err := c.Offer(waitCtx(t), j)
	if err != nil || res.GetAvailable() {
		t.Fatalf("offer of %s: %v %v, want declined", j.GetId(), res, err)
	}
}

// declinedFor matches a decline for reason.
func declinedFor(reason string) func(worker.Event) bool {
	return func(e worker.Event) bool { return e.Kind == worker.EventDeclined && e.Reason == reason }
}
