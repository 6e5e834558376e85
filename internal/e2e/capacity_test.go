package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
	"github.com/prometheus/common/expfmt"

	"github.com/lkagent/lkagent/internal/testkit/faultproxy"
	"github.com/lkagent/lkagent/internal/testkit/lkserver"
	"github.com/lkagent/lkagent/internal/testkit/wait"
	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
)

// These tests prove the worker's capacity against the real server: MaxJobs
// jobs run at once, an admission queue takes a burst that the server would
// otherwise drop, a worker whose queue is full declines and the server
// tries another worker, a job that waited too long is reported failed, and
// a drain runs the jobs it queued.

// heavy serializes the tests that dispatch hundreds of jobs at once: two
// of them together would slow each other's dispatches on a small machine
// and blur what each measures.
var heavy sync.Mutex

// tally is an OnRequest function and a job handler that count what the
// worker did: offers accepted, handler starts per room, handlers running
// at once and their peak. Each handler runs for hold, after gate (if set)
// is closed.
type tally struct {
	hold time.Duration
	gate <-chan struct{}

	mu        sync.Mutex
	accepted  map[string]time.Time // job id → offer accepted
	starts    map[string]int       // room → handler starts
	started   map[string]time.Time // job id → handler start
	running   int
	peak      int
	ended     int
	cancelled int       // handlers whose context ended before their hold did
	lastEnd   time.Time // when the last handler returned
}

func newTally(hold time.Duration) *tally {
	return &tally{hold: hold, accepted: map[string]time.Time{}, starts: map[string]int{}, started: map[string]time.Time{}}
}

func (c *tally) onRequest(_ context.Context, r *job.Request) error {
	c.mu.Lock()
	c.accepted[r.ID()] = time.Now()
	c.mu.Unlock()
	return r.Accept(job.AcceptOptions{})
}

func (c *tally) handle(ctx context.Context, j *job.Job) error {
	c.mu.Lock()
	c.starts[j.RoomName()]++
	c.started[j.ID()] = time.Now()
	c.running++
	c.peak = max(c.peak, c.running)
	c.mu.Unlock()
	cancelled := c.wait(ctx)
	c.mu.Lock()
	c.running--
	c.ended++
	if cancelled {
		c.cancelled++
	}
	c.lastEnd = time.Now()
	c.mu.Unlock()
	return nil
}

// wait waits for the gate, then for hold; true if ctx ended first.
func (c *tally) wait(ctx context.Context) bool {
	if c.gate != nil {
		select {
		case <-ctx.Done():
			return true
		case <-c.gate:
		}
	}
	t := time.NewTimer(c.hold)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return true
	case <-t.C:
		return false
	}
}

// ran is how many of rooms had a handler start, and how many starts came
// beyond the first for a room.
func (c *tally) ran(rooms []string) (ran, twice int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rooms {
		if n := c.starts[r]; n > 0 {
			ran++
			twice += n - 1
		}
	}
	return ran, twice
}

func (c *tally) peakRunning() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak
}

// waitEvents waits until sub delivered n events, none dropped.
func waitEvents(t *testing.T, sub *worker.Subscription, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for got := 0; got < n; got++ {
		select {
		case <-sub.C:
		case <-deadline.C:
			t.Fatalf("%d of %d events within %s", got, n, timeout)
		}
	}
	if d := sub.Dropped(); d > 0 {
		t.Fatalf("%d events dropped", d)
	}
}

// queueWaits is, per job that started, the time from its offer being
// accepted to its handler start.
func (c *tally) queueWaits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var d []time.Duration
	for id, at := range c.started {
		if acc, ok := c.accepted[id]; ok {
			d = append(d, at.Sub(acc))
		}
	}
	return d
}

func (c *tally) ranRoom(room string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.starts[room] > 0
}

func (c *tally) ranJob(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.started[id]
	return ok
}

