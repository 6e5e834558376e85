package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

func isDraining(u *livekit.UpdateWorkerStatus) bool {
	return u.GetDraining() && u.GetStatus() == livekit.WorkerStatus_WS_FULL
}

func TestDrainOnContextEnd(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	g := newGated()
	r := startWorker(t, testOptions(srv, "drain-bot", "staging"), g.handle)
	c := mustConn(t, srv)
	ctx := waitCtx(t)
	j := workertest.NewJob("drain-bot", "staging")
	dispatch(t, c, j)
	g.waitStarted(t, j.GetId())
	if _, err := c.WaitWorkerStatus(ctx, func(u *livekit.UpdateWorkerStatus) bool { return u.GetJobCount() == 1 }); err != nil {
		t.Fatal(err)
	}

	r.cancel() // SIGTERM, say
	st, err := c.WaitWorkerStatus(ctx, func(u *livekit.UpdateWorkerStatus) bool { return u.GetDraining() })
	if err != nil {
		t.Fatalf("no draining status: %v", err)
	}
	if st.GetStatus() != livekit.WorkerStatus_WS_FULL || st.GetJobCount() != 1 {
		t.Errorf("draining status %v, want WS_FULL with 1 job", st)
	}
	if res, err := c.Offer(ctx, workertest.NewJob("drain-bot", "staging")); err != nil || res.GetAvailable() {
		t.Fatalf("offer while draining: %v %v, want declined", res, err)
	}
	if got := metricValue(t, r.w, "offers_declined_total", "reason", worker.DeclineDraining); got != 1 {
		t.Errorf("offers_declined_total{reason=draining} = %v, want 1", got)
	}
	if got := metricValue(t, r.w, "draining", "", ""); got != 1 {
		t.Errorf("draining gauge = %v, want 1", got)
	}
	if err := g.ctx(j.GetId()).Err(); err != nil {
		t.Fatalf("draining cancelled the running job: %v", err)
	}
	select {
	case err := <-r.done:
		t.Fatalf("Run returned (%v) while a job was still running", err)
	case <-time.After(100 * time.Millisecond):
	}

	g.open(j.GetId())
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_SUCCESS)
	if err := r.wait(); err != nil {
		t.Fatalf("Run = %v, want nil after a drain", err)
	}
	waitDone(t, c)
	if code := c.CloseCode(); code != websocket.CloseNormalClosure {
		t.Errorf("close code %d (%v), want a normal close frame", code, c.Err())
	}
	checkSeq(t, c.WorkerStatuses())
}

func TestDrainIdleWorkerClosesCleanly(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	r := startWorker(t, testOptions(srv, "idle-bot", ""), newGated().handle)
	c := mustConn(t, srv)
	start := time.Now()
	if err := r.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	t.Logf("idle worker stopped in %s", time.Since(start).Round(time.Millisecond))
	waitDone(t, c)
	if code := c.CloseCode(); code != websocket.CloseNormalClosure {
		t.Errorf("close code %d (%v), want a normal close frame", code, c.Err())
	}
	if n := len(srv.Workers()); n != 1 {
		t.Errorf("%d registrations, want 1", n)
	}
}

func TestDrainTimeoutCancelsJobs(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "late-bot", "")
	o.DrainTimeout = 300 * time.Millisecond
	type seen struct{ cause, hook error }
	got := make(chan seen, 1)
	h := func(ctx context.Context, j *job.Job) error {
		var s seen
		j.OnShutdown(func(_ context.Context, reason error) {
			s.hook = reason
			got <- s
		})
		<-ctx.Done() // runs until cancelled
		s.cause = context.Cause(ctx)
		return ctx.Err()
	}
	r := startWorker(t, o, h)
	c := mustConn(t, srv)
	j := workertest.NewJob("late-bot", "")
	dispatch(t, c, j)
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_RUNNING)

	r.cancel()
	u := waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_FAILED)
	if !strings.Contains(u.GetError(), job.ErrDrainTimeout.Error()) {
		t.Errorf("failure %q does not name the drain timeout", u.GetError())
	}
	s := <-got
	if !errors.Is(s.cause, job.ErrDrainTimeout) || !errors.Is(s.hook, job.ErrDrainTimeout) {
		t.Errorf("job context cause %v, hook reason %v; want ErrDrainTimeout", s.cause, s.hook)
	}
	if err := r.wait(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	waitDone(t, c)
	if code := c.CloseCode(); code != websocket.CloseNormalClosure {
		t.Errorf("close code %d, want a normal close frame", code)
	}
}

