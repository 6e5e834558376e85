package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

func newWorker(t *testing.T, o worker.Options, h job.Handler) *worker.Worker {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(newLogRecorder(t))
	}
	w, err := worker.New(o, h)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// Start returns once the server answered the registration, not before.
func TestStartReturnsOnceRegistered(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServerWithOptions(t, workertest.Options{RegisterDelay: 300 * time.Millisecond})
	o := testOptions(srv, "start-bot", "staging")
	// A slow OnStateChange: Start returns after it was told, not while it
	// is being told (told is not guarded: the race detector checks the
	// order too).
	var told []worker.State
	o.OnStateChange = func(c worker.StateChange) {
		if c.State == worker.StateRegistered && len(told) < 2 {
			time.Sleep(200 * time.Millisecond)
		}
		told = append(told, c.State)
	}
	w := newWorker(t, o, newGated().handle)
	begin := time.Now()
	if err := w.Start(waitCtx(t)); err != nil {
		t.Fatalf("Start = %v", err)
	}
	if took := time.Since(begin); took < 300*time.Millisecond {
		t.Errorf("Start returned after %s, before the registration was answered (300ms)", took)
	}
	if want := []worker.State{worker.StateConnecting, worker.StateRegistered}; !slices.Equal(told, want) {
		t.Errorf("OnStateChange was told %v when Start returned, want %v", told, want)
	}
	if !w.Snapshot().Registered {
		t.Fatalf("Start returned but the worker is not registered")
	}
	mustConn(t, srv)
	if err := w.Start(waitCtx(t)); !errors.Is(err, worker.ErrAlreadyRunning) {
		t.Errorf("second Start = %v, want ErrAlreadyRunning", err)
	}
	if err := w.Stop(waitCtx(t)); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	select {
	case <-w.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	// A stopped worker starts again.
	if err := w.Start(waitCtx(t)); err != nil {
		t.Fatalf("Start after Stop = %v", err)
	}
	if err := w.StopAndCancel(waitCtx(t)); err != nil {
		t.Fatalf("StopAndCancel = %v", err)
	}
}

// Start returns the error that stops the worker, or ctx's error (and the
// worker is stopped) when the server never answers.
func TestStartFailures(t *testing.T) {
	t.Parallel()
	rejecting := workertest.NewServerWithOptions(t, workertest.Options{RejectAuth: true})
	w := newWorker(t, testOptions(rejecting, "start-bot", ""), newGated().handle)
	if err := w.Start(waitCtx(t)); !errors.Is(err, worker.ErrUnauthorized) {
		t.Fatalf("Start against a server that rejects the key = %v, want ErrUnauthorized", err)
	}
	if !errors.Is(w.Err(), worker.ErrUnauthorized) {
		t.Errorf("Err = %v, want ErrUnauthorized", w.Err())
	}

	slow := workertest.NewServerWithOptions(t, workertest.Options{RegisterDelay: time.Minute})
	w = newWorker(t, testOptions(slow, "start-bot", ""), newGated().handle)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := w.Start(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start that timed out = %v, want DeadlineExceeded", err)
	}
	select {
	case <-w.Done():
	case <-time.After(patience):
		t.Fatal("the worker still runs after Start gave up")
	}
}

// Stop drains until its context ends, then cancels what is left with
// ErrDrainTimeout and says so; StopAndCancel cancels at once with
// ErrWorkerStopped.
func TestStopAndStopAndCancel(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		stop      func(*worker.Worker, context.Context) error
		wantCause error
		wantErr   bool
	}{
		{"Stop past its deadline", (*worker.Worker).Stop, job.ErrDrainTimeout, true},
		{"StopAndCancel", (*worker.Worker).StopAndCancel, job.ErrWorkerStopped, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			g := newGated()
			w := newWorker(t, testOptions(srv, "stop-bot", ""), g.handle)
			if err := w.Start(waitCtx(t)); err != nil {
				t.Fatal(err)
			}
			c := mustConn(t, srv)
			j := workertest.NewJob("stop-bot", "")
			dispatch(t, c, j)
			g.waitStarted(t, j.GetId())
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err := tc.stop(w, ctx)
			if (err != nil) != tc.wantErr || (tc.wantErr && !errors.Is(err, context.DeadlineExceeded)) {
				t.Errorf("stop = %v, want an error: %v", err, tc.wantErr)
			}
			if cause := context.Cause(g.ctx(j.GetId())); !errors.Is(cause, tc.wantCause) {
				t.Errorf("job cancelled with %v, want %v", cause, tc.wantCause)
			}
			if u := waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_FAILED); u == nil {
				t.Fatal("no final status")
			}
			if w.Err() != nil {
				t.Errorf("Err after a stop = %v, want nil", w.Err())
			}
		})
	}
}

// Stop with time enough lets the job end on its own and returns nil.
func TestStopDrainsInTime(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	g := newGated()
	w := newWorker(t, testOptions(srv, "drain-bot", ""), g.handle)
	if err := w.Start(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	c := mustConn(t, srv)
	j := workertest.NewJob("drain-bot", "")
	dispatch(t, c, j)
	g.waitStarted(t, j.GetId())
	stopped := make(chan error, 1)
	go func() { stopped <- w.Stop(waitCtx(t)) }()
	eventually(t, "the worker to drain", func() bool { return w.Snapshot().Draining })
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned %v while a job ran", err)
	case <-time.After(200 * time.Millisecond):
	}
	g.open(j.GetId())
	if err := <-stopped; err != nil {
		t.Fatalf("Stop = %v, want nil after the job ended on its own", err)
	}
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_SUCCESS)
}

// Run's context ending after the server took the registration, but before
// Start returned, drains: a job the server already assigned keeps running
// until it ends, as after any other SIGTERM. (OnStateChange blocks here to
// hold that moment open; on a loaded machine it is the scheduler.)
func TestRunDrainsWhenStoppedWhileRegistering(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "reg-bot", "staging")
	release := make(chan struct{})
	o.OnStateChange = func(c worker.StateChange) {
		if c.State == worker.StateRegistered {
			<-release
		}
	}
	g := newGated()
	w := newWorker(t, o, g.handle)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	c := mustConn(t, srv)
	j := workertest.NewJob("reg-bot", "staging")
	dispatch(t, c, j)
	g.waitStarted(t, j.GetId())

	cancel() // SIGTERM while Start still waits
	select {
	case <-g.ctx(j.GetId()).Done():
		t.Fatalf("stopping Run during its registration cancelled the running job: %v", context.Cause(g.ctx(j.GetId())))
	case <-time.After(500 * time.Millisecond):
	}
	close(release)
	select {
	case <-g.ctx(j.GetId()).Done():
		t.Fatalf("the drain cancelled the running job: %v", context.Cause(g.ctx(j.GetId())))
	case <-time.After(300 * time.Millisecond):
	}
	if res, err := c.Offer(waitCtx(t), workertest.NewJob("reg-bot", "staging")); err != nil || res.GetAvailable() {
		t.Fatalf("offer while draining: %v %v, want declined", res, err)
	}
	g.open(j.GetId())
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_SUCCESS)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil after a drain", err)
		}
	case <-time.After(patience):
		t.Fatal("Run did not return after the drain")
	}
}
