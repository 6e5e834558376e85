package jobtest_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	lksdk "github.com/livekit/server-sdk-go/v2"

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

// Goroutines started with Job.Go run as under the worker: a panic fails
// the job (reported in Outcome and Cause, not as the handler's panic), and
// Run returns once they ended.
func TestGoroutinesFailTheJob(t *testing.T) {
	t.Parallel()
	tj := jobtest.New(jobtest.Options{})
	var cleanedUp atomic.Bool
	res := tj.Run(func(ctx context.Context, j *job.Job) error {
		j.Go(func(ctx context.Context) error {
			<-ctx.Done()
			cleanedUp.Store(true)
			return nil
		})
		j.Go(func(context.Context) error { panic("worker goroutine") })
		<-ctx.Done()
		return ctx.Err()
	})
	pe, ok := errors.AsType[*job.PanicError](res.Outcome)
	if !ok || pe.Value != "worker goroutine" || len(pe.Stack) == 0 {
		t.Fatalf("outcome %v, want the goroutine's panic with its stack", res.Outcome)
	}
	if !errors.Is(res.Cause, pe) || res.Panicked {
		t.Fatalf("cause %v, panicked %v; want the goroutine's panic as the cause, the handler not panicked", res.Cause, res.Panicked)
	}
	if !cleanedUp.Load() {
		t.Fatal("Run returned before the other goroutine ended")
	}
}

// The helpers that need a room or credentials say so on a test job.
func TestHelpersWithoutAServer(t *testing.T) {
	t.Parallel()
	res := jobtest.New(jobtest.Options{}).Run(func(ctx context.Context, j *job.Job) error {
		if _, err := j.WaitForParticipant(ctx); !errors.Is(err, job.ErrNotConnected) {
			t.Errorf("WaitForParticipant = %v, want ErrNotConnected", err)
		}
		if _, err := j.API(); !errors.Is(err, job.ErrNoCredentials) {
			t.Errorf("API = %v, want ErrNoCredentials", err)
		}
		if err := j.DeleteRoom(ctx); !errors.Is(err, job.ErrNoCredentials) {
			t.Errorf("DeleteRoom = %v, want ErrNoCredentials", err)
		}
		j.OnParticipant(func(context.Context, *lksdk.RemoteParticipant) {
			t.Error("participant entrypoint ran without a room")
		})
		return nil
	})
	if res.Outcome != nil {
		t.Fatalf("outcome %v", res.Outcome)
	}
	withKeys := jobtest.New(jobtest.Options{APIURL: "http://127.0.0.1:1", APIKey: "k", APISecret: "s"}).Job()
	if api, err := withKeys.API(); err != nil || api.Room == nil || api.Dispatch == nil || api.Egress == nil {
		t.Fatalf("API with credentials = %+v, %v", api, err)
	}
}
