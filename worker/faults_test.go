package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
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

// afterOutlived checks the state after a connection ended while job ran
// and c2 replaced it: the job runs on, the new connection was told about
// it (MigrateJob), and a job run on c2 reports normally, with nothing sent
// as an unknown job's.
func afterOutlived(t testing.TB, g *gated, r *running, c2 *workertest.Conn, prefix, deployment string, outlived *livekit.Job) {
	t.Helper()
	if err := g.ctx(outlived.GetId()).Err(); err != nil {
		t.Fatalf("running job's context ended across the reconnection: %v (cause %v)", err, context.Cause(g.ctx(outlived.GetId())))
	}
	eventually(t, "a MigrateJob request naming the running job", func() bool {
		m := c2.Migrations()
		return len(m) == 1 && slices.Equal(m[0], []string{outlived.GetId()})
	})
	dropped := metricValue(t, r.w, "job_statuses_dropped_total", "", "")
	g.open(outlived.GetId())
	eventually(t, "the outlived job to end", func() bool { return !slices.Contains(runningJobs(r.w), outlived.GetId()) })
	eventually(t, "its end counted as dropped", func() bool {
		return metricValue(t, r.w, "job_statuses_dropped_total", "", "") == dropped+1
	})
	next := workertest.NewJob(prefix, deployment)
	dispatch(t, c2, next)
	g.waitStarted(t, next.GetId())
	g.open(next.GetId())
	waitStatus(t, c2, next.GetId(), livekit.JobStatus_JS_SUCCESS)
	if u := c2.UnknownStatuses(); len(u) != 0 {
		t.Fatalf("statuses the server would drop as unknown jobs': %s", statuses(u))
	}
	if got := statusesOf(c2.JobStatuses(), outlived.GetId()); len(got) != 0 {
		t.Fatalf("statuses of the outlived job on the new connection: %v, want none", got)
	}
}

// A job belongs to the connection it was assigned on, as on LiveKit's
// server: when that connection drops, the job goes on, but its statuses
// are not sent on the next connection (the server forgot the job and
// would drop them); they are counted as dropped. The new connection is
// told which jobs outlived the old one.
func TestStatusesStayWithTheirConnection(t *testing.T) {
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
	// While disconnected, a and then a2 end: their ends are dropped.
	g.open(a.GetId())
	g.open(a2.GetId())
	eventually(t, "jobs a and a2 to end and their statuses dropped", func() bool {
		return len(runningJobs(r.w)) == 1 && metricValue(t, r.w, "job_statuses_dropped_total", "", "") == 2
	})
	allowReconnect()

	c2 := mustConn(t, srv)
	sameRegistration(t, c1, c2)
	if got := runningJobs(r.w); !slices.Equal(got, []string{b.GetId()}) {
		t.Fatalf("running jobs after reconnecting: %v, want [%s]", got, b.GetId())
	}
	afterOutlived(t, g, r, c2, "recon-bot", "staging", b)
	for _, j := range []*livekit.Job{a, a2, b} {
		if got := statusesOf(c1.JobStatuses(), j.GetId()); !slices.Equal(got, []livekit.JobStatus{livekit.JobStatus_JS_RUNNING}) {
			t.Errorf("job %s statuses on its own connection: %v, want running only", j.GetId(), got)
		}
	}
}

// The assignment race of LiveKit's server: it writes an assignment and
// only then records the job, so a status sent at once is dropped. The
// worker's StatusDelay outlasts the race; without it (delay 0) the fake,
// which reproduces the race, drops a fast job's end.
func TestStatusDelayOutlastsAssignmentRace(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		noDelay     bool
		wantUnknown bool
	}{
		{"with StatusDelay", false, false},
		{"without it the race loses the end", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServerWithOptions(t, workertest.Options{AssignRace: 100 * time.Millisecond})
			o := testOptions(srv, "race-bot", "")
			ended := make(chan string, 10)
			r := startWorker(t, o, func(ctx context.Context, j *job.Job) error {
				ended <- j.ID()
				return nil // returns at once
			})
			if tc.noDelay {
				worker.SetStatusDelay(r.w, 0)
			}
			c := mustConn(t, srv)
			j := workertest.NewJob("race-bot", "")
			dispatch(t, c, j)
			<-ended
			if tc.wantUnknown {
				eventually(t, "the end dropped as an unknown job's", func() bool {
					return len(c.UnknownStatuses()) == 2 // running and success
				})
				return
			}
			waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_SUCCESS)
			if u := c.UnknownStatuses(); len(u) != 0 {
				t.Fatalf("statuses dropped as unknown jobs': %s", statuses(u))
			}
		})
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
	waitStatus(t, c1, j.GetId(), livekit.JobStatus_JS_RUNNING)

	c1.StopPongs()
	c2 := mustConn(t, srv)
	waitDone(t, c1)
	sameRegistration(t, c1, c2)
	if got := metricValue(t, r.w, "disconnects_total", "reason", "pong_timeout"); got != 1 {
		t.Errorf("disconnects_total{reason=pong_timeout} = %v, want 1", got)
	}
	afterOutlived(t, g, r, c2, "pong-bot", "", j)
}

