package worker_test

import (
	"context"
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

// ordered is a handler that records the order jobs start in and runs each
// until the test ends it.
type ordered struct {
	g       *gated
	mu      sync.Mutex
	started []string
}

func (o *ordered) handle(ctx context.Context, j *job.Job) error {
	o.mu.Lock()
	o.started = append(o.started, j.ID())
	o.mu.Unlock()
	return o.g.handle(ctx, j)
}

func (o *ordered) order() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.started)
}

// Jobs accepted beyond MaxJobs wait in a FIFO queue, reported pending to
// the server, and start in order as slots free.
func TestQueueRunsJobsInOrder(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "queue-bot", "")
	o.MaxJobs, o.MaxQueued = 1, 3
	h := &ordered{g: newGated()}
	r := startWorker(t, o, h.handle)
	c := mustConn(t, srv)
	var jobs []*livekit.Job
	for range 4 {
		j := workertest.NewJob("queue-bot", "")
		if res := dispatch(t, c, j); !res.GetAvailable() {
			t.Fatalf("offer %d declined with a free queue", len(jobs)+1)
		}
		jobs = append(jobs, j)
	}
	h.g.waitStarted(t, jobs[0].GetId())
	for _, j := range jobs[1:] {
		waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_PENDING)
	}
	if s := r.w.Snapshot(); s.Queued != 3 || len(s.Jobs) != 4 || !s.Jobs[1].Queued {
		t.Fatalf("snapshot: %d queued of %d jobs (%+v), want 3 of 4", s.Queued, len(s.Jobs), s.Jobs)
	}
	if got := metricValue(t, r.w, "jobs_queued", "", ""); got != 3 {
		t.Errorf("lkagent_jobs_queued = %v, want 3", got)
	}
	for i, j := range jobs[:3] {
		h.g.open(j.GetId())
		h.g.waitStarted(t, jobs[i+1].GetId())
	}
	h.g.open(jobs[3].GetId())
	for _, j := range jobs {
		waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_SUCCESS)
	}
	want := []string{jobs[0].GetId(), jobs[1].GetId(), jobs[2].GetId(), jobs[3].GetId()}
	if got := h.order(); !slices.Equal(got, want) {
		t.Fatalf("jobs started in order %v, want %v", got, want)
	}
	if got := metricValue(t, r.w, "jobs_queued", "", ""); got != 0 {
		t.Errorf("lkagent_jobs_queued = %v after the queue emptied, want 0", got)
	}
}

// The worker reports a load the server understands: below its target load
// (0.7) until slots and queue are full, the slots weighing most, so that
// MaxJobs jobs run at once; full (and declining) only when the queue is.
func TestLoadMapsFullnessOntoServerTargetLoad(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "cap-bot", "")
	o.MaxJobs, o.MaxQueued = 10, 10
	g := newGated()
	r := startWorker(t, o, g.handle)
	c := mustConn(t, srv)
	ctx := waitCtx(t)
	check := func(jobs int, want float32, st livekit.WorkerStatus) {
		t.Helper()
		u, err := c.WaitWorkerStatus(ctx, func(u *livekit.UpdateWorkerStatus) bool { return u.GetJobCount() == uint32(jobs) })
		if err != nil {
			t.Fatalf("no status with %d jobs: %v", jobs, err)
		}
		if d := u.GetLoad() - want; d > 0.001 || d < -0.001 || u.GetStatus() != st {
			t.Errorf("%d jobs: load %v status %s, want %v %s", jobs, u.GetLoad(), u.GetStatus(), want, st)
		}
	}
	for i := 1; i <= 20; i++ {
		if res := dispatch(t, c, workertest.NewJob("cap-bot", "")); !res.GetAvailable() {
			t.Fatalf("offer %d declined", i)
		}
		switch i {
		case 7: // the old mapping (jobs/MaxJobs) reported 0.7 here: no more offers
			check(i, 0.7*0.85*7/10, livekit.WorkerStatus_WS_AVAILABLE)
		case 10:
			check(i, 0.7*0.85, livekit.WorkerStatus_WS_AVAILABLE)
		case 15:
			check(i, 0.7*(0.85+0.15*5/10), livekit.WorkerStatus_WS_AVAILABLE)
		case 20:
			check(i, 0.7, livekit.WorkerStatus_WS_FULL)
		}
	}
	if n := len(r.w.Snapshot().Jobs) - r.w.Snapshot().Queued; n != 10 {
		t.Errorf("%d jobs running, want MaxJobs = 10", n)
	}
	if res, err := c.Offer(ctx, workertest.NewJob("cap-bot", "")); err != nil || res.GetAvailable() {
		t.Fatalf("offer with slots and queue full: %v %v, want declined", res, err)
	}
	if got := metricValue(t, r.w, "offers_declined_total", "reason", worker.DeclineFull); got != 1 {
		t.Errorf("offers_declined_total{reason=full} = %v, want 1", got)
	}
	for _, id := range runningJobs(r.w) {
		g.open(id)
	}
}

