package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	dto "github.com/prometheus/client_model/go"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

// metricValue returns the value of the counter or gauge name (without the
// lkagent_ prefix) whose label has value, summed over matching series.
func metricValue(t testing.TB, w *worker.Worker, name, label, value string) float64 {
	t.Helper()
	mfs, err := w.Gatherer().Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "lkagent_"+name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !hasLabel(m, label, value) {
				continue
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

func TestOfferGuardDeclinesForeignJobs(t *testing.T) {
	t.Parallel()
	type registered struct{ agent, deployment string }
	for _, tc := range []struct {
		name    string
		worker  registered
		job     func() *livekit.Job
		reason  string // "" = accepted
		runsJob bool
	}{
		{"own staging job", registered{"guard-bot", "staging"},
			func() *livekit.Job { return workertest.NewJob("guard-bot", "staging") }, "", true},
		{"own production job", registered{"guard-bot", ""},
			func() *livekit.Job { return workertest.NewJob("guard-bot", "") }, "", true},
		{"foreign agent name", registered{"guard-bot", "staging"},
			func() *livekit.Job { return workertest.NewJob("other-bot", "staging") }, worker.DeclineForeignAgent, false},
		{"automatic agent job to a named worker", registered{"guard-bot", ""},
			func() *livekit.Job { return workertest.NewJob("", "") }, worker.DeclineForeignAgent, false},
		{"foreign deployment", registered{"guard-bot", "staging"},
			func() *livekit.Job { return workertest.NewJob("guard-bot", "canary") }, worker.DeclineForeignDeployment, false},
		{"staging worker offered a production job", registered{"guard-bot", "staging"},
			func() *livekit.Job { return workertest.NewJob("guard-bot", "") }, worker.DeclineForeignDeployment, false},
		{"production worker offered a staging job", registered{"guard-bot", ""},
			func() *livekit.Job { return workertest.NewJob("guard-bot", "staging") }, worker.DeclineForeignDeployment, false},
		{"deployment differing in case", registered{"guard-bot", "staging"},
			func() *livekit.Job { return workertest.NewJob("guard-bot", "Staging") }, worker.DeclineForeignDeployment, false},
		{"foreign job type", registered{"guard-bot", "staging"},
			func() *livekit.Job {
				j := workertest.NewJob("guard-bot", "staging")
				j.Type = livekit.JobType_JT_PUBLISHER
				return j
			}, worker.DeclineForeignJobType, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			rec := newRecorder()
			defer rec.releaseAll()
			r := startWorker(t, testOptions(srv, tc.worker.agent, tc.worker.deployment), rec.handle)
			c := mustConn(t, srv)
			j := tc.job()
			res, err := c.Offer(waitCtx(t), j)
			if err != nil {
				t.Fatal(err)
			}
			if res.GetJobId() != j.GetId() {
				t.Errorf("answer for job %q, want %q", res.GetJobId(), j.GetId())
			}
			if got, want := res.GetAvailable(), tc.reason == ""; got != want {
				t.Fatalf("offer available = %v, want %v", got, want)
			}
			// Assign it anyway, as a misrouting server might.
			if err := c.Assign(waitCtx(t), j, workertest.Token); err != nil {
				t.Fatal(err)
			}
			if tc.runsJob {
				if got := rec.waitStarted(t); got.ID() != j.GetId() {
					t.Fatalf("ran job %s, want %s", got.ID(), j.GetId())
				}
				return
			}
			u := waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_FAILED)
			if u.GetError() == "" {
				t.Errorf("unaccepted assignment reported failed without an error text")
			}
			if ran := rec.ran(); len(ran) != 0 {
				t.Fatalf("handler ran jobs %v, want none", ran)
			}
			if got := metricValue(t, r.w, "offers_declined_total", "reason", tc.reason); got != 1 {
				t.Errorf("offers_declined_total{reason=%q} = %v, want 1", tc.reason, got)
			}
			if got := r.logs.count(slog.LevelWarn, "offer declined"); got != 1 {
				t.Errorf("%d warnings about the declined offer, want 1", got)
			}
		})
	}
}