// quantile is the q-quantile of d (nearest rank); 0 for none.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := min(max(int(q*float64(len(s))+0.5)-1, 0), len(s)-1)
	return s[i]
}

// dispatchAtOnce creates n dispatches for agent at the same instant, each
// for a room of its own, and returns the rooms.
func dispatchAtOnce(t *testing.T, agent, deployment string, n int) []string {
	t.Helper()
	client := dispatchClient()
	rooms := make([]string, n)
	errs := make([]error, n)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		rooms[i] = fmt.Sprintf("%s-%d", agent, i)
		wg.Go(func() {
			<-gate
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			_, errs[i] = client.CreateDispatch(ctx, &livekit.CreateAgentDispatchRequest{
				AgentName: agent, Room: rooms[i], Deployment: deployment})
		})
	}
	close(gate)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("CreateDispatch: %v", err)
	}
	return rooms
}

// gathered is w's metrics in the text format.
func gathered(t *testing.T, w *worker.Worker) string {
	t.Helper()
	families, err := w.Gatherer().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			t.Fatalf("encode metrics: %v", err)
		}
	}
	return b.String()
}

// Proof 1: MaxJobs 10 and 10 dispatches at once, each job holding 8 s:
// the 10 run at the same time (the server keeps offering until the worker
// is full, instead of stopping at 70 % of MaxJobs).
func TestMaxJobsRunAtOnce(t *testing.T) {
	t.Parallel()
	agent := uniq("cap10")
	c := newTally(8 * time.Second)
	w := startWorker(t, worker.Options{AgentName: agent, Deployment: "staging", MaxJobs: 10,
		OnRequest: c.onRequest}, c.handle)
	rooms := dispatchAtOnce(t, agent, "staging", 10)
	took := waitFor(t, time.Minute, "10 jobs to start", func() bool { n, _ := c.ran(rooms); return n == 10 })
	snap := w.Snapshot()
	t.Logf("10 jobs started %s after the dispatches; %d running at once; worker reports load %.3f",
		took.Round(time.Millisecond), c.peakRunning(), snap.Load)
	if p := c.peakRunning(); p != 10 {
		t.Fatalf("peak running %d, want 10 at the same time", p)
	}
	if len(snap.Jobs) != 10 || snap.Queued != 0 {
		t.Errorf("snapshot: %d jobs, %d queued; want 10 running, none queued", len(snap.Jobs), snap.Queued)
	}
	if _, twice := c.ran(rooms); twice != 0 {
		t.Errorf("%d jobs ran twice", twice)
	}
}

