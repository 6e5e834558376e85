package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/livekit/protocol/livekit"
	"google.golang.org/protobuf/proto"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// gated is a job handler that runs each job until its gate is opened (then
// succeeds) or its context ends.
type gated struct {
	mu      sync.Mutex
	gates   map[string]chan struct{}
	ctxs    map[string]context.Context
	started chan string
}

func newGated() *gated {
	return &gated{gates: map[string]chan struct{}{}, ctxs: map[string]context.Context{}, started: make(chan string, 100)}
}

func (g *gated) gate(id string) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gates[id] == nil {
		g.gates[id] = make(chan struct{})
	}
	return g.gates[id]
}

func (g *gated) open(id string) { close(g.gate(id)) }

func (g *gated) ctx(id string) context.Context {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ctxs[id]
}

func (g *gated) handle(ctx context.Context, j *job.Job) error {
	gate := g.gate(j.ID())
	g.mu.Lock()
	g.ctxs[j.ID()] = ctx
	g.mu.Unlock()
	g.started <- j.ID()
	select {
	case <-gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gated) waitStarted(t testing.TB, id string) {
	t.Helper()
	select {
	case got := <-g.started:
		if got != id {
			t.Fatalf("job %s started, want %s", got, id)
		}
	case <-time.After(patience):
		t.Fatalf("job %s did not start", id)
	}
}

// runningJobs returns the ids of the worker's running jobs.
func runningJobs(w *worker.Worker) []string {
	var ids []string
	for _, j := range w.Snapshot().Jobs {
		ids = append(ids, j.ID)
	}
	return ids
}

func sameRegistration(t testing.TB, a, b *workertest.Conn) {
	t.Helper()
	ra, rb := a.Registration(), b.Registration()
	if ra.GetAgentName() != rb.GetAgentName() || ra.GetDeployment() != rb.GetDeployment() ||
		ra.GetType() != rb.GetType() || ra.GetInstanceId() != rb.GetInstanceId() {
		t.Fatalf("re-registered as agent %q deployment %q type %s instance %q; first registration was %q %q %s %q",
			rb.GetAgentName(), rb.GetDeployment(), rb.GetType(), rb.GetInstanceId(),
			ra.GetAgentName(), ra.GetDeployment(), ra.GetType(), ra.GetInstanceId())
	}
}

func waitDone(t testing.TB, c *workertest.Conn) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(patience):
		t.Fatalf("connection %s did not end", c.WorkerID())
	}
}

func TestDroppedConnectionKeepsJobsAndStatuses(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "recon-bot", "staging")
	disconnected := make(chan struct{}, 1)
	resume := make(chan struct{})
	var resumeOnce sync.Once
	o.OnStateChange = func(c worker.StateChange) {
		if c.State == worker.StateDisconnected {
			select {
			case disconnected <- struct{}{}:
			default:
			}
			<-resume // reconnect only once the test allows it
		}
	}
	g := newGated()
	r := startWorker(t, o, g.handle)
	allowReconnect := func() { resumeOnce.Do(func() { close(resume) }) }
	t.Cleanup(allowReconnect)

	c1 := mustConn(t, srv)
	a, a2, b := workertest.NewJob("recon-bot", "staging"), workertest.NewJob("recon-bot", "staging"), workertest.NewJob("recon-bot", "staging")
	for _, j := range []*livekit.Job{a, a2, b} {
		dispatch(t, c1, j)
		g.waitStarted(t, j.GetId())
		waitStatus(t, c1, j.GetId(), livekit.JobStatus_JS_RUNNING)
	}

	c1.Drop()
	select {
	case <-disconnected:
	case <-time.After(patience):
		t.Fatal("worker did not notice the dropped connection")
	}
	// While disconnected, a and then a2 end.
	g.open(a.GetId())
	eventually(t, "job a to end", func() bool { return !slices.Contains(runningJobs(r.w), a.GetId()) })
	g.open(a2.GetId())
	eventually(t, "job a2 to end", func() bool { return !slices.Contains(runningJobs(r.w), a2.GetId()) })
	allowReconnect()

	c2 := mustConn(t, srv)
	sameRegistration(t, c1, c2)
	if err := g.ctx(b.GetId()).Err(); err != nil {
		t.Fatalf("running job's context ended across the reconnection: %v (cause %v)", err, context.Cause(g.ctx(b.GetId())))
	}
	if got := runningJobs(r.w); !slices.Equal(got, []string{b.GetId()}) {
		t.Fatalf("running jobs after reconnecting: %v, want [%s]", got, b.GetId())
	}
	g.open(b.GetId())
	waitStatus(t, c2, b.GetId(), livekit.JobStatus_JS_SUCCESS)
	// A job run now is a barrier: its status comes after everything queued.
	barrier := workertest.NewJob("recon-bot", "staging")
	dispatch(t, c2, barrier)
	g.waitStarted(t, barrier.GetId())
	g.open(barrier.GetId())
	waitStatus(t, c2, barrier.GetId(), livekit.JobStatus_JS_SUCCESS)

	var order []string
	for _, u := range c2.JobStatuses() {
		if u.GetStatus() == livekit.JobStatus_JS_SUCCESS {
			order = append(order, u.GetJobId())
		}
	}
	if want := []string{a.GetId(), a2.GetId(), b.GetId(), barrier.GetId()}; !slices.Equal(order, want) {
		t.Fatalf("successes on the new connection %v, want each once in order %v (all: %s)", order, want, statuses(c2.JobStatuses()))
	}
	all := srv.JobStatuses()
	for _, j := range []*livekit.Job{a, a2, b} {
		if got := statusesOf(all, j.GetId()); !slices.Equal(got, []livekit.JobStatus{livekit.JobStatus_JS_RUNNING, livekit.JobStatus_JS_SUCCESS}) {
			t.Errorf("job %s statuses over both connections: %v, want running then success, once each", j.GetId(), got)
		}
	}
}

