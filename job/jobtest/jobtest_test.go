package jobtest_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/job/jobtest"
)

func TestOutcomes(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	for _, tc := range []struct {
		name       string
		cancel     error // cause to cancel with before the run, or nil
		handler    job.Handler
		wantFailed string // "" = success
		panicked   bool
	}{
		{"returns nil", nil, func(context.Context, *job.Job) error { return nil }, "", false},
		{"returns an error", nil, func(context.Context, *job.Job) error { return boom }, "boom", false},
		{"panics", nil, func(context.Context, *job.Job) error { panic("kaboom") }, "kaboom", true},
		{"terminated", job.ErrTerminated, waitCtx, "", false},
		{"room gone", job.ErrRoomDisconnected, waitCtx, "", false},
		{"drain timeout", job.ErrDrainTimeout, waitCtx, "drain timeout", false},
		{"shut down by itself", nil, func(ctx context.Context, j *job.Job) error { j.Shutdown("done"); return waitCtx(ctx, j) }, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tj := jobtest.New(jobtest.Options{Metadata: "m"})
			if tc.cancel != nil {
				tj.Cancel(tc.cancel)
			}
			res := tj.Run(tc.handler)
			switch {
			case tc.wantFailed == "" && res.Outcome != nil:
				t.Errorf("outcome %v, want success", res.Outcome)
			case tc.wantFailed != "" && (res.Outcome == nil || !strings.Contains(res.Outcome.Error(), tc.wantFailed)):
				t.Errorf("outcome %v, want a failure naming %q", res.Outcome, tc.wantFailed)
			}
			if res.Panicked != tc.panicked {
				t.Errorf("panicked %v, want %v", res.Panicked, tc.panicked)
			}
			if tc.cancel != nil && !errors.Is(res.Cause, tc.cancel) {
				t.Errorf("cause %v, want %v", res.Cause, tc.cancel)
			}
		})
	}
}

func waitCtx(ctx context.Context, _ *job.Job) error {
	<-ctx.Done()
	return ctx.Err()
}

func TestJobDescribesTheDispatch(t *testing.T) {
	t.Parallel()
	tj := jobtest.New(jobtest.Options{ID: "AJ_x", AgentName: "bot", Deployment: "staging", Room: "r", Metadata: "meta"})
	j := tj.Job()
	if j.ID() != "AJ_x" || j.AgentName() != "bot" || j.Deployment() != "staging" || j.RoomName() != "r" ||
		j.Metadata() != "meta" || j.Identity() != "agent-AJ_x" {
		t.Fatalf("job %s %s %s %s %s %s", j.ID(), j.AgentName(), j.Deployment(), j.RoomName(), j.Metadata(), j.Identity())
	}
	if _, err := j.Connect(context.Background(), nil); err == nil {
		t.Fatal("Connect without a URL and token succeeded")
	}
	res := <-tj.Start(func(ctx context.Context, j *job.Job) error { return nil })
	if res.Outcome != nil || res.Err != nil {
		t.Fatalf("result %+v", res)
	}
}
