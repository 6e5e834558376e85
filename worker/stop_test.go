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

// A later stop request makes a stop harder and sooner, never softer or
// later: StopAndCancel during a Stop cancels now, a shorter deadline wins;
// and so on the path where the connection loop gave up on its own and the
// worker drains for DrainTimeout. Without merging the requests, each case
// waits out the first request's 60 s (or the 60 s DrainTimeout).
func TestLaterStopWins(t *testing.T) {
	t.Parallel()
	stopAndCancel := func(w *worker.Worker) error { return w.StopAndCancel(context.Background()) }
	stopSoon := func(w *worker.Worker) error {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		return w.Stop(ctx)
	}
	for _, tc := range []struct {
		name string
		// gaveUp: the server goes away for good before the stop requests;
		// else a Stop(60 s) is under way when the later request comes.
		gaveUp    bool
		later     func(*worker.Worker) error
		wantCause error
		wantErr   error // what the later request returns
	}{
		{"StopAndCancel during Stop", false, stopAndCancel, job.ErrWorkerStopped, nil},
		{"shorter Stop during Stop", false, stopSoon, job.ErrDrainTimeout, context.DeadlineExceeded},
		{"StopAndCancel after giving up", true, stopAndCancel, job.ErrWorkerStopped, nil},
		{"short Stop after giving up", true, stopSoon, job.ErrDrainTimeout, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			o := testOptions(srv, "stop-bot", "")
			o.DrainTimeout, o.MaxRetry = time.Minute, 1
			g := newGated()
			w := newWorker(t, o, g.handle)
			if err := w.Start(waitCtx(t)); err != nil {
				t.Fatal(err)
			}
			c := mustConn(t, srv)
			j := workertest.NewJob("stop-bot", "")
			dispatch(t, c, j)
			g.waitStarted(t, j.GetId())
			firstDone := make(chan error, 1)
			if tc.gaveUp {
				srv.Close()
				eventually(t, "the worker to give up", func() bool { return w.Snapshot().GaveUp })
				close(firstDone)
			} else {
				first, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				go func() { firstDone <- w.Stop(first) }()
				eventually(t, "the worker to drain", func() bool { return w.Snapshot().Draining })
			}
			begin := time.Now()
			err := tc.later(w)
			took := time.Since(begin)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Errorf("later stop = %v, want %v", err, tc.wantErr)
			}
			if took > 10*time.Second {
				t.Errorf("later stop returned after %s, want it to win over the 60 s drain", took)
			}
			if cause := context.Cause(g.ctx(j.GetId())); !errors.Is(cause, tc.wantCause) {
				t.Errorf("job cancelled with %v, want %v", cause, tc.wantCause)
			}
			select {
			case err, ok := <-firstDone:
				// The first Stop's drain was cut short: jobs were still running.
				if ok && err == nil {
					t.Errorf("first Stop = nil, want an error: its drain did not end on its own")
				}
			case <-time.After(patience):
				t.Fatal("the first Stop did not return")
			}
			if !tc.gaveUp {
				waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_FAILED)
			}
		})
	}
}
