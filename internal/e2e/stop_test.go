package e2e

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// untilCancelled is a handler that stays until its context ends and
// keeps the job's cancel cause.
type untilCancelled struct {
	started chan *job.Job
	mu      sync.Mutex
	causes  map[string]error
	ended   chan string
}

func newUntilCancelled() *untilCancelled {
	return &untilCancelled{started: make(chan *job.Job, 10), causes: map[string]error{}, ended: make(chan string, 10)}
}

func (u *untilCancelled) handle(ctx context.Context, j *job.Job) error {
	u.started <- j
	<-ctx.Done()
	u.mu.Lock()
	u.causes[j.ID()] = context.Cause(ctx)
	u.mu.Unlock()
	u.ended <- j.ID()
	return context.Cause(ctx)
}

func (u *untilCancelled) cause(id string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.causes[id]
}

func (u *untilCancelled) waitStarted(t *testing.T) *job.Job {
	t.Helper()
	select {
	case j := <-u.started:
		return j
	case <-time.After(30 * time.Second):
		t.Fatal("no job started within 30s")
		return nil
	}
}

// stopTestWorker starts a worker against s whose drain would take a
// minute; the test stops it itself.
func stopTestWorker(t *testing.T, s *lkserver.Server, o worker.Options, h job.Handler) *worker.Worker {
	t.Helper()
	o.URL, o.APIKey, o.APISecret = s.URL(), s.APIKey(), s.APISecret()
	o.Logger = testLogger(t)
	w, err := worker.New(o, h)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatalf("worker did not register: %v", err)
	}
	t.Cleanup(func() { _ = w.StopAndCancel(context.Background()) })
	lkserver.AwaitRouting()
	return w
}

// StopAndCancel one second into a Stop(60 s) drain cancels the running job
// at once with job.ErrWorkerStopped, returns within ShutdownTimeout, and
// the server records the job's end with that cause.
func TestStopAndCancelDuringStop(t *testing.T) {
	if testing.Short() {
		t.Skip("real LiveKit server")
	}
	t.Parallel()
	agent := uniq("stopwin")
	h := newUntilCancelled()
	const shutdown = 10 * time.Second
	w := stopTestWorker(t, srv, worker.Options{AgentName: agent, DrainTimeout: time.Hour, ShutdownTimeout: shutdown}, h.handle)
	createDispatch(t, agent, uniq("room"), "")
	j := h.waitStarted(t)

	stopCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- w.Stop(stopCtx) }()
	waitFor(t, 10*time.Second, "the worker to drain", func() bool { return w.Snapshot().Draining })
	select {
	case id := <-h.ended:
		t.Fatalf("job %s ended when the drain began", id)
	case <-time.After(time.Second): // one second into the drain, by the measure
	}
	begin := time.Now()
	if err := w.StopAndCancel(context.Background()); err != nil {
		t.Errorf("StopAndCancel = %v, want nil", err)
	}
	took := time.Since(begin)
	t.Logf("StopAndCancel during a Stop(60s) drain returned after %s", took.Round(time.Millisecond))
	if took > shutdown {
		t.Errorf("StopAndCancel returned after %s, want within ShutdownTimeout (%s)", took, shutdown)
	}
	if cause := h.cause(j.ID()); !errors.Is(cause, job.ErrWorkerStopped) {
		t.Errorf("job cancelled with %v, want job.ErrWorkerStopped", cause)
	}
	if err := <-stopped; !errors.Is(err, job.ErrWorkerStopped) {
		t.Errorf("the first Stop = %v, want an error wrapping job.ErrWorkerStopped", err)
	}
	waitServerLine(t, 30*time.Second, "job ended", j.ID(), "JS_FAILED", "worker stopped")
}

// The same after the connection loop gave up on its own (the server
// killed, MaxRetry 1) while a job runs: the worker drains for
// DrainTimeout (an hour here), and a stop request still wins: Stop(2 s)
// ends the drain after 2 s, StopAndCancel at once.
func TestStopAfterGivingUp(t *testing.T) {
	if testing.Short() {
		t.Skip("real LiveKit server")
	}
	t.Parallel()
	const shutdown = 10 * time.Second
	for _, tc := range []struct {
		name      string
		stop      func(*worker.Worker) error
		wantCause error
		within    time.Duration
	}{
		{"StopAndCancel", func(w *worker.Worker) error { return w.StopAndCancel(context.Background()) }, job.ErrWorkerStopped, shutdown},
		{"Stop 2s", func(w *worker.Worker) error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return w.Stop(ctx)
		}, job.ErrDrainTimeout, 2*time.Second + shutdown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := lkserver.StartTB(t, lkserver.Options{})
			agent := uniq("gaveup")
			h := newUntilCancelled()
			w := stopTestWorker(t, s, worker.Options{AgentName: agent, DrainTimeout: time.Hour, ShutdownTimeout: shutdown,
				MaxRetry: 1, MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}, h.handle)
			dispatchOn(t, s, agent, uniq("room"), "", "")
			j := h.waitStarted(t)
			if err := s.Kill(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, time.Minute, "the worker to give up", func() bool { return w.Snapshot().GaveUp })
			begin := time.Now()
			_ = tc.stop(w)
			took := time.Since(begin)
			t.Logf("%s returned after %s", tc.name, took.Round(time.Millisecond))
			if took > tc.within {
				t.Errorf("%s returned after %s, want within %s", tc.name, took, tc.within)
			}
			if cause := h.cause(j.ID()); !errors.Is(cause, tc.wantCause) {
				t.Errorf("job cancelled with %v, want %v", cause, tc.wantCause)
			}
			if !errors.Is(w.Err(), worker.ErrGaveUp) {
				t.Errorf("Err = %v, want ErrGaveUp", w.Err())
			}
		})
	}
}