// Proof 2: MaxJobs 20 and a queue of 300, 300 dispatches at once, each job
// holding 2 s: all 300 run, none twice, never more than 20 at once.
func TestBurstQueuedNoneLost(t *testing.T) {
	t.Parallel()
	heavy.Lock()
	defer heavy.Unlock()
	const n = 300
	agent := uniq("burst")
	c := newTally(2 * time.Second)
	w := startWorker(t, worker.Options{AgentName: agent, Deployment: "staging", MaxJobs: 20, MaxQueued: n,
		QueueTimeout: 5 * time.Minute, OnRequest: c.onRequest, DrainTimeout: time.Minute}, c.handle)
	ended := w.Subscribe(worker.EventEnded)
	defer ended.Close()
	start := time.Now()
	rooms := dispatchAtOnce(t, agent, "staging", n)
	t.Logf("%d dispatches created in %s", n, time.Since(start).Round(time.Millisecond))
	waitFor(t, 5*time.Minute, "300 jobs to start", func() bool { ran, _ := c.ran(rooms); return ran == n })
	lastStart := time.Since(start)
	// Each job's end is counted once the worker is done with it (its
	// status reported, its room left), after its handler returned.
	waitEvents(t, ended, n, time.Minute)
	ran, twice := c.ran(rooms)
	waits := c.queueWaits()
	t.Logf("%d ran, %d twice, peak running %d; first dispatch → last start %s; queue wait (offer accepted → handler start) p50 %s, p99 %s, n %d",
		ran, twice, c.peakRunning(), lastStart.Round(time.Millisecond),
		quantile(waits, 0.5).Round(time.Millisecond), quantile(waits, 0.99).Round(time.Millisecond), len(waits))
	if twice != 0 {
		t.Errorf("%d jobs ran twice", twice)
	}
	if p := c.peakRunning(); p != 20 {
		t.Errorf("peak running %d, want 20 (never more than MaxJobs, and the slots filled)", p)
	}
	body := gathered(t, w)
	if v, _ := metricValue(t, body, "lkagent_jobs_finished_total", map[string]string{"status": "success"}); v != n {
		t.Errorf("jobs_finished_total{status=success} = %v, want %d", v, n)
	}
	if v, _ := metricValue(t, body, "lkagent_jobs_finished_total", map[string]string{"status": "queue_timeout"}); v != 0 {
		t.Errorf("jobs_finished_total{status=queue_timeout} = %v, want 0", v)
	}
	if _, queued := metricValue(t, body, "lkagent_queue_wait_seconds", nil); queued == 0 {
		t.Error("no job went through the queue: the burst did not test it")
	} else {
		t.Logf("%d jobs waited in the queue (lkagent_queue_wait_seconds)", queued)
	}
	if v, _ := metricValue(t, body, "lkagent_offers_declined_total", nil); v != 0 {
		t.Errorf("%v offers declined with room in the queue", v)
	}
}

// Proof 3: two workers with MaxJobs 20 and a queue each, 300 dispatches at
// once: none lost, and the server splits them between the workers.
func TestBurstSplitBetweenTwoWorkers(t *testing.T) {
	t.Parallel()
	heavy.Lock()
	defer heavy.Unlock()
	const n = 300
	agent := uniq("split")
	a, b := newTally(2*time.Second), newTally(2*time.Second)
	o := worker.Options{AgentName: agent, Deployment: "staging", MaxJobs: 20, MaxQueued: n,
		QueueTimeout: 5 * time.Minute, DrainTimeout: time.Minute}
	oa, ob := o, o
	oa.OnRequest, ob.OnRequest = a.onRequest, b.onRequest
	startWorker(t, oa, a.handle)
	startWorker(t, ob, b.handle)
	start := time.Now()
	rooms := dispatchAtOnce(t, agent, "staging", n)
	ran := func() (int, int, int) {
		ra, ta := a.ran(rooms)
		rb, tb := b.ran(rooms)
		return ra, rb, ta + tb
	}
	waitFor(t, 5*time.Minute, "300 jobs to start", func() bool { ra, rb, _ := ran(); return ra+rb >= n })
	lastStart := time.Since(start)
	ra, rb, twice := ran()
	lost := 0
	for _, r := range rooms {
		if !a.ranRoom(r) && !b.ranRoom(r) {
			lost++
		}
	}
	waits := append(a.queueWaits(), b.queueWaits()...)
	t.Logf("worker A ran %d (peak %d), worker B ran %d (peak %d); %d lost, %d twice; first dispatch → last start %s; queue wait p50 %s, p99 %s",
		ra, a.peakRunning(), rb, b.peakRunning(), lost, twice, lastStart.Round(time.Millisecond),
		quantile(waits, 0.5).Round(time.Millisecond), quantile(waits, 0.99).Round(time.Millisecond))
	if lost != 0 || twice != 0 || ra+rb != n {
		t.Fatalf("%d lost, %d run twice, %d ran; want 0, 0, %d", lost, twice, ra+rb, n)
	}
	// The server picks at random weighted by 1 - load: each worker takes
	// about half. A sixth is far below what chance makes likely, far above
	// "one takes everything while the other idles".
	for name, got := range map[string]int{"A": ra, "B": rb} {
		if got < n/6 {
			t.Errorf("worker %s ran %d of %d jobs: the split is lopsided", name, got, n)
		}
	}
	for name, c := range map[string]*tally{"A": a, "B": b} {
		if p := c.peakRunning(); p != 20 {
			t.Errorf("worker %s: peak running %d, want 20", name, p)
		}
	}
}