func TestPongsKeepConnectionAlive(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "alive-bot", "")
	o.PingInterval, o.PongTimeout = 50*time.Millisecond, 2*time.Second
	startWorker(t, o, newGated().handle)
	c := mustConn(t, srv)
	c.StopPongs()
	select { // well under PingInterval+PongTimeout
	case <-c.Done():
		t.Fatalf("connection ended 300ms into a pong pause of at most %s: %v", o.PingInterval+o.PongTimeout, c.Err())
	case <-time.After(300 * time.Millisecond):
	}
	c.ResumePongs()
	select { // beyond it, with pongs
	case <-c.Done():
		t.Fatalf("connection ended although the server answered in time: %v", c.Err())
	case <-time.After(2500 * time.Millisecond):
	}
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
			waitStatus(t, c1, j.GetId(), livekit.JobStatus_JS_RUNNING)

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
			// Still serving: the running job goes on, a new one runs.
			afterOutlived(t, g, r, c2, "frame-bot", "", j)
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
	waitStatus(t, c1, j.GetId(), livekit.JobStatus_JS_RUNNING)
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
	afterOutlived(t, g, r, c2, "away-bot", "canary", j)
}

// A server (or a proxy) that sends go-away after every registration must
// not make the worker reconnect in a tight loop: the first go-away is
// followed at once, the next ones in a row back off.
func TestRepeatedGoAwayBacksOff(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "away-bot", "")
	o.MinBackoff, o.MaxBackoff = 50*time.Millisecond, 200*time.Millisecond
	var mu sync.Mutex
	var retries []time.Duration
	o.OnStateChange = func(c worker.StateChange) {
		if c.State == worker.StateDisconnected {
			mu.Lock()
			retries = append(retries, c.RetryIn)
			mu.Unlock()
		}
	}
	r := startWorker(t, o, newGated().handle)
	ctx := waitCtx(t)
	const n = 5
	for range n {
		c, err := srv.WaitWorker(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SendGoAway(); err != nil {
			t.Fatal(err)
		}
	}
	mustConn(t, srv)
	mu.Lock()
	got := append([]time.Duration(nil), retries...)
	mu.Unlock()
	if len(got) != n {
		t.Fatalf("%d disconnects reported, want %d", len(got), n)
	}
	if got[0] != 0 {
		t.Errorf("first go-away waits %s, want a reconnect at once", got[0])
	}
	for i, d := range got[1:] {
		if d <= 0 || d > o.MaxBackoff {
			t.Errorf("go-away %d in a row waits %s, want a backoff in (0, %s]", i+2, d, o.MaxBackoff)
		}
	}
	if v := metricValue(t, r.w, "disconnects_total", "reason", "go_away"); v != n {
		t.Errorf("disconnects_total{reason=go_away} = %v, want %d", v, n)
	}
	if r.w.Snapshot().GaveUp {
		t.Errorf("go-aways made the worker give up")
	}
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
	// From the second drop in a row on, the worker says what it likely
	// means: here, that "dropped-bot" in staging shares the server's job
	// topic with "dropped-bot_staging" in production.
	const warning = `the server dropped the registration right after accepting it`
	const twin = `agent "dropped-bot_staging" in production`
	eventually(t, "dropped registrations explained", func() bool {
		mu.Lock()
		n := len(drops)
		mu.Unlock()
		return n >= 3 && r.logs.count(slog.LevelWarn, warning) >= 2 && r.logs.count(slog.LevelWarn, twin) >= 2
	})
	if n := r.logs.count(slog.LevelWarn, warning); n >= len(srv.Workers()) {
		t.Errorf("warned %d times for %d registrations: the first drop alone means nothing", n, len(srv.Workers()))
	}
	if h := r.w.Snapshot().Hint; !strings.Contains(h, twin) {
		t.Errorf("snapshot hint %q does not name %s", h, twin)
	}
	rec := httptest.NewRecorder()
	r.w.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), twin) {
		t.Errorf("/readyz = %d %q, want 503 naming %s", rec.Code, rec.Body.String(), twin)
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

// LiveKit's server refuses an invalid registration by closing the socket
// without a word: that looks like a lost connection, and is retried with
// backoff for as long as MaxRetry allows (0: for ever).
func TestSilentlyRefusedRegistrationIsRetried(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServerWithOptions(t, workertest.Options{RefuseRegistration: true})
	o := testOptions(srv, "refused-bot", "staging")
	o.MinBackoff, o.MaxBackoff = 5*time.Millisecond, 20*time.Millisecond
	r := startWorker(t, o, newGated().handle)
	eventually(t, "ten refused registrations", func() bool { return srv.Attempts() >= 10 })
	if r.w.Snapshot().GaveUp {
		t.Fatal("the worker gave up without MaxRetry")
	}
}

// A server that refuses with a refusing close code (1008, policy
// violation) is retried too; the refusal counts toward MaxRetry, is logged
// at Error level, and the error Run returns says what happened.
func TestRefusalCountsTowardMaxRetry(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServerWithOptions(t, workertest.Options{
		RefuseRegistration: true, RefuseCloseCode: websocket.ClosePolicyViolation})
	o := testOptions(srv, "refused-bot", "staging")
	o.MaxRetry = 2
	logs := newLogRecorder(t)
	o.Logger = slog.New(logs)
	w, err := worker.New(o, newGated().handle)
	if err != nil {
		t.Fatal(err)
	}
	ctx := waitCtx(t)
	err = w.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("Run kept retrying until its context ended: %v", err)
	}
	if !errors.Is(err, worker.ErrGaveUp) || !errors.Is(err, worker.ErrRegistrationRefused) {
		t.Fatalf("Run = %v, want an error wrapping ErrGaveUp and ErrRegistrationRefused", err)
	}
	if n := srv.Attempts(); n != 3 {
		t.Errorf("%d attempts, want MaxRetry+1 = 3", n)
	}
	if n := logs.count(slog.LevelError, "disconnected; reconnecting"); n != 2 {
		t.Errorf("%d refusals logged at Error, want 2", n)
	}
}