func TestPongTimeoutReconnects(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "pong-bot", "")
	o.PingInterval, o.PongTimeout = 100*time.Millisecond, 300*time.Millisecond
	g := newGated()
	r := startWorker(t, o, g.handle)
	c1 := mustConn(t, srv)
	j := workertest.NewJob("pong-bot", "")
	dispatch(t, c1, j)
	g.waitStarted(t, j.GetId())

	c1.StopPongs()
	c2 := mustConn(t, srv)
	waitDone(t, c1)
	sameRegistration(t, c1, c2)
	if got := metricValue(t, r.w, "disconnects_total", "reason", "pong_timeout"); got != 1 {
		t.Errorf("disconnects_total{reason=pong_timeout} = %v, want 1", got)
	}
	if err := g.ctx(j.GetId()).Err(); err != nil {
		t.Fatalf("running job cancelled by the reconnection: %v", err)
	}
	g.open(j.GetId())
	waitStatus(t, c2, j.GetId(), livekit.JobStatus_JS_SUCCESS)
}

func TestPongsKeepConnectionAlive(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "alive-bot", "")
	o.PingInterval, o.PongTimeout = 50*time.Millisecond, 2*time.Second
	startWorker(t, o, newGated().handle)
	c := mustConn(t, srv)
	c.StopPongs()
	time.Sleep(300 * time.Millisecond) // well under PingInterval+PongTimeout
	c.ResumePongs()
	time.Sleep(2500 * time.Millisecond) // beyond it, with pongs
	if c.Err() != nil {
		t.Fatalf("connection ended although the server answered in time: %v", c.Err())
	}
	pings := 0
	for _, m := range c.Messages() {
		if m.GetPing() != nil {
			pings++
		}
	}
	if pings < 10 {
		t.Fatalf("%d pings in 2.8s at a 50ms interval", pings)
	}
}