// serverAssign matches the server's log lines about assigning a job to a
// worker: the message, then the job id and the worker id among the fields.
var serverAssign = regexp.MustCompile(`(failed to assign job to worker|assigned job to worker).*"jobID": "([^"]+)".*"workerID": "([^"]+)"`)

// attempt is one of the server's attempts to assign a job.
type attempt struct {
	worker string // the worker's id
	failed bool
	line   string
}

// assignments reads the server's attempts to assign each job, by job id,
// in order.
func assignments(log string) map[string][]attempt {
	out := map[string][]attempt{}
	for _, line := range strings.Split(log, "\n") {
		m := serverAssign.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		out[m[2]] = append(out[m[2]], attempt{worker: m[3], failed: m[1] != "assigned job to worker", line: line})
	}
	return out
}

// Proof 4: a worker whose slot and queue are full declines an offer, and
// the server gives that job to the second worker, as its log shows: "failed
// to assign job to worker" for the first, with retry true, then "assigned
// job to worker" for the second.
//
// Worker A is behind 300 ms of network latency each way, as a worker in
// another region is: the server's view of A's load lags, so a burst brings
// A more offers than its slot and its queue can take. (The server gives up
// on a job whose offers are not answered within 3 s in all, so the latency
// stays well below that.)
func TestFullQueueDeclinesToSecondWorker(t *testing.T) {
	t.Parallel()
	agent := uniq("full")
	release := make(chan struct{})
	defer close(release)
	a := newTally(time.Second)
	a.gate = release // A's jobs hold until the test ends
	b := newTally(time.Second)
	px := proxyTo(t, srv)
	pa := runVia(t, srv, px.URL(), worker.Options{AgentName: agent, Deployment: "staging", MaxJobs: 1, MaxQueued: 1,
		QueueTimeout: time.Minute, OnRequest: a.onRequest}, a.handle)
	wa := pa.w
	px.Delay(faultproxy.KindAgent, 300*time.Millisecond)
	wb := startWorker(t, worker.Options{AgentName: agent, Deployment: "staging", MaxJobs: 20, MaxQueued: 20,
		OnRequest: b.onRequest}, b.handle)
	idA, idB := wa.Snapshot().WorkerID, wb.Snapshot().WorkerID
	if idA == "" || idB == "" || idA == idB {
		t.Fatalf("worker ids %q and %q", idA, idB)
	}
	const n = 20
	rooms := dispatchAtOnce(t, agent, "staging", n)
	var ra, rb, qa int
	if !wait.Within(2*time.Minute, func() bool {
		ra, _ = a.ran(rooms)
		rb, _ = b.ran(rooms)
		qa = wa.Snapshot().Queued
		return ra+rb+qa == n
	}) {
		t.Fatalf("after 2 minutes A runs %d jobs and queues %d, B ran %d: %d of %d jobs lost", ra, qa, rb, n-ra-rb-qa, n)
	}
	declined, _ := metricValue(t, gathered(t, wa), "lkagent_offers_declined_total", map[string]string{"reason": worker.DeclineFull})
	if ra != 1 || qa != 1 || declined == 0 {
		t.Fatalf("A runs %d jobs, queues %d and declined %v offers as full; want 1, 1 and some: the burst never reached A while it was full",
			ra, qa, declined)
	}
	var shown []string
	waitFor(t, 30*time.Second, "the server's log of each declined offer given to B", func() bool {
		shown = shown[:0]
		for id, tries := range assignments(serverLog.String()) {
			if len(tries) >= 2 && tries[0].worker == idA && tries[0].failed && strings.Contains(tries[0].line, `"retry": true`) &&
				tries[len(tries)-1].worker == idB && !tries[len(tries)-1].failed && b.ranJob(id) {
				shown = append(shown, id)
			}
		}
		return len(shown) == int(declined)
	})
	t.Logf("A (%s) declined %v offers as full; the server gave each to B (%s), for example:", idA, declined, idB)
	for _, try := range assignments(serverLog.String())[shown[0]] {
		t.Logf("  %s", try.line)
	}
}