func TestOnRequestAcceptOptions(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "req-bot", "staging")
	var seen atomic.Pointer[job.Request]
	o.OnRequest = func(ctx context.Context, r *job.Request) error {
		seen.Store(r)
		return r.Accept(job.AcceptOptions{
			Identity:   "agent-" + r.RoomName(),
			Name:       "Support Bot",
			Metadata:   `{"tier":"gold"}`,
			Attributes: map[string]string{"lang": "de", "role": "support"},
		})
	}
	rec := newRecorder()
	defer rec.releaseAll()
	startWorker(t, o, rec.handle)
	c := mustConn(t, srv)
	j := workertest.NewJob("req-bot", "staging")
	j.Metadata = "dispatch metadata"
	res := dispatch(t, c, j)
	if res.GetParticipantIdentity() != "agent-"+j.GetRoom().GetName() || res.GetParticipantName() != "Support Bot" ||
		res.GetParticipantMetadata() != `{"tier":"gold"}` ||
		!maps.Equal(res.GetParticipantAttributes(), map[string]string{"lang": "de", "role": "support"}) {
		t.Errorf("availability answer %v does not carry the accept options", res)
	}
	r := seen.Load()
	if r.ID() != j.GetId() || r.AgentName() != "req-bot" || r.Deployment() != "staging" || r.Metadata() != "dispatch metadata" {
		t.Errorf("OnRequest saw job %s agent %q deployment %q metadata %q", r.ID(), r.AgentName(), r.Deployment(), r.Metadata())
	}
	got := rec.waitStarted(t)
	if got.Identity() != "agent-"+j.GetRoom().GetName() {
		t.Errorf("job identity %q, want the accepted one", got.Identity())
	}
}

func TestDefaultAcceptIdentity(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	rec := newRecorder()
	defer rec.releaseAll()
	startWorker(t, testOptions(srv, "id-bot", ""), rec.handle)
	c := mustConn(t, srv)
	j := workertest.NewJob("id-bot", "")
	res := dispatch(t, c, j)
	if want := "agent-" + j.GetId(); res.GetParticipantIdentity() != want {
		t.Errorf("identity %q, want %q", res.GetParticipantIdentity(), want)
	}
	if got := rec.waitStarted(t); got.Identity() != res.GetParticipantIdentity() {
		t.Errorf("job identity %q, want %q", got.Identity(), res.GetParticipantIdentity())
	}
}

func TestOnRequestDeclines(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		onRequest func(ctx context.Context, r *job.Request, release <-chan struct{}) error
		reason    string
		within    time.Duration // the answer must come this soon
	}{
		{"reject", func(_ context.Context, r *job.Request, _ <-chan struct{}) error { return r.Reject() },
			worker.DeclineRejected, patience},
		{"error", func(context.Context, *job.Request, <-chan struct{}) error {
			return errors.New("no capacity for this room")
		},
			worker.DeclineRequestError, patience},
		{"error after accepting", func(_ context.Context, r *job.Request, _ <-chan struct{}) error {
			_ = r.Accept(job.AcceptOptions{})
			return errors.New("changed my mind")
		}, worker.DeclineRequestError, patience},
		{"panic", func(context.Context, *job.Request, <-chan struct{}) error { panic("OnRequest exploded") },
			worker.DeclineRequestError, patience},
		{"returns undecided", func(context.Context, *job.Request, <-chan struct{}) error { return nil },
			worker.DeclineRejected, patience},
		{"too slow, ignores ctx", func(_ context.Context, r *job.Request, release <-chan struct{}) error {
			<-release // far beyond OnRequestTimeout: until the test ends
			return r.Accept(job.AcceptOptions{})
		}, worker.DeclineRequestError, 5 * time.Second},
		{"too slow, honours ctx", func(ctx context.Context, r *job.Request, _ <-chan struct{}) error {
			<-ctx.Done()
			return r.Accept(job.AcceptOptions{})
		}, worker.DeclineRequestError, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			o := testOptions(srv, "decline-bot", "")
			o.OnRequestTimeout = 200 * time.Millisecond
			release := make(chan struct{})
			var calls atomic.Int32
			o.OnRequest = func(ctx context.Context, r *job.Request) error {
				if calls.Add(1) == 1 {
					return tc.onRequest(ctx, r, release)
				}
				return r.Accept(job.AcceptOptions{})
			}
			rec := newRecorder()
			defer rec.releaseAll()
			r := startWorker(t, o, rec.handle)
			t.Cleanup(func() { close(release) }) // before the worker stops
			c := mustConn(t, srv)

			j := workertest.NewJob("decline-bot", "")
			ctx, cancel := context.WithTimeout(context.Background(), tc.within)
			defer cancel()
			start := time.Now()
			res, err := c.Offer(ctx, j)
			if err != nil {
				t.Fatalf("no answer to the offer within %s: %v", tc.within, err)
			}
			if res.GetAvailable() {
				t.Fatalf("offer accepted, want declined")
			}
			t.Logf("declined after %s", time.Since(start).Round(time.Millisecond))
			if got := metricValue(t, r.w, "offers_declined_total", "reason", tc.reason); got != 1 {
				t.Errorf("offers_declined_total{reason=%q} = %v, want 1", tc.reason, got)
			}
			// Assigned anyway, it does not run.
			if err := c.Assign(waitCtx(t), j, workertest.Token); err != nil {
				t.Fatal(err)
			}
			waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_FAILED)

			// The worker keeps serving.
			next := workertest.NewJob("decline-bot", "")
			dispatch(t, c, next)
			if got := rec.waitStarted(t); got.ID() != next.GetId() {
				t.Fatalf("ran %s, want %s", got.ID(), next.GetId())
			}
			if ran := rec.ran(); slices.Contains(ran, j.GetId()) {
				t.Fatalf("declined job %s ran", j.GetId())
			}
		})
	}
}

