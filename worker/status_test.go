package worker_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// statusIs matches a worker status by availability and job count.
func statusIs(st livekit.WorkerStatus, jobs uint32) func(*livekit.UpdateWorkerStatus) bool {
	return func(u *livekit.UpdateWorkerStatus) bool {
		return u.GetStatus() == st && u.GetJobCount() == jobs
	}
}

// checkSeq fails the test unless the statuses' seq strictly increases.
func checkSeq(t testing.TB, us []*livekit.UpdateWorkerStatus) {
	t.Helper()
	for i := 1; i < len(us); i++ {
		if us[i].GetSeq() <= us[i-1].GetSeq() {
			t.Fatalf("worker status seq not strictly increasing: #%d has seq %d after %d", i, us[i].GetSeq(), us[i-1].GetSeq())
		}
	}
}

func TestWorkerStatusTracksJobs(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "status-bot", "")
	o.MaxJobs, o.MaxQueued = 2, -1
	o.LoadThreshold = 1
	startWorker(t, o, func(ctx context.Context, j *job.Job) error {
		<-ctx.Done()
		return ctx.Err()
	})
	c := mustConn(t, srv)
	ctx := waitCtx(t)
	if _, err := c.WaitWorkerStatus(ctx, statusIs(livekit.WorkerStatus_WS_AVAILABLE, 0)); err != nil {
		t.Fatalf("no initial available status: %v", err)
	}
	a, b := workertest.NewJob("status-bot", ""), workertest.NewJob("status-bot", "")
	dispatch(t, c, a)
	one, err := c.WaitWorkerStatus(ctx, statusIs(livekit.WorkerStatus_WS_AVAILABLE, 1))
	if err != nil {
		t.Fatalf("no status with one job: %v", err)
	}
	// Half full, on the server's scale: half its target load (0.7).
	if one.GetLoad() != 0.35 {
		t.Errorf("load with 1 of 2 jobs = %v, want 0.35", one.GetLoad())
	}
	dispatch(t, c, b)
	full, err := c.WaitWorkerStatus(ctx, statusIs(livekit.WorkerStatus_WS_FULL, 2))
	if err != nil {
		t.Fatalf("no full status at MaxJobs: %v", err)
	}
	if full.GetLoad() != 0.7 || full.GetDraining() {
		t.Errorf("status at MaxJobs: load %v draining %v, want 0.7 (the server's target load) and false", full.GetLoad(), full.GetDraining())
	}
	if err := c.Terminate(a.GetId()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitWorkerStatus(ctx, func(u *livekit.UpdateWorkerStatus) bool {
		return u.GetSeq() > full.GetSeq() && statusIs(livekit.WorkerStatus_WS_AVAILABLE, 1)(u)
	}); err != nil {
		t.Fatalf("no available status after a job ended: %v", err)
	}
	checkSeq(t, c.WorkerStatuses())
	if err := c.Terminate(b.GetId()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitWorkerStatus(ctx, statusIs(livekit.WorkerStatus_WS_AVAILABLE, 0)); err != nil {
		t.Fatalf("no available status after both jobs ended: %v", err)
	}
}

func TestLoadFuncMakesWorkerFull(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "load-bot", "")
	var load atomic.Value
	load.Store(0.9)
	o.LoadFunc = func() float64 { return load.Load().(float64) }
	o.StatusInterval = 50 * time.Millisecond
	rec := newRecorder()
	defer rec.releaseAll()
	r := startWorker(t, o, rec.handle)
	c := mustConn(t, srv)
	ctx := waitCtx(t)
	st, err := c.WaitWorkerStatus(ctx, statusIs(livekit.WorkerStatus_WS_FULL, 0))
	if err != nil {
		t.Fatalf("no full status at load 0.9: %v", err)
	}
	// At or above LoadThreshold the worker is full: the server's target
	// load is reported.
	if st.GetLoad() < 0.69 || st.GetLoad() > 0.71 {
		t.Errorf("reported load %v, want 0.7", st.GetLoad())
	}
	if res, err := c.Offer(ctx, workertest.NewJob("load-bot", "")); err != nil || res.GetAvailable() {
		t.Fatalf("offer at load 0.9: %v %v, want declined", res, err)
	}
	if got := metricValue(t, r.w, "offers_declined_total", "reason", worker.DeclineFull); got != 1 {
		t.Errorf("offers_declined_total{reason=full} = %v, want 1", got)
	}
	load.Store(0.2)
	if _, err := c.WaitWorkerStatus(ctx, statusIs(livekit.WorkerStatus_WS_AVAILABLE, 0)); err != nil {
		t.Fatalf("no available status at load 0.2: %v", err)
	}
	dispatch(t, c, workertest.NewJob("load-bot", ""))
	checkSeq(t, c.WorkerStatuses())
}
