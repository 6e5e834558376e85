package worker_test

// Runs at scale against the fake server: 10,000 jobs held at once, offers
// paced at 1,000 per second, 10,000 jobs one after another. The benchmarks
// report their figures (memory per running job, latency percentiles,
// growth) and fail only when a property that must hold on any machine
// breaks: a lost or failed job, a declined offer, goroutines or memory that
// grow. Timing targets are not asserted: shared machines are too noisy.

import (
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/livekit/protocol/livekit"
)

func isFinal(st livekit.JobStatus) bool {
	return st == livekit.JobStatus_JS_SUCCESS || st == livekit.JobStatus_JS_FAILED
}

// longCtx bounds the steps of a run at scale.
func longCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// checkGoroutinesBack fails tb unless the goroutine count falls back to
// base (with a little slack for the runtime's own) once the worker stopped.
func checkGoroutinesBack(tb testing.TB, base int, what string) {
	tb.Helper()
	const slack = 2
	if n := settleGoroutines(base + slack); n > base+slack {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var ours []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "lkagent/lkagent/") || strings.Contains(g, "gorilla/websocket") {
				ours = append(ours, g)
			}
		}
		tb.Fatalf("%s: %d goroutines, %d before; still running:\n%s", what, n, base, strings.Join(ours, "\n\n"))
	}
}

// holdResult is what a hold run measured.
type holdResult struct {
	perJob           float64         // heap + stacks per running job, bytes
	stackPerJob      float64         // of which goroutine stacks
	goroutinesPerJob float64         // goroutines per running job
	rampPerSec       float64         // assignments → handlers started, jobs per second
	launch           []time.Duration // assignment → handler start, one job at a time, at that load
}

// hold runs n jobs at once (handlers waiting on their context, no room),
// measures the memory and goroutines they cost, then probes assignment →
// handler start with one more job at a time, and finally has the fake
// terminate every job. It fails tb if a job is declined, lost or failed,
// or if goroutines are left behind once the worker stopped.
func hold(tb testing.TB, n, probes int) holdResult {
	baseG := runtime.NumGoroutine()
	starts := make(chan time.Duration, 1)
	finals := make(chan int, 1)
	r := newRig(tb, rigConfig{
		holdBelow: n,
		onStart: func(i int, at time.Duration) {
			if i >= n {
				starts <- at
			}
		},
		onStatus: func(i int, st livekit.JobStatus, _ time.Duration) {
			if i >= n && isFinal(st) {
				finals <- i
			}
		},
	})
	ctx := longCtx(tb)
	res := holdResult{launch: make([]time.Duration, 0, probes)}

	r.offerAll(ctx, 0, 1) // the first offer and job warm up what is lazily created
	r.assign(ctx, benchJob(0))
	r.waitFor("the first job to run", func() bool { return r.runningSt.Load() == 1 })
	h0, s0 := memSplit()
	g0 := runtime.NumGoroutine()

	r.offerAll(ctx, 1, n)
	start := time.Now()
	for i := 1; i < n; i++ {
		r.assign(ctx, benchJob(i))
	}
	r.waitFor("every handler to start", func() bool { return r.started.Load() == int64(n) })
	res.rampPerSec = float64(n-1) / time.Since(start).Seconds()
	r.waitFor("every running status", func() bool { return r.runningSt.Load() == int64(n) })
	r.waitFor("a worker status that counts every job", func() bool { return r.lastJobCount.Load() == int64(n) })
	h1, s1 := memSplit()
	res.perJob = float64(h1+s1-h0-s0) / float64(n-1)
	res.stackPerJob = float64(s1-s0) / float64(n-1)
	res.goroutinesPerJob = float64(runtime.NumGoroutine()-g0) / float64(n-1)

	for k := range probes {
		i := n + k
		j := r.offer(ctx, i)
		sent := now()
		r.assign(ctx, j)
		select {
		case at := <-starts:
			res.launch = append(res.launch, at-sent)
		case <-time.After(patience):
			tb.Fatalf("job %d did not start", i)
		}
		if got := <-finals; got != i {
			tb.Fatalf("final status of job %d, want %d", got, i)
		}
	}

	r.endJobs(ctx, 0, n)
	total := int64(n + probes)
	if s, ok, f := r.started.Load(), r.succeeded.Load(), r.failed.Load(); s != total || ok != total || f != 0 {
		tb.Fatalf("%d jobs assigned: %d started, %d succeeded, %d failed", total, s, ok, f)
	}
	r.stop()
	checkGoroutinesBack(tb, baseG, "after the worker holding jobs stopped")
	return res
}

