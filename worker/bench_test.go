package worker_test

// Benchmarks of the worker against the fake server (workertest), over a
// real loopback WebSocket. Both sides run in the test process, so B/op and
// allocs/op count the fake's work (marshalling offers and assignments,
// reading the worker's answers) as well as the worker's. The fake runs
// with NoRecord: it keeps nothing per message, so long runs measure the
// worker and not a growing record.
//
// Latencies are measured at the fake (offer or assignment sent → answer
// received) or from the fake to the handler (assignment sent → handler
// started), and reported as p50/p99 in µs next to ns/op.

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"

	"github.com/lkagent/lkagent/job"
	"github.com/lkagent/lkagent/worker"
	"github.com/lkagent/lkagent/worker/workertest"
)

const benchAgent = "bench-bot"

// epoch is the base of the monotonic instants the benchmarks record.
var epoch = time.Now()

func now() time.Duration { return time.Since(epoch) }

// benchJob is job i: its id carries i, so the handler and the fake's
// callbacks find the job's slot without a map.
func benchJob(i int) *livekit.Job {
	s := strconv.Itoa(i)
	return &livekit.Job{
		Id:         "AJ_" + s,
		DispatchId: "AD_" + s,
		Type:       livekit.JobType_JT_ROOM,
		Room:       &livekit.Room{Sid: "RM_" + s, Name: "room-" + s},
		AgentName:  benchAgent,
	}
}

func benchIndex(id string) int {
	i, err := strconv.Atoi(strings.TrimPrefix(id, "AJ_"))
	if err != nil {
		return -1
	}
	return i
}

// rigConfig says how a rig's worker and fake behave. The callbacks run on
// the fake's read loop (onAnswer, onStatus) or in the handler (onStart):
// they must be quick.
type rigConfig struct {
	onRequest worker.RequestFunc
	// Handlers of jobs with an index below holdBelow wait for their
	// context (the server's termination, or the worker's drain); the
	// others return at once.
	holdBelow int
	onAnswer  func(i int, available bool, at time.Duration)
	onStatus  func(i int, st livekit.JobStatus, at time.Duration)
	onStart   func(i int, at time.Duration)
}

// rig is a worker registered with a fake server that records nothing.
type rig struct {
	tb   testing.TB
	cfg  rigConfig
	srv  *workertest.Server
	conn *workertest.Conn
	w    *worker.Worker

	cancel  context.CancelFunc
	runDone chan error
	stopped bool

	// Counts of what the fake received and the handlers did.
	available, declined          atomic.Int64
	started                      atomic.Int64
	runningSt, succeeded         atomic.Int64
	failed                       atomic.Int64
	workerStatuses, lastJobCount atomic.Int64 // lastJobCount: of the last worker status

	// Held jobs end when endJobs marks them: ended ranges, and a channel
	// closed and replaced at every change.
	endMu sync.Mutex
	ended [][2]int
	wake  chan struct{}
}

// benchLogger logs as a production worker does: JSON at Info level (to
// nowhere), so the cost of formatting log lines and log attributes counts.
func benchLogger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func newRig(tb testing.TB, cfg rigConfig) *rig {
	tb.Helper()
	r := &rig{tb: tb, cfg: cfg, runDone: make(chan error, 1), wake: make(chan struct{})}
	r.srv = workertest.NewServerWithOptions(tb, workertest.Options{NoRecord: true, OnMessage: r.onMessage})
	w, err := worker.New(worker.Options{
		URL: r.srv.URL(), APIKey: "bench-key", APISecret: "bench-secret", AgentName: benchAgent,
		OnRequest: cfg.onRequest, Logger: benchLogger(),
		DrainTimeout: 2 * time.Second, ShutdownTimeout: 5 * time.Second,
		// The fake serves the agent protocol only, not the room API the
		// sweep for held dispatches asks (its HTTP connections would be
		// counted as the worker's goroutines).
		Held: worker.HeldOptions{Disabled: true},
	}, r.handle)
	if err != nil {
		tb.Fatal(err)
	}
	// The fake has no assignment race: holding statuses back would only
	// add the delay to every measured cycle.
	worker.SetStatusDelay(w, 0)
	r.w = w
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.runDone <- w.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(context.Background(), patience)
	defer wcancel()
	if r.conn, err = r.srv.WaitWorker(wctx); err != nil {
		cancel()
		tb.Fatalf("the worker did not register: %v", err)
	}
	tb.Cleanup(r.stop)
	return r
}