func TestStuckHandlerLeftBehind(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "stuck-bot", "")
	o.DrainTimeout, o.ShutdownTimeout = 200*time.Millisecond, 200*time.Millisecond
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	h := func(context.Context, *job.Job) error {
		<-stuck // ignores its context
		return nil
	}
	r := startWorker(t, o, h)
	c := mustConn(t, srv)
	j := workertest.NewJob("stuck-bot", "")
	dispatch(t, c, j)
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_RUNNING)
	if err := r.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if n := r.logs.count(slog.LevelError, "did not return within the shutdown timeout"); n != 1 {
		t.Errorf("%d errors about the handler left behind, want 1", n)
	}
}

func TestDrainKeepsWorkerConnected(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	g := newGated()
	r := startWorker(t, testOptions(srv, "keep-bot", ""), g.handle)
	c := mustConn(t, srv)
	ctx := waitCtx(t)
	j := workertest.NewJob("keep-bot", "")
	dispatch(t, c, j)
	g.waitStarted(t, j.GetId())

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err := r.w.Drain(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain with a job running past its context = %v, want DeadlineExceeded", err)
	}
	if _, err := c.WaitWorkerStatus(ctx, isDraining); err != nil {
		t.Fatalf("no draining status: %v", err)
	}
	if res, err := c.Offer(ctx, workertest.NewJob("keep-bot", "")); err != nil || res.GetAvailable() {
		t.Fatalf("offer while draining: %v %v, want declined", res, err)
	}

	drained := make(chan error, 1)
	go func() { drained <- r.w.Drain(ctx) }()
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) while a job runs", err)
	case <-time.After(100 * time.Millisecond):
	}
	g.open(j.GetId())
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_SUCCESS)
	if err := <-drained; err != nil {
		t.Fatalf("Drain = %v, want nil", err)
	}
	// Still connected and running; only Run's context stops it: an offer
	// after the drain is answered (and declined) on the same connection.
	if res, err := c.Offer(ctx, workertest.NewJob("keep-bot", "")); err != nil || res.GetAvailable() {
		t.Fatalf("offer after Drain: %v %v, want declined on the same connection", res, err)
	}
	if c.Err() != nil {
		t.Fatalf("connection ended after Drain: %v", c.Err())
	}
	if s := r.w.Snapshot(); !s.Registered || !s.Draining {
		t.Fatalf("snapshot after Drain: registered %v draining %v, want both", s.Registered, s.Draining)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	waitDone(t, c)
	if code := c.CloseCode(); code != websocket.CloseNormalClosure {
		t.Errorf("close code %d, want a normal close frame", code)
	}
}

// Stopping a worker while the server sits on its registration ends Run at
// once, not after RegisterTimeout.
func TestStopDuringRegistration(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServerWithOptions(t, workertest.Options{RegisterDelay: 20 * time.Second})
	o := testOptions(srv, "slow-register", "")
	o.RegisterTimeout = 30 * time.Second
	r := startWorker(t, o, newRecorder().handle)
	eventually(t, "the registration attempt", func() bool { return srv.Attempts() >= 1 })
	start := time.Now()
	if err := r.stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Run took %s to return while registering, want well under RegisterTimeout", took)
	}
}

// The HTTP endpoints live exactly as long as Run: HTTPAddr names them while
// Run runs, and nothing listens there afterwards.
func TestHTTPEndpointsEndWithRun(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "http-bot", "")
	o.HTTPAddr = "127.0.0.1:0"
	r := startWorker(t, o, newRecorder().handle)
	eventually(t, "the HTTP endpoints", func() bool { return r.w.HTTPAddr() != "" })
	addr := r.w.HTTPAddr()
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz = %d while running", resp.StatusCode)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if got := r.w.HTTPAddr(); got != "" {
		t.Fatalf("HTTPAddr = %q after Run returned", got)
	}
	if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("%s still answers after Run returned", addr)
	}
}