// Proof 5: a job that waited in the queue longer than QueueTimeout is
// reported failed with the reason (the server logs its end, JS_FAILED, and
// the error text), counted in the metrics, and never run.
func TestQueueTimeoutReportedFailed(t *testing.T) {
	t.Parallel()
	agent := uniq("qtimeout")
	release := make(chan struct{})
	defer close(release)
	c := newTally(time.Second)
	c.gate = release // the first job holds the only slot until the test ends
	const timeout = 2 * time.Second
	w := startWorker(t, worker.Options{AgentName: agent, Deployment: "staging", MaxJobs: 1, MaxQueued: 1,
		QueueTimeout: timeout, OnRequest: c.onRequest}, c.handle)
	createDispatch(t, agent, uniq("room"), "staging")
	waitFor(t, 30*time.Second, "the first job to start", func() bool { return c.peakRunning() == 1 })
	createDispatch(t, agent, uniq("room"), "staging")
	var queued string
	waitFor(t, 30*time.Second, "the second job to be queued", func() bool {
		for _, j := range w.Snapshot().Jobs {
			if j.Queued {
				queued = j.ID
			}
		}
		return queued != ""
	})
	line := waitServerLine(t, time.Minute, "job ended", queued, "JS_FAILED", "queue")
	t.Logf("server: %s", line)
	if !strings.Contains(line, timeout.String()) {
		t.Errorf("the server's record of the failure does not say how long the job waited (%s): %s", timeout, line)
	}
	if c.ranJob(queued) {
		t.Error("the timed-out job ran")
	}
	waitFor(t, 10*time.Second, "the queue to be empty", func() bool { return w.Snapshot().Queued == 0 })
	body := gathered(t, w)
	if v, _ := metricValue(t, body, "lkagent_jobs_finished_total", map[string]string{"status": "queue_timeout"}); v != 1 {
		t.Errorf("jobs_finished_total{status=queue_timeout} = %v, want 1", v)
	}
	if v, _ := metricValue(t, body, "lkagent_jobs_queued", nil); v != 0 {
		t.Errorf("jobs_queued = %v, want 0", v)
	}
	if _, n := metricValue(t, body, "lkagent_queue_wait_seconds", nil); n != 1 {
		t.Errorf("queue_wait_seconds has %d samples, want 1 (the job that timed out)", n)
	}
}

// waitServerLine waits for a line of the shared server's log containing
// every one of parts, and returns it.
func waitServerLine(t *testing.T, timeout time.Duration, parts ...string) string {
	t.Helper()
	var line string
	waitFor(t, timeout, fmt.Sprintf("a server log line with %q", parts), func() bool {
		var ok bool
		line, ok = serverLog.Line(parts...)
		return ok
	})
	return line
}