func TestDuplicateOffersAndAssignments(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	rec := newRecorder()
	r := startWorker(t, testOptions(srv, "dup-bot", ""), rec.handle)
	c := mustConn(t, srv)
	ctx := waitCtx(t)

	// Offered twice before the assignment: the second offer is declined.
	j := workertest.NewJob("dup-bot", "")
	if res, err := c.Offer(ctx, j); err != nil || !res.GetAvailable() {
		t.Fatalf("first offer: %v %v", res, err)
	}
	if res, err := c.Offer(ctx, j); err != nil || res.GetAvailable() {
		t.Fatalf("second offer of a reserved job: %v %v, want declined", res, err)
	}
	// Assigned twice while running: runs once.
	if err := c.Assign(ctx, j, workertest.Token); err != nil {
		t.Fatal(err)
	}
	rec.waitStarted(t)
	if err := c.Assign(ctx, j, workertest.Token); err != nil {
		t.Fatal(err)
	}
	// Offered again while running: declined.
	if res, err := c.Offer(ctx, j); err != nil || res.GetAvailable() {
		t.Fatalf("offer of a running job: %v %v, want declined", res, err)
	}
	eventually(t, "the repeated assignment counted", func() bool {
		return metricValue(t, r.w, "unexpected_assignments_total", "", "") == 1
	})
	rec.releaseAll()
	waitStatus(t, c, j.GetId(), livekit.JobStatus_JS_SUCCESS)

	// Offered and assigned again after it ended: declined, not rerun.
	if res, err := c.Offer(ctx, j); err != nil || res.GetAvailable() {
		t.Fatalf("offer of a finished job: %v %v, want declined", res, err)
	}
	if err := c.Assign(ctx, j, workertest.Token); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the late assignment counted", func() bool {
		return metricValue(t, r.w, "unexpected_assignments_total", "", "") == 2
	})

	// An assignment for a job never offered is not run, and reported failed.
	stray := workertest.NewJob("dup-bot", "")
	if err := c.Assign(ctx, stray, workertest.Token); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, stray.GetId(), livekit.JobStatus_JS_FAILED)

	// Terminations of unknown and finished jobs are harmless. (LiveKit's
	// server sends none: it terminates only jobs it runs.)
	for _, id := range []string{"AJ_unknown", j.GetId(), ""} {
		sendTermination(t, c, id)
	}
	next := workertest.NewJob("dup-bot", "")
	dispatch(t, c, next)
	waitStatus(t, c, next.GetId(), livekit.JobStatus_JS_SUCCESS)

	if got, want := rec.ran(), []string{j.GetId(), next.GetId()}; !slices.Equal(got, want) {
		t.Fatalf("ran %v, want %v", got, want)
	}
	if got := statusesOf(c.JobStatuses(), j.GetId()); !slices.Equal(got, []livekit.JobStatus{livekit.JobStatus_JS_RUNNING, livekit.JobStatus_JS_SUCCESS}) {
		t.Fatalf("statuses of %s: %v, want running then success once", j.GetId(), got)
	}
	if c.Err() != nil {
		t.Fatalf("connection ended: %v", c.Err())
	}
}

func TestTerminationBeforeAssignmentReleasesSlot(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "term-bot", "")
	o.MaxJobs, o.MaxQueued = 1, -1
	rec := newRecorder()
	defer rec.releaseAll()
	startWorker(t, o, rec.handle)
	c := mustConn(t, srv)
	ctx := waitCtx(t)
	j := workertest.NewJob("term-bot", "")
	if res, err := c.Offer(ctx, j); err != nil || !res.GetAvailable() {
		t.Fatalf("offer: %v %v", res, err)
	}
	// LiveKit's server never terminates a job it did not assign; a worker
	// that gets such a termination anyway frees the slot.
	sendTermination(t, c, j.GetId())
	next := workertest.NewJob("term-bot", "")
	eventually(t, "the slot freed by the termination", func() bool {
		res, err := c.Offer(ctx, next)
		return err == nil && res.GetAvailable()
	})
}