func (r *rig) onMessage(_ *workertest.Conn, m *livekit.WorkerMessage) {
	at := now()
	switch x := m.GetMessage().(type) {
	case *livekit.WorkerMessage_Availability:
		// The callback first: a count the benchmark waits for then
		// covers what the callback wrote.
		a := x.Availability
		if r.cfg.onAnswer != nil {
			r.cfg.onAnswer(benchIndex(a.GetJobId()), a.GetAvailable(), at)
		}
		if a.GetAvailable() {
			r.available.Add(1)
		} else {
			r.declined.Add(1)
		}
	case *livekit.WorkerMessage_UpdateJob:
		// The counts first: a benchmark told of a final status by the
		// callback may read them at once.
		u := x.UpdateJob
		switch u.GetStatus() {
		case livekit.JobStatus_JS_RUNNING:
			r.runningSt.Add(1)
		case livekit.JobStatus_JS_SUCCESS:
			r.succeeded.Add(1)
		case livekit.JobStatus_JS_FAILED:
			r.failed.Add(1)
		}
		if r.cfg.onStatus != nil {
			r.cfg.onStatus(benchIndex(u.GetJobId()), u.GetStatus(), at)
		}
	case *livekit.WorkerMessage_UpdateWorker:
		r.workerStatuses.Add(1)
		r.lastJobCount.Store(int64(x.UpdateWorker.GetJobCount()))
	}
}

func (r *rig) handle(ctx context.Context, j *job.Job) error {
	at := now()
	i := benchIndex(j.ID())
	r.started.Add(1)
	if r.cfg.onStart != nil {
		r.cfg.onStart(i, at)
	}
	if i < r.cfg.holdBelow {
		for {
			ended, wake := r.endedJob(i)
			if ended {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-wake:
			}
		}
	}
	return nil
}

// endedJob reports whether held job i was ended, and a channel closed at
// the next change.
func (r *rig) endedJob(i int) (bool, <-chan struct{}) {
	r.endMu.Lock()
	defer r.endMu.Unlock()
	for _, e := range r.ended {
		if i >= e[0] && i < e[1] {
			return true, r.wake
		}
	}
	return false, r.wake
}

// stop stops the worker (Run must return nil) and closes the fake.
func (r *rig) stop() {
	if r.stopped {
		return
	}
	r.stopped = true
	r.cancel()
	select {
	case err := <-r.runDone:
		if err != nil {
			r.tb.Errorf("Run = %v", err)
		}
	case <-time.After(patience):
		r.tb.Errorf("Run did not return within %s", patience)
	}
	r.srv.Close()
}

// offer offers job i and fails unless the worker takes it.
func (r *rig) offer(ctx context.Context, i int) *livekit.Job {
	j := benchJob(i)
	res, err := r.conn.Offer(ctx, j)
	if err != nil {
		r.tb.Fatalf("offer %d: %v", i, err)
	}
	if !res.GetAvailable() {
		r.tb.Fatalf("offer %d declined", i)
	}
	return j
}

func (r *rig) assign(ctx context.Context, j *livekit.Job) {
	if err := r.conn.Assign(ctx, j, workertest.Token); err != nil {
		r.tb.Fatalf("assign %s: %v", j.GetId(), err)
	}
}

// offerAll sends offers for jobs [from, to) without waiting for each
// answer, then waits until all were answered.
func (r *rig) offerAll(ctx context.Context, from, to int) {
	want := r.available.Load() + int64(to-from)
	for i := from; i < to; i++ {
		if err := r.conn.Send(ctx, &livekit.ServerMessage{Message: &livekit.ServerMessage_Availability{
			Availability: &livekit.AvailabilityRequest{Job: benchJob(i)}}}); err != nil {
			r.tb.Fatalf("offer %d: %v", i, err)
		}
	}
	r.waitFor("answers to the offers", func() bool { return r.available.Load()+r.declined.Load() >= want })
	if d := r.declined.Load(); d > 0 {
		r.tb.Fatalf("%d offers declined", d)
	}
}