// One worker holds 10,000 running jobs: memory and goroutines per running
// job, how fast they start, and assignment → handler start at that load
// (500 more jobs, one at a time).
func BenchmarkHold10kJobs(b *testing.B) {
	var res holdResult
	for b.Loop() {
		res = hold(b, 10000, 500)
	}
	b.ReportMetric(res.perJob, "B/running-job")
	b.ReportMetric(res.stackPerJob, "stack-B/running-job")
	b.ReportMetric(res.goroutinesPerJob, "goroutines/job")
	b.ReportMetric(res.rampPerSec, "starts/s")
	reportLatency(b, "launch-", res.launch)
}

// pacedOffers sends n offers, one per tick of every, and returns the
// latency of each at the fake: offer sent → answer received. With assign,
// the fake assigns every accepted job at once (the handler returns at once),
// so the worker also runs 1,000 jobs a second. It fails tb if an offer is
// declined or a job lost or failed.
func pacedOffers(tb testing.TB, n int, every time.Duration, assign bool) (lat []time.Duration, perSec float64) {
	sent := make([]atomic.Int64, n)
	lat = make([]time.Duration, n)
	toAssign := make(chan int, n)
	r := newRig(tb, rigConfig{onAnswer: func(i int, available bool, at time.Duration) {
		lat[i] = at - time.Duration(sent[i].Load())
		if assign && available {
			toAssign <- i
		}
	}})
	ctx := longCtx(tb)
	assigned := make(chan struct{})
	go func() {
		defer close(assigned)
		for i := range toAssign {
			if err := r.conn.Assign(ctx, benchJob(i), "bench-token"); err != nil {
				tb.Errorf("assign %d: %v", i, err)
				return
			}
		}
	}()
	// Paced on a schedule rather than a ticker: a late offer is sent at
	// once, so the rate holds even when sleeps overshoot.
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
			time.Sleep(d)
		}
		sent[i].Store(int64(now()))
		if err := r.conn.Send(ctx, &livekit.ServerMessage{Message: &livekit.ServerMessage_Availability{
			Availability: &livekit.AvailabilityRequest{Job: benchJob(i)}}}); err != nil {
			tb.Fatalf("offer %d: %v", i, err)
		}
	}
	perSec = float64(n) / time.Since(start).Seconds()
	r.waitFor("every answer", func() bool { return r.available.Load()+r.declined.Load() == int64(n) })
	if d := r.declined.Load(); d > 0 {
		tb.Fatalf("%d of %d offers declined", d, n)
	}
	if assign {
		r.waitFor("every job to end", func() bool { return r.succeeded.Load()+r.failed.Load() == int64(n) })
		if f := r.failed.Load(); f > 0 {
			tb.Fatalf("%d jobs failed", f)
		}
	}
	close(toAssign)
	<-assigned
	r.stop()
	return lat, perSec
}

// Offers paced at 1,000 per second for 2 s; latency at the fake, offer sent
// → answer received. "offers": the offers only; "dispatch": the fake also
// assigns every accepted job, so the worker runs 1,000 (empty) jobs a
// second besides answering.
func BenchmarkOfferLatencyAt1000PerSecond(b *testing.B) {
	for _, tc := range []struct {
		name   string
		assign bool
	}{{"offers", false}, {"dispatch", true}} {
		b.Run(tc.name, func(b *testing.B) {
			var lat []time.Duration
			var rate float64
			for b.Loop() {
				lat, rate = pacedOffers(b, 2000, time.Millisecond, tc.assign)
			}
			reportLatency(b, "", lat)
			b.ReportMetric(percentile(lat, 1), "max-µs")
			b.ReportMetric(rate, "offers/s")
		})
	}
}