// Proof 6: a drain with 5 jobs running and 10 queued (MaxJobs 5): Run's
// context is cancelled, all 15 run to their end, none is cancelled, the
// server records each end, and Run returns after the last.
func TestDrainRunsQueuedJobs(t *testing.T) {
	t.Parallel()
	agent := uniq("drainq")
	release := make(chan struct{})
	c := newTally(time.Second)
	c.gate = release
	o := worker.Options{URL: srv.URL(), APIKey: srv.APIKey(), APISecret: srv.APISecret(), AgentName: agent,
		Deployment: "staging", MaxJobs: 5, MaxQueued: 10, QueueTimeout: time.Minute,
		DrainTimeout: time.Minute, OnRequest: c.onRequest, Logger: testLogger(t)}
	registered := make(chan struct{})
	var once sync.Once
	o.OnStateChange = func(s worker.StateChange) {
		if s.State == worker.StateRegistered {
			once.Do(func() { close(registered) })
		}
	}
	w, err := worker.New(o, c.handle)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-registered:
	case err := <-done:
		t.Fatalf("Run returned before registering: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no registration within 30s")
	}
	lkserver.AwaitRouting()

	dispatchAtOnce(t, agent, "staging", 15)
	waitFor(t, time.Minute, "5 jobs running and 10 queued", func() bool {
		s := w.Snapshot()
		return len(s.Jobs) == 15 && s.Queued == 10
	})
	var ids []string
	for _, j := range w.Snapshot().Jobs {
		ids = append(ids, j.ID)
	}
	cancel()
	close(release)
	var returned time.Time
	select {
	case err := <-done:
		returned = time.Now()
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Run did not return within 2 minutes of its context ending")
	}
	c.mu.Lock()
	ended, cancelled, lastEnd, peak := c.ended, c.cancelled, c.lastEnd, c.peak
	c.mu.Unlock()
	t.Logf("drain: %d jobs ended (%d cancelled), peak running %d; Run returned %s after the last job ended",
		ended, cancelled, peak, returned.Sub(lastEnd).Round(time.Millisecond))
	if ended != 15 || cancelled != 0 {
		t.Fatalf("%d jobs ended, %d of them cancelled; want 15 run to their end", ended, cancelled)
	}
	for _, id := range ids {
		if !c.ranJob(id) {
			t.Errorf("job %s never ran", id)
		}
	}
	if peak > 5 {
		t.Errorf("peak running %d during the drain, want at most MaxJobs (5)", peak)
	}
	if returned.Before(lastEnd) {
		t.Errorf("Run returned %s before the last job ended", lastEnd.Sub(returned))
	}
	for _, id := range ids {
		waitServerLine(t, 10*time.Second, "job ended", id, "JS_SUCCESS")
	}
}

// The server gives a job request 3 s in all (its RPC timeout), retries on
// other workers included. A worker whose OnRequest is slow declines at
// OnRequestTimeout (2 s by default), in time for the server to offer the
// job to another worker: no dispatch is lost to the slow one. With the
// old default of 5 s, an offer to the slow worker was answered too late
// and the job was dropped.
func TestSlowOnRequestDeclinesInTimeForAnotherWorker(t *testing.T) {
	t.Parallel()
	agent := uniq("slowreq")
	var slowOffers atomic.Int32
	slow := newRecorder("slow", true)
	startWorker(t, worker.Options{AgentName: agent, Deployment: "staging",
		OnRequest: func(ctx context.Context, r *job.Request) error {
			slowOffers.Add(1)
			select {
			case <-time.After(10 * time.Second):
			case <-ctx.Done():
			}
			return r.Accept(job.AcceptOptions{})
		}}, slow.handle)
	fast := newRecorder("fast", true)
	startWorker(t, worker.Options{AgentName: agent, Deployment: "staging"}, fast.handle)
	for i := 0; slowOffers.Load() < 2 && i < 30; i++ {
		room := uniq("room")
		createDispatch(t, agent, room, "staging")
		got := waitRun(t, 20*time.Second, slow.runs, fast.runs)
		if got.Room != room || got.Worker != "fast" {
			t.Fatalf("dispatch %d ran as %+v, want on the fast worker in %s", i, got, room)
		}
	}
	if slowOffers.Load() < 2 {
		t.Fatalf("the server offered %d of 30 jobs to the slow worker, which it picks half the time", slowOffers.Load())
	}
	t.Logf("%d offers went to the slow worker first; every job ran on the fast one", slowOffers.Load())
}