// waitFor polls cond until it holds; the run fails after a minute.
func (r *rig) waitFor(what string, cond func() bool) {
	r.tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			r.tb.Fatalf("timed out waiting for %s (started %d, running %d, succeeded %d, failed %d)",
				what, r.started.Load(), r.runningSt.Load(), r.succeeded.Load(), r.failed.Load())
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// percentile returns the q-quantile of d (sorted in place) in µs.
func percentile(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	if !slices.IsSorted(d) {
		slices.Sort(d)
	}
	return float64(d[min(len(d)-1, int(q*float64(len(d))))]) / float64(time.Microsecond)
}

func reportLatency(b *testing.B, prefix string, d []time.Duration) {
	b.ReportMetric(percentile(d, 0.50), prefix+"p50-µs")
	b.ReportMetric(percentile(d, 0.99), prefix+"p99-µs")
}

// Offer → availability answer, one offer at a time, with the default
// decision and with an OnRequest that accepts with options. The fake
// sends a termination for each accepted offer, so reservations do not pile
// up.
func BenchmarkOfferAnswer(b *testing.B) {
	for _, tc := range []struct {
		name      string
		onRequest worker.RequestFunc
	}{
		{"default", nil},
		{"OnRequest", func(_ context.Context, r *job.Request) error {
			return r.Accept(job.AcceptOptions{Identity: "bot-" + r.RoomName(), Name: "Bot",
				Attributes: map[string]string{"tier": "gold"}})
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := newRig(b, rigConfig{onRequest: tc.onRequest})
			ctx := waitCtx(b)
			lat := make([]time.Duration, 0, 1024)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				sent := now()
				j := r.offer(ctx, i)
				lat = append(lat, now()-sent)
				// Frees the slot (LiveKit's server would let the
				// reservation time out).
				if err := r.conn.Send(ctx, &livekit.ServerMessage{Message: &livekit.ServerMessage_Termination{
					Termination: &livekit.JobTermination{JobId: j.GetId()}}}); err != nil {
					b.Fatal(err)
				}
				i++
			}
			reportLatency(b, "", lat)
		})
	}
}

// Assignment → handler start, one job at a time: the timed part is the
// assignment's send, the worker reading it and starting the handler. Each
// job is offered before, and has ended (its final status received) before
// the next assignment, outside the timed part.
func BenchmarkAssignmentToHandlerStart(b *testing.B) {
	starts := make(chan time.Duration, 1)
	finals := make(chan int, 1)
	r := newRig(b, rigConfig{
		onStart: func(_ int, at time.Duration) { starts <- at },
		onStatus: func(i int, st livekit.JobStatus, _ time.Duration) {
			if st == livekit.JobStatus_JS_SUCCESS || st == livekit.JobStatus_JS_FAILED {
				finals <- i
			}
		},
	})
	ctx := waitCtx(b)
	lat := make([]time.Duration, 0, 1024)
	i := 0
	j := r.offer(ctx, i)
	b.ReportAllocs()
	for b.Loop() {
		sent := now()
		r.assign(ctx, j)
		lat = append(lat, <-starts-sent)
		b.StopTimer()
		if got := <-finals; got != i {
			b.Fatalf("final status of job %d, want %d", got, i)
		}
		i++
		j = r.offer(ctx, i)
		b.StartTimer()
	}
	reportLatency(b, "", lat)
	if f := r.failed.Load(); f > 0 {
		b.Fatalf("%d jobs failed", f)
	}
}

// A full job: offer, accept, assign, an empty handler, and the final status
// received by the fake.
func BenchmarkJobCycle(b *testing.B) {
	finals := make(chan int, 1)
	r := newRig(b, rigConfig{onStatus: func(i int, st livekit.JobStatus, _ time.Duration) {
		if st == livekit.JobStatus_JS_SUCCESS || st == livekit.JobStatus_JS_FAILED {
			finals <- i
		}
	}})
	ctx := waitCtx(b)
	r.cycles(ctx, b, 0, finals)
	if f := r.failed.Load(); f > 0 {
		b.Fatalf("%d jobs failed", f)
	}
}

// holdJobs starts n jobs (indexes [0, n)) whose handlers wait for their
// context, and waits until the fake received their running status.
func (r *rig) holdJobs(ctx context.Context, n int) {
	r.offerAll(ctx, 0, n)
	for i := range n {
		r.assign(ctx, benchJob(i))
	}
	r.waitFor("the held jobs to run", func() bool { return r.runningSt.Load() >= int64(n) })
}