// The connection never ends a job: when it cannot be restored (here: the
// server is gone and MaxRetry is spent), running jobs go on until they end
// by themselves, and only then does Run return its error.
func TestGivingUpLetsJobsEnd(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(nil)
	o := testOptions(srv, "orphan-bot", "")
	o.MaxRetry = 1
	o.DrainTimeout = patience
	logs := newLogRecorder(t)
	o.Logger = slog.New(logs)
	g := newGated()
	w, err := worker.New(o, g.handle)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	c := mustConn(t, srv)
	j := workertest.NewJob("orphan-bot", "")
	dispatch(t, c, j)
	g.waitStarted(t, j.GetId())
	srv.Close()
	eventually(t, "the worker to give up", func() bool { return w.Snapshot().GaveUp })
	select {
	case err := <-done:
		t.Fatalf("Run returned %v while a job ran", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := g.ctx(j.GetId()).Err(); err != nil {
		t.Fatalf("the job was cancelled: %v (cause %v)", err, context.Cause(g.ctx(j.GetId())))
	}
	g.open(j.GetId())
	select {
	case err := <-done:
		if !errors.Is(err, worker.ErrGaveUp) {
			t.Fatalf("Run = %v, want ErrGaveUp", err)
		}
	case <-time.After(patience):
		t.Fatal("Run did not return after the job ended")
	}
	if logs.count(slog.LevelError, "letting running jobs end") != 1 {
		t.Errorf("no Error line saying the worker waits for its jobs")
	}
}