func TestMaxJobsUnderConcurrentOffers(t *testing.T) {
	t.Parallel()
	const maxJobs, offers = 3, 40
	for _, tc := range []struct {
		name string
		load func() float64
	}{
		{"load from jobs", nil},
		{"LoadFunc reporting idle", func() float64 { return 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := workertest.NewServer(t)
			o := testOptions(srv, "burst-bot", "")
			o.MaxJobs, o.MaxQueued = maxJobs, -1
			o.LoadThreshold = 1
			o.LoadFunc = tc.load
			o.AssignmentTimeout = time.Minute
			rec := newRecorder()
			defer rec.releaseAll()
			startWorker(t, o, rec.handle)
			c := mustConn(t, srv)

			ctx := waitCtx(t)
			var accepted atomic.Int32
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range offers {
				j := workertest.NewJob("burst-bot", "")
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					res, err := c.Offer(ctx, j)
					if err != nil {
						t.Errorf("offer %d: %v", i, err)
						return
					}
					if res.GetAvailable() {
						accepted.Add(1)
					}
				}()
			}
			close(start)
			wg.Wait()
			if got := accepted.Load(); got != maxJobs {
				t.Fatalf("%d of %d concurrent offers accepted, want exactly MaxJobs = %d", got, offers, maxJobs)
			}
			// Full now: one more offer is declined.
			if res, err := c.Offer(ctx, workertest.NewJob("burst-bot", "")); err != nil || res.GetAvailable() {
				t.Fatalf("offer beyond MaxJobs: %v %v, want declined", res, err)
			}
		})
	}
}

func TestAssignmentTimeoutFreesSlot(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "slot-bot", "")
	o.MaxJobs, o.MaxQueued = 1, -1
	o.AssignmentTimeout = 300 * time.Millisecond
	rec := newRecorder()
	defer rec.releaseAll()
	r := startWorker(t, o, rec.handle)
	c := mustConn(t, srv)
	ctx := waitCtx(t)

	orphan := workertest.NewJob("slot-bot", "")
	offered := time.Now() // the worker starts the timeout after this
	if res, err := c.Offer(ctx, orphan); err != nil || !res.GetAvailable() {
		t.Fatalf("offer: %v %v", res, err)
	}
	// The assignment never comes. After AssignmentTimeout the slot is free.
	next := workertest.NewJob("slot-bot", "")
	eventually(t, "the slot of the unassigned offer freed", func() bool {
		res, err := c.Offer(ctx, next)
		if err != nil {
			t.Fatal(err)
		}
		return res.GetAvailable()
	})
	if took := time.Since(offered); took < o.AssignmentTimeout {
		t.Fatalf("slot freed after %s, before the assignment timeout %s", took, o.AssignmentTimeout)
	}
	if got := metricValue(t, r.w, "assignment_timeouts_total", "", ""); got != 1 {
		t.Errorf("assignment_timeouts_total = %v, want 1", got)
	}
	// next is assigned in time (its own timeout runs); the late
	// assignment of the orphan is not run.
	if err := c.Assign(ctx, next, workertest.Token); err != nil {
		t.Fatal(err)
	}
	if err := c.Assign(ctx, orphan, workertest.Token); err != nil {
		t.Fatal(err)
	}
	if got := rec.waitStarted(t); got.ID() != next.GetId() {
		t.Fatalf("ran %s, want %s", got.ID(), next.GetId())
	}
	waitStatus(t, c, orphan.GetId(), livekit.JobStatus_JS_FAILED)
}

func TestStuckOnRequestDoesNotBlockStop(t *testing.T) {
	t.Parallel()
	srv := workertest.NewServer(t)
	o := testOptions(srv, "stuck-req-bot", "")
	o.OnRequestTimeout, o.ShutdownTimeout = 100*time.Millisecond, 300*time.Millisecond
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	o.OnRequest = func(context.Context, *job.Request) error {
		<-stuck // ignores its context until the test ends
		return nil
	}
	r := startWorker(t, o, newRecorder().handle)
	c := mustConn(t, srv)
	if res, err := c.Offer(waitCtx(t), workertest.NewJob("stuck-req-bot", "")); err != nil || res.GetAvailable() {
		t.Fatalf("offer: %v %v, want declined", res, err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- r.stop() }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s while an OnRequest call was stuck (ShutdownTimeout 300ms)")
	}
	if n := r.logs.count(slog.LevelError, "OnRequest"); n != 1 {
		t.Errorf("%d errors about the stuck OnRequest call, want 1", n)
	}
}