// endJobs makes the handlers of held jobs [from, to) return, and waits
// until the fake received their final statuses.
func (r *rig) endJobs(ctx context.Context, from, to int) {
	want := r.succeeded.Load() + r.failed.Load() + int64(to-from)
	r.endMu.Lock()
	r.ended = append(r.ended, [2]int{from, to})
	close(r.wake)
	r.wake = make(chan struct{})
	r.endMu.Unlock()
	r.waitFor("the final statuses", func() bool { return r.succeeded.Load()+r.failed.Load() >= want })
}

// cycles runs one full job cycle per benchmark iteration, jobs numbered
// from first, each waited for on finals, and reports their latency.
func (r *rig) cycles(ctx context.Context, b *testing.B, first int, finals <-chan int) {
	lat := make([]time.Duration, 0, 1024)
	b.ReportAllocs()
	i := first
	for b.Loop() {
		sent := now()
		r.assign(ctx, r.offer(ctx, i))
		if got := <-finals; got != i {
			b.Fatalf("final status of job %d, want %d", got, i)
		}
		lat = append(lat, now()-sent)
		i++
	}
	reportLatency(b, "cycle-", lat)
}

// Full job cycles while 1,000 other jobs run: the cost of a job, and of its
// status traffic, in a busy worker.
func BenchmarkJobCycleUnder1000Running(b *testing.B) {
	const held = 1000
	finals := make(chan int, 1)
	r := newRig(b, rigConfig{holdBelow: held, onStatus: func(i int, st livekit.JobStatus, _ time.Duration) {
		if i >= held && (st == livekit.JobStatus_JS_SUCCESS || st == livekit.JobStatus_JS_FAILED) {
			finals <- i
		}
	}})
	ctx := waitCtx(b)
	r.holdJobs(ctx, held)
	r.cycles(ctx, b, held, finals)
	// A job's final status reaches the server before the job leaves its
	// room and the worker's table: the last one may still be ending.
	r.waitFor("the cycled jobs to leave the table", func() bool { return len(r.w.Snapshot().Jobs) == held })
	r.endJobs(ctx, 0, held)
	if f := r.failed.Load(); f > 0 {
		b.Fatalf("%d jobs failed", f)
	}
}

// Status traffic of many concurrent jobs: each iteration assigns 1,000
// accepted jobs back to back, waits until the fake received the 1,000
// running statuses, terminates the 1,000 jobs and waits for the 1,000
// final statuses, with 1,000 other jobs running throughout. The offers
// are made outside the timed part. Reported: job statuses and worker
// statuses the fake received per second (the worker sends a worker status
// on every change, but at most one per 50 ms).
func BenchmarkStatusBurst1000Jobs(b *testing.B) {
	const held, burst = 1000, 1000
	r := newRig(b, rigConfig{holdBelow: 1 << 30})
	ctx := waitCtx(b)
	r.holdJobs(ctx, held)
	b.ReportAllocs()
	var elapsed time.Duration
	var workerStatuses int64
	next := held
	for b.Loop() {
		b.StopTimer()
		r.offerAll(ctx, next, next+burst)
		running, ws := r.runningSt.Load(), r.workerStatuses.Load()
		b.StartTimer()
		start := time.Now()
		for i := next; i < next+burst; i++ {
			r.assign(ctx, benchJob(i))
		}
		r.waitFor("the running statuses", func() bool { return r.runningSt.Load() >= running+burst })
		r.endJobs(ctx, next, next+burst)
		elapsed += time.Since(start)
		workerStatuses += r.workerStatuses.Load() - ws
		next += burst
	}
	runs := float64(next-held) / burst
	b.ReportMetric(2*burst*runs/elapsed.Seconds(), "job-statuses/s")
	b.ReportMetric(float64(workerStatuses)/elapsed.Seconds(), "worker-statuses/s")
	r.endJobs(ctx, 0, held)
	if f := r.failed.Load(); f > 0 {
		b.Fatalf("%d jobs failed", f)
	}
}

// memInUse is the heap in use plus goroutine stacks, after a full GC.
func memInUse() int64 {
	heap, stacks := memSplit()
	return heap + stacks
}

// memSplit returns the heap in use and the goroutine stacks, after a full
// GC.
func memSplit() (heap, stacks int64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc), int64(ms.StackInuse)
}

// settleGoroutines waits up to a few seconds for the goroutine count to
// fall to limit, and returns the last count.
func settleGoroutines(limit int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= limit || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}
