package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// The worker reports JobJoinTiming: the instants from offer to connected,
// on one microsecond clock, in order. The control plane is the in-process
// fake (so the test can read what the worker sends); the room is on the
// real server, joined with a token the real server signed.
func TestJoinTimingReported(t *testing.T) {
	t.Parallel()
	fake := workertest.NewServer(t)
	agent, room := uniq("timing"), uniq("room")
	w, err := worker.New(worker.Options{URL: fake.URL(), APIKey: "k", APISecret: "s", AgentName: agent, Logger: testLogger(t)},
		func(ctx context.Context, j *job.Job) error {
			_, err := j.Connect(ctx, nil)
			return err
		})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	runCtx, stop := context.WithCancel(ctx)
	go func() { done <- w.Run(runCtx) }()
	defer func() { stop(); <-done }()

	conn, err := fake.WaitWorker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	j := workertest.NewJob(agent, "")
	j.Room.Name = room
	res, err := conn.Offer(ctx, j)
	if err != nil || !res.GetAvailable() {
		t.Fatalf("offer: %v %v", res, err)
	}
	token, err := auth.NewAccessToken(srv.APIKey(), srv.APISecret()).SetIdentity(res.GetParticipantIdentity()).
		SetKind(livekit.ParticipantInfo_AGENT).SetVideoGrant(&auth.VideoGrant{RoomJoin: true, Room: room, Agent: true}).ToJWT()
	if err != nil {
		t.Fatal(err)
	}
	url := srv.URL()
	if err := conn.SendAssignment(ctx, &livekit.JobAssignment{Job: j, Url: &url, Token: token}); err != nil {
		t.Fatal(err)
	}
	final, err := conn.WaitJobStatus(ctx, j.Id, livekit.JobStatus_JS_SUCCESS)
	if err != nil {
		t.Fatalf("job did not succeed: %v (statuses %v)", err, conn.JobStatuses())
	}
	var connected *livekit.JobJoinTiming
	for _, u := range conn.JobStatuses() {
		if u.GetJobId() == j.Id && u.GetStatus() == livekit.JobStatus_JS_RUNNING && u.GetJoinTiming().GetConnectedUs() != 0 {
			connected = u.GetJoinTiming()
		}
	}
	if connected == nil {
		t.Fatalf("no JS_RUNNING update with the join timing after connecting: %v", conn.JobStatuses())
	}
	for name, jt := range map[string]*livekit.JobJoinTiming{"running": connected, "final": final.GetJoinTiming()} {
		steps := []int64{jt.GetOfferReceivedUs(), jt.GetAcceptedUs(), jt.GetAssignmentReceivedUs(), jt.GetLaunchedUs(),
			jt.GetEntrypointStartedUs(), jt.GetConnectCalledUs(), jt.GetConnectedUs()}
		for i, v := range steps {
			if v <= 0 || (i > 0 && v < steps[i-1]) {
				t.Fatalf("%s join timing not increasing from offer to connected: %v", name, steps)
			}
		}
		if took := time.Duration(steps[6]-steps[5]) * time.Microsecond; took <= 0 || took > 30*time.Second {
			t.Errorf("%s: connect took %s", name, took)
		}
	}
}