func TestMalformedFramesReconnect(t *testing.T) {
	t.Parallel()
	valid, _ := proto.Marshal(&livekit.ServerMessage{Message: &livekit.ServerMessage_Availability{
		Availability: &livekit.AvailabilityRequest{Job: workertest.NewJob("frame-bot", "")},
	}})
	for _, tc := range []struct {
		name    string
		msgType int
		data    []byte
		reason  string // disconnect reason metric, "" = not checked
	}{
		{"garbage", websocket.BinaryMessage, []byte{0xff, 0xff, 0xff, 0xff, 0xff}, "malformed_frame"},
		{"truncated message", websocket.BinaryMessage, valid[:len(valid)-3], "malformed_frame"},
		{"text frame", websocket.TextMessage, []byte(`{"availability":{"job":{"id":"AJ_x"}}}`), "malformed_frame"},
		{"oversized frame", websocket.BinaryMessage, make([]byte, 4<<20+1), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			g := newGated()
			r := startWorker(t, testOptions(srv, "frame-bot", ""), g.handle)
			c1 := mustConn(t, srv)
			j := workertest.NewJob("frame-bot", "")
			dispatch(t, c1, j)
			g.waitStarted(t, j.GetId())

			// The worker may close the connection while a large frame is
			// still being written: the error does not matter.
			_ = c1.SendRaw(tc.msgType, tc.data)
			c2 := mustConn(t, srv)
			waitDone(t, c1)
			sameRegistration(t, c1, c2)
			if tc.reason != "" {
				if got := metricValue(t, r.w, "disconnects_total", "reason", tc.reason); got != 1 {
					t.Errorf("disconnects_total{reason=%s} = %v, want 1", tc.reason, got)
				}
			}
			// Still serving: the running job ends well, a new one runs.
			g.open(j.GetId())
			waitStatus(t, c2, j.GetId(), livekit.JobStatus_JS_SUCCESS)
			next := workertest.NewJob("frame-bot", "")
			dispatch(t, c2, next)
			g.waitStarted(t, next.GetId())
			g.open(next.GetId())
			waitStatus(t, c2, next.GetId(), livekit.JobStatus_JS_SUCCESS)
		})
	}
}

func TestGoAwayReconnects(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "away-bot", "canary")
	o.MinBackoff, o.MaxBackoff = 10*time.Second, 10*time.Second // go-away skips the backoff
	g := newGated()
	r := startWorker(t, o, g.handle)
	c1 := mustConn(t, srv)
	j := workertest.NewJob("away-bot", "canary")
	dispatch(t, c1, j)
	g.waitStarted(t, j.GetId())
	if err := c1.SendGoAway(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	c2, err := srv.WaitWorker(ctx)
	if err != nil {
		t.Fatalf("no re-registration after go-away within 8s (backoff is 10s): %v", err)
	}
	waitDone(t, c1)
	sameRegistration(t, c1, c2)
	if got := metricValue(t, r.w, "disconnects_total", "reason", "go_away"); got != 1 {
		t.Errorf("disconnects_total{reason=go_away} = %v, want 1", got)
	}
	g.open(j.GetId())
	waitStatus(t, c2, j.GetId(), livekit.JobStatus_JS_SUCCESS)
}

func TestUnknownMessagesIgnored(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	g := newGated()
	startWorker(t, testOptions(srv, "unknown-bot", ""), g.handle)
	c := mustConn(t, srv)
	ctx := waitCtx(t)
	if err := c.SendUnknown(); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*livekit.ServerMessage{
		{}, // no message set
		{Message: &livekit.ServerMessage_Register{Register: &livekit.RegisterWorkerResponse{WorkerId: "AW_again"}}},
		{Message: &livekit.ServerMessage_Availability{Availability: &livekit.AvailabilityRequest{}}}, // offer without a job
		{Message: &livekit.ServerMessage_Assignment{Assignment: &livekit.JobAssignment{}}},           // assignment without a job
		{Message: &livekit.ServerMessage_Termination{Termination: &livekit.JobTermination{JobId: "AJ_nobody"}}},
		{Message: &livekit.ServerMessage_CreateJobToken{CreateJobToken: &livekit.CreateJobTokenResponse{}}},
	} {
		if err := c.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	j := workertest.NewJob("unknown-bot", "")
	dispatch(t, c, j)
	g.waitStarted(t, j.GetId())
	g.open(j.GetId())
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_SUCCESS)
	if c.Err() != nil {
		t.Fatalf("connection ended: %v", c.Err())
	}
	if n := len(srv.Workers()); n != 1 {
		t.Fatalf("%d registrations, want 1: the worker reconnected", n)
	}
}

