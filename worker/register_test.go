package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

func TestRegistrationCarriesIdentity(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		deployment string
		jobType    livekit.JobType
		version    string
		wantVer    string
	}{
		{"production room worker", "", livekit.JobType_JT_ROOM, "", "lkagent/" + worker.Version},
		{"staging publisher worker", "staging", livekit.JobType_JT_PUBLISHER, "support-bot/1.2.3", "support-bot/1.2.3"},
		{"canary participant worker", "eu.canary-2", livekit.JobType_JT_PARTICIPANT, "x", "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			o := testOptions(srv, "reg-bot", tc.deployment)
			o.JobType, o.Version = tc.jobType, tc.version
			o.Permissions = &livekit.ParticipantPermission{CanSubscribe: true, CanPublishData: true}
			startWorker(t, o, newRecorder().handle)
			c := mustConn(t, srv)
			reg := c.Registration()
			if reg.GetAgentName() != "reg-bot" || reg.GetDeployment() != tc.deployment || reg.GetType() != tc.jobType {
				t.Errorf("registration agent %q deployment %q type %s, want reg-bot %q %s",
					reg.GetAgentName(), reg.GetDeployment(), reg.GetType(), tc.deployment, tc.jobType)
			}
			if reg.GetVersion() != tc.wantVer {
				t.Errorf("registration version %q, want %q", reg.GetVersion(), tc.wantVer)
			}
			if len(reg.GetInstanceId()) < 8 {
				t.Errorf("registration instance id %q, want a random id", reg.GetInstanceId())
			}
			if p := reg.GetAllowedPermissions(); !p.GetCanSubscribe() || !p.GetCanPublishData() || p.GetCanPublish() {
				t.Errorf("registration permissions %v, want the configured ones", p)
			}
			if c.APIKey() != "test-key" {
				t.Errorf("token issued by API key %q, want test-key", c.APIKey())
			}
			if !strings.HasPrefix(c.WorkerID(), "AW_") {
				t.Errorf("worker id %q", c.WorkerID())
			}
		})
	}
}

func TestInstanceIDsDiffer(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	startWorker(t, testOptions(srv, "inst-bot", ""), newRecorder().handle)
	startWorker(t, testOptions(srv, "inst-bot", ""), newRecorder().handle)
	a, b := mustConn(t, srv), mustConn(t, srv)
	if a.Registration().GetInstanceId() == b.Registration().GetInstanceId() {
		t.Fatalf("two workers registered with the same instance id %q", a.Registration().GetInstanceId())
	}
}

func TestTokenSignedWithKeyAndSecret(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServerWithOptions(t, workertest.Options{APIKeys: map[string]string{"test-key": testSecret}})
	startWorker(t, testOptions(srv, "key-bot", ""), newRecorder().handle)
	mustConn(t, srv)

	o := testOptions(srv, "key-bot", "")
	o.APISecret = "wrong-secret"
	o.Logger = slog.New(newLogRecorder(t))
	w, err := worker.New(o, newRecorder().handle)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Run(waitCtx(t)); !errors.Is(err, worker.ErrUnauthorized) {
		t.Fatalf("Run with a wrong secret = %v, want ErrUnauthorized", err)
	}
}

func TestUnauthorizedIsFatal(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServerWithOptions(t, workertest.Options{RejectAuth: true})
	o := testOptions(srv, "auth-bot", "staging")
	o.MaxRetry = 0 // keep trying, were the error retried
	o.Logger = slog.New(newLogRecorder(t))
	var states []worker.State
	o.OnStateChange = func(c worker.StateChange) { states = append(states, c.State) }
	w, err := worker.New(o, newRecorder().handle)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	err = w.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("Run returned only when its context ended (%v): the 401 was retried", err)
	}
	if !errors.Is(err, worker.ErrUnauthorized) {
		t.Fatalf("Run = %v, want an error wrapping ErrUnauthorized", err)
	}
	if strings.Contains(err.Error(), testSecret) {
		t.Errorf("error %q contains the API secret", err)
	}
	if n := srv.Attempts(); n != 1 {
		t.Errorf("worker tried %d times, want exactly 1", n)
	}
	if len(states) == 0 || states[len(states)-1] != worker.StateStopped {
		t.Errorf("state changes %v, want to end with stopped", states)
	}
}

func TestRunTwiceConcurrently(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	r := startWorker(t, testOptions(srv, "twice-bot", ""), newRecorder().handle)
	mustConn(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.w.Run(ctx); !errors.Is(err, worker.ErrAlreadyRunning) {
		t.Fatalf("second Run = %v, want ErrAlreadyRunning", err)
	}
}
