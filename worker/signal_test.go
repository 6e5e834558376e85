package worker_test

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

func TestExitCode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, worker.ExitOK},
		{&worker.OptionError{Option: "URL", Rule: "required"}, worker.ExitUsage},
		{fmt.Errorf("new: %w", &worker.OptionError{Option: "URL", Rule: "required"}), worker.ExitUsage},
		{&worker.SignalError{Signal: syscall.SIGTERM}, worker.ExitInterrupted},
		{fmt.Errorf("worker: %w", worker.ErrUnauthorized), worker.ExitFailure},
		{errors.New("anything else"), worker.ExitFailure},
		{worker.ErrJobProcessDone, worker.ExitOK},
	} {
		if got := worker.ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// The first signal drains (the running job goes on), the second cancels
// it now with job.ErrWorkerStopped, its final status is still sent, and
// RunUntilSignal returns a *SignalError: exit code 130. SIGUSR1 stands
// for SIGTERM here (sent to this test process; no other test uses it, so
// this test does not run in parallel with itself).
func TestRunUntilSignal(t *testing.T) {
	srv := workertest.NewServer(t)
	o := testOptions(srv, "signal-bot", "")
	o.DrainTimeout = patience * 3 // the drain would outlast the test
	g := newGated()
	w := newWorker(t, o, g.handle)
	returned := make(chan error, 1)
	go func() { returned <- w.RunUntilSignal(context.Background(), syscall.SIGUSR1) }()
	c := mustConn(t, srv)
	j := workertest.NewJob("signal-bot", "")
	dispatch(t, c, j)
	g.waitStarted(t, j.GetId())

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the worker to drain", func() bool { return w.Snapshot().Draining })
	if err := g.ctx(j.GetId()).Err(); err != nil {
		t.Fatalf("the first signal cancelled the job: %v", context.Cause(g.ctx(j.GetId())))
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	err := waitErr(t, returned)
	var se *worker.SignalError
	if !errors.As(err, &se) || !errors.Is(err, worker.ErrInterrupted) || worker.ExitCode(err) != worker.ExitInterrupted {
		t.Errorf("RunUntilSignal = %v (exit code %d), want a *SignalError, exit code %d", err, worker.ExitCode(err), worker.ExitInterrupted)
	}
	if cause := context.Cause(g.ctx(j.GetId())); !errors.Is(cause, job.ErrWorkerStopped) {
		t.Errorf("job cancelled with %v, want job.ErrWorkerStopped", cause)
	}
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_FAILED)
}

// One signal drains: the job ends on its own and RunUntilSignal returns
// nil (exit code 0).
func TestRunUntilSignalDrains(t *testing.T) {
	srv := workertest.NewServer(t)
	g := newGated()
	w := newWorker(t, testOptions(srv, "signal-bot", ""), g.handle)
	returned := make(chan error, 1)
	go func() { returned <- w.RunUntilSignal(context.Background(), syscall.SIGUSR2) }()
	c := mustConn(t, srv)
	j := workertest.NewJob("signal-bot", "")
	dispatch(t, c, j)
	g.waitStarted(t, j.GetId())
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the worker to drain", func() bool { return w.Snapshot().Draining })
	g.open(j.GetId())
	if err := waitErr(t, returned); err != nil || worker.ExitCode(err) != worker.ExitOK {
		t.Errorf("RunUntilSignal = %v, want nil after a drain", err)
	}
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_SUCCESS)
}

func waitErr(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-waitCtx(t).Done():
		t.Fatal("RunUntilSignal did not return")
		return nil
	}
}