// A job that waited QueueTimeout for a slot is reported failed with that
// reason, and counted; a queued job the server terminates never runs.
func TestQueueTimeoutAndTermination(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "late-bot", "")
	o.MaxJobs, o.MaxQueued, o.QueueTimeout = 1, 2, 300*time.Millisecond
	h := &ordered{g: newGated()}
	r := startWorker(t, o, h.handle)
	c := mustConn(t, srv)
	first, late, dropped := workertest.NewJob("late-bot", ""), workertest.NewJob("late-bot", ""), workertest.NewJob("late-bot", "")
	dispatch(t, c, first)
	h.g.waitStarted(t, first.GetId())
	dispatch(t, c, dropped)
	waitStatus(t, c, dropped.GetId(), livekit.JobStatus_JS_PENDING)
	if err := c.Terminate(dropped.GetId()); err != nil {
		t.Fatal(err)
	}
	dispatch(t, c, late)
	u := waitStatus(t, c, late.GetId(), livekit.JobStatus_JS_FAILED)
	if !strings.Contains(u.GetError(), "queue") || !strings.Contains(u.GetError(), "QueueTimeout") {
		t.Errorf("queue timeout reported as %q", u.GetError())
	}
	eventually(t, "the queue timeout counted", func() bool {
		return metricValue(t, r.w, "jobs_finished_total", "status", "queue_timeout") == 1
	})
	h.g.open(first.GetId())
	waitStatus(t, c, first.GetId(), livekit.JobStatus_JS_SUCCESS)
	if got := h.order(); !slices.Equal(got, []string{first.GetId()}) {
		t.Fatalf("ran %v, want only the first job", got)
	}
	eventually(t, "no job left", func() bool { s := r.w.Snapshot(); return len(s.Jobs) == 0 && s.Queued == 0 })
}

// A drain lets queued jobs run (they are calls) within DrainTimeout: Run
// returns after the last of them.
func TestDrainRunsQueuedJobs(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "drainq-bot", "")
	o.MaxJobs, o.MaxQueued, o.DrainTimeout = 2, 4, patience
	h := &ordered{g: newGated()}
	r := startWorker(t, o, h.handle)
	c := mustConn(t, srv)
	var ids []string
	for range 6 {
		j := workertest.NewJob("drainq-bot", "")
		dispatch(t, c, j)
		ids = append(ids, j.GetId())
	}
	eventually(t, "2 running and 4 queued", func() bool { return r.w.Snapshot().Queued == 4 && len(runningJobs(r.w)) == 6 })
	r.cancel() // drain
	for _, id := range ids {
		eventually(t, "job "+id+" to start", func() bool { return slices.Contains(h.order(), id) })
		h.g.open(id)
	}
	if err := r.wait(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if got := h.order(); len(got) != 6 {
		t.Fatalf("%d of 6 jobs ran during the drain", len(got))
	}
}

// Jobs still queued when the drain times out never start: they are
// reported failed, saying so.
func TestDrainTimeoutFailsQueuedJobs(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "drainqt-bot", "")
	o.MaxJobs, o.MaxQueued, o.DrainTimeout = 1, 2, 300*time.Millisecond
	g := newGated()
	r := startWorker(t, o, g.handle)
	c := mustConn(t, srv)
	a, b := workertest.NewJob("drainqt-bot", ""), workertest.NewJob("drainqt-bot", "")
	dispatch(t, c, a)
	g.waitStarted(t, a.GetId())
	dispatch(t, c, b)
	waitStatus(t, c, b.GetId(), livekit.JobStatus_JS_PENDING)
	r.cancel()
	u := waitStatus(t, c, b.GetId(), livekit.JobStatus_JS_FAILED)
	if !strings.Contains(u.GetError(), "not started") || !strings.Contains(u.GetError(), "drain") {
		t.Errorf("queued job at the drain timeout reported as %q", u.GetError())
	}
	if err := r.wait(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if got := metricValue(t, r.w, "jobs_finished_total", "status", "drain_timeout"); got != 1 { // Run returned: counted
		t.Errorf("jobs_finished_total{status=drain_timeout} = %v, want 1", got)
	}
}