// seqResult is what a sequential run measured.
type seqResult struct {
	growth       int64 // bytes in use, after all jobs vs after the warm-up
	steadyGrowth int64 // bytes in use, after all jobs vs half way
	goroutines   int   // goroutines after all jobs vs after the warm-up
}

// sequential runs n full job cycles one after another (after 10 to warm up)
// and measures what they leave behind. It fails tb if a job is lost or
// failed, if goroutines grew, or if goroutines are left behind once the
// worker stopped.
func sequential(tb testing.TB, n int) seqResult {
	baseG := runtime.NumGoroutine()
	finals := make(chan int, 1)
	r := newRig(tb, rigConfig{onStatus: func(i int, st livekit.JobStatus, _ time.Duration) {
		if isFinal(st) {
			finals <- i
		}
	}})
	ctx := longCtx(tb)
	cycle := func(i int) {
		r.assign(ctx, r.offer(ctx, i))
		select {
		case got := <-finals:
			if got != i {
				tb.Fatalf("final status of job %d, want %d", got, i)
			}
		case <-time.After(patience):
			tb.Fatalf("job %d lost: no final status", i)
		}
	}
	const warmUp = 10
	for i := range warmUp {
		cycle(i)
	}
	// A job's final status reaches the server before the job leaves its
	// room and the worker's table: wait for the last one to be gone.
	noJobs := func() bool { return len(r.w.Snapshot().Jobs) == 0 }
	r.waitFor("the warm-up jobs to end", noJobs)
	time.Sleep(20 * time.Millisecond) // the last warm-up job's goroutine ends
	g0, m0 := runtime.NumGoroutine(), memInUse()
	var mHalf int64
	for i := range n {
		if i == n/2 {
			mHalf = memInUse()
		}
		cycle(warmUp + i)
	}
	var res seqResult
	r.waitFor("the jobs to end", noJobs)
	g := settleGoroutines(g0)
	m := memInUse()
	res.goroutines, res.growth, res.steadyGrowth = g-g0, m-m0, m-mHalf
	if res.goroutines > 0 {
		tb.Fatalf("goroutines grew by %d over %d sequential jobs", res.goroutines, n)
	}
	if ok, f := r.succeeded.Load(), r.failed.Load(); ok != int64(warmUp+n) || f != 0 {
		tb.Fatalf("%d jobs: %d succeeded, %d failed", warmUp+n, ok, f)
	}
	r.stop()
	checkGoroutinesBack(tb, baseG, "after the worker stopped")
	return res
}

// 10,000 jobs one after another: goroutines and memory in use must not
// grow. The worker remembers the ids of the last 4,096 jobs that ended (so
// that a repeated assignment never reruns one): "growth" includes them,
// "steady-growth" (second half of the run, when that set is full) does not.
func BenchmarkSequentialJobsNoGrowth(b *testing.B) {
	var res seqResult
	for b.Loop() {
		res = sequential(b, 10000)
		if res.steadyGrowth > 512<<10 {
			b.Fatalf("memory in use grew by %d bytes over the last 5,000 of 10,000 sequential jobs", res.steadyGrowth)
		}
	}
	b.ReportMetric(float64(res.goroutines), "goroutines-grown")
	b.ReportMetric(float64(res.growth), "heap-grown-B")
	b.ReportMetric(float64(res.steadyGrowth), "steady-heap-grown-B")
}

// The properties the benchmarks above measure at scale, with small numbers
// and generous bounds, so that every test run checks them. Not parallel:
// it counts the process's goroutines and memory.
func TestNoGrowthAndBoundedMemory(t *testing.T) {
	seq := sequential(t, 1000)
	if seq.growth > 512<<10 {
		t.Errorf("memory in use grew by %d bytes over 1,000 sequential jobs", seq.growth)
	}
	h := hold(t, 500, 20)
	if h.perJob > 64<<10 {
		t.Errorf("%.0f bytes in use per running job", h.perJob)
	}
	if h.goroutinesPerJob > 1.1 {
		t.Errorf("%.2f goroutines per running job", h.goroutinesPerJob)
	}
	t.Logf("1,000 sequential jobs: %+d goroutines, %+d bytes; 500 running jobs: %.0f bytes and %.2f goroutines each",
		seq.goroutines, seq.growth, h.perJob, h.goroutinesPerJob)
}