func TestCloseAfterRegisterWarnsAndBacksOff(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServerWithOptions(t, workertest.Options{CloseAfterRegister: true})
	o := testOptions(srv, "dropped-bot", "staging")
	o.MinBackoff, o.MaxBackoff = 100*time.Millisecond, 400*time.Millisecond
	var mu sync.Mutex
	var drops []worker.StateChange
	o.OnStateChange = func(c worker.StateChange) {
		if c.State == worker.StateDisconnected {
			mu.Lock()
			drops = append(drops, c)
			mu.Unlock()
		}
	}
	r := startWorker(t, o, newGated().handle)
	const warning = "the server dropped the worker right after registering it"
	eventually(t, "three dropped registrations", func() bool {
		return len(srv.Workers()) >= 3 && r.logs.count(slog.LevelWarn, warning) >= 3
	})
	for _, c := range srv.Workers() {
		if c.Registration().GetDeployment() != "staging" || c.Registration().GetAgentName() != "dropped-bot" {
			t.Errorf("registration %v", c.Registration())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(drops) < 3 {
		t.Fatalf("%d disconnects reported, want at least 3", len(drops))
	}
	for i, d := range drops[:3] {
		if d.Attempt != i+1 {
			t.Errorf("disconnect %d reports attempt %d, want %d: the backoff was reset", i+1, d.Attempt, i+1)
		}
		// Full jitter: uniform in [0, MinBackoff·2^(attempt-1)], capped.
		ceiling := min(o.MinBackoff<<i, o.MaxBackoff)
		if d.RetryIn < 0 || d.RetryIn > ceiling {
			t.Errorf("disconnect %d retries in %s, want a backoff within [0, %s]", i+1, d.RetryIn, ceiling)
		}
	}
	if r.w.Snapshot().GaveUp {
		t.Errorf("worker gave up without MaxRetry")
	}
}

func TestMaxRetryGivesUp(t *testing.T) {
	t.Parallel()
	dropping := workertest.NewServerWithOptions(t, workertest.Options{CloseAfterRegister: true})
	for _, tc := range []struct {
		name     string
		url      string
		maxRetry int
	}{
		{"server drops every registration", dropping.URL(), 2},
		{"nothing listens", "ws://127.0.0.1:1", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := testOptions(dropping, "retry-bot", "")
			o.URL, o.MaxRetry = tc.url, tc.maxRetry
			var attempts int
			o.OnStateChange = func(c worker.StateChange) {
				if c.State == worker.StateConnecting {
					attempts++
				}
			}
			o.Logger = slog.New(newLogRecorder(t))
			w, err := worker.New(o, newGated().handle)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			err = w.Run(ctx)
			if ctx.Err() != nil {
				t.Fatalf("Run kept retrying until its context ended: %v", err)
			}
			if !errors.Is(err, worker.ErrGaveUp) {
				t.Fatalf("Run = %v, want an error wrapping ErrGaveUp", err)
			}
			if attempts != tc.maxRetry+1 {
				t.Errorf("%d connection attempts, want MaxRetry+1 = %d", attempts, tc.maxRetry+1)
			}
			if !w.Snapshot().GaveUp {
				t.Errorf("snapshot does not say the worker gave up")
			}
		})
	}
}

func TestSlowRegistrationTimesOut(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServerWithOptions(t, workertest.Options{RegisterDelay: 3 * time.Second})
	o := testOptions(srv, "slow-bot", "")
	o.RegisterTimeout, o.MaxRetry = 300*time.Millisecond, 1
	o.Logger = slog.New(newLogRecorder(t))
	w, err := worker.New(o, newGated().handle)
	if err != nil {
		t.Fatal(err)
	}
	// Without the timeout, the second attempt would register after 3s.
	err = w.Run(waitCtx(t))
	if !errors.Is(err, worker.ErrGaveUp) {
		t.Fatalf("Run = %v, want ErrGaveUp after registrations timed out", err)
	}
	if n := srv.Attempts(); n != 2 {
		t.Errorf("%d connection attempts, want 2", n)
	}
}

func TestRefusedRegistrationIsFatal(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServerWithOptions(t, workertest.Options{RefuseRegistration: true})
	o := testOptions(srv, "refused-bot", "staging")
	o.Logger = slog.New(newLogRecorder(t))
	w, err := worker.New(o, newGated().handle)
	if err != nil {
		t.Fatal(err)
	}
	ctx := waitCtx(t)
	err = w.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("Run kept retrying a refused registration until its context ended: %v", err)
	}
	if !errors.Is(err, worker.ErrRegistrationRefused) {
		t.Fatalf("Run = %v, want an error wrapping ErrRegistrationRefused", err)
	}
	if n := srv.Attempts(); n < 2 {
		t.Errorf("%d attempts: a single refusal should be retried", n)
	}
}
